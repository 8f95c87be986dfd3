"""`fastproxy policy apply --dry-run`, `fastproxy policy diff` and the removal check of
`policy apply`, through a real Center and real CLI processes, with raw Watch clients as the
connected nodes: what would change (secrets redacted) and which nodes would get a new
snapshot, with nothing applied."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import CenterProcess, StartCenter, WatchClient
from support.center_policy import PolicyKeys, _b64, apply, policy_yaml

from fastproxy.v1 import center_pb2, policy_pb2

FASTPROXY = str(Path(sys.executable).with_name("fastproxy"))


def cli(center: CenterProcess, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([FASTPROXY, *argv, "--center", center.address],
                          capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)


def revisions(center: CenterProcess) -> int:
    return len(center.stub().ListRevisions(center_pb2.ListRevisionsRequest(), timeout=5)
               .revisions)


def without_weather(text: str) -> str:
    """The policy with weather_service and radar_service (and their keys) taken out."""
    kept, skipping = [], False
    for line in text.splitlines(keepends=True):
        if line.startswith("  weather_service:"):
            skipping = True
        elif line.startswith("  lonely_service:"):
            skipping = False
        if not skipping and not line.startswith(("  weather-", "  radar-id")):
            kept.append(line)
    return "".join(kept)


@pytest.fixture
def stack(start_center: StartCenter) -> Iterator[tuple[CenterProcess, PolicyKeys,
                                                       list[WatchClient]]]:
    center = start_center()
    keys = PolicyKeys()
    assert apply(center.stub(), policy_yaml(keys)).applied
    watchers = []
    for node_id, service in (("chat-1", "chat_service"), ("radar-1", "radar_service")):
        watcher = center.watch().hello(node_id, policy_pb2.ROLE_OUT, service)
        watcher.ack_snapshot(watcher.next_snapshot())
        watchers.append(watcher)
    yield center, keys, watchers
    for watcher in watchers:
        watcher.close()


def test_a_dry_run_shows_the_change_and_the_nodes_it_reaches_and_applies_nothing(
        stack: tuple[CenterProcess, PolicyKeys, list[WatchClient]], tmp_path: Path) -> None:
    center, keys, _ = stack
    candidate = tmp_path / "policy.yaml"
    candidate.write_text(policy_yaml(keys, song_timeout_ms=500))
    done = cli(center, "policy", "apply", "--dry-run", str(candidate))
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "compared with the latest: revision 1; applying makes revision 2" in out
    assert "-    timeout_ms: 2000\n+    timeout_ms: 500" in out
    assert "nodes that would get a new snapshot: 1 (unchanged: 1)" in out
    assert "  chat-1 (out, chat_service)" in out and "radar-1" not in out
    assert revisions(center) == 1  # nothing applied


def test_a_changed_secret_shows_as_changed_never_in_the_clear(
        stack: tuple[CenterProcess, PolicyKeys, list[WatchClient]], tmp_path: Path) -> None:
    center, keys, _ = stack
    new_keys = PolicyKeys(song_id=keys.song_id, chat_id=keys.chat_id,
                          weather_id=keys.weather_id, weather_enc=keys.weather_enc,
                          radar_id=keys.radar_id)  # only song-enc is new
    candidate = tmp_path / "policy.yaml"
    candidate.write_text(policy_yaml(new_keys))
    done = cli(center, "policy", "diff", str(candidate), "--json")
    assert done.returncode == 0, done.stderr
    for secret in (*keys.secrets().values(), new_keys.song_enc):
        assert _b64(secret) not in done.stdout
        assert _b64(secret)[len("base64:"):] not in done.stdout

    found = json.loads(done.stdout)
    changed = [line for line in found["diff"].splitlines() if line.startswith(("-  ", "+  "))]
    assert len(changed) == 2 and all("<redacted sha256:" in line for line in changed)
    assert [n["node_id"] for n in found["nodes_to_update"]] == ["chat-1"]  # it encrypts to song


def test_diff_against_a_revision_and_a_refused_candidate(
        stack: tuple[CenterProcess, PolicyKeys, list[WatchClient]], tmp_path: Path) -> None:
    center, keys, _ = stack
    assert apply(center.stub(), policy_yaml(keys, weather_timeout_ms=3000)).applied
    done = cli(center, "policy", "diff", "--revision", "1")
    assert done.returncode == 0, done.stderr
    assert "--- revision 2\n+++ revision 1" in done.stdout
    assert "  radar-1 (out, radar_service)" in done.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text(policy_yaml(keys).replace("timeout_ms: 2000", "timeout_ms: -5"))
    refused = cli(center, "policy", "apply", "--dry-run", str(bad))
    assert refused.returncode == 1
    assert "services.song_service.timeout_ms" in refused.stderr
    assert revisions(center) == 2


def test_apply_asks_before_removing_services_whose_nodes_are_connected(
        stack: tuple[CenterProcess, PolicyKeys, list[WatchClient]], tmp_path: Path) -> None:
    center, keys, _ = stack
    candidate = tmp_path / "policy.yaml"
    candidate.write_text(without_weather(policy_yaml(keys)))
    dry = cli(center, "policy", "apply", "--dry-run", str(candidate))
    assert "services removed: radar_service, weather_service" in dry.stdout
    assert "removed services with connected nodes: radar_service" in dry.stdout
    refused = cli(center, "policy", "apply", str(candidate))
    assert refused.returncode == 1
    assert ("this policy removes radar_service, whose nodes are connected now"
            in refused.stderr) and "--yes" in refused.stderr
    assert revisions(center) == 1
    forced = cli(center, "policy", "apply", "--yes", str(candidate))
    assert forced.returncode == 0, forced.stderr
    assert revisions(center) == 2
