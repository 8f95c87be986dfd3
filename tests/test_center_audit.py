"""The Center's audit trail end to end: a real Center process, changes made through the
`fastproxy` CLI and the `--policy` file, and `fastproxy policy history` showing who applied,
rolled back or was refused each change."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from conftest import CenterProcess, StartCenter, wait_until
from support.center_policy import PolicyKeys, policy_yaml

from fastproxy.cli import commands as cli
from fastproxy.cli import format as cli_format

ADMIN_TOKEN = "alice-admin-token"
NODE_TOKEN = "chat-node-token"


@pytest.fixture
def token_center(start_center: StartCenter, tmp_path: Path) -> CenterProcess:
    (tmp_path / "node-tokens").write_text(f"chat_service: {NODE_TOKEN}\n")
    (tmp_path / "admin-tokens").write_text(f"alice: {ADMIN_TOKEN}\n")
    return start_center("--node-tokens", str(tmp_path / "node-tokens"),
                        "--admin-tokens", str(tmp_path / "admin-tokens"))


def fastproxy(capsys: pytest.CaptureFixture[str], center: CenterProcess, *argv: str,
              token: str = ADMIN_TOKEN) -> tuple[int, str, str]:
    """Runs `fastproxy argv... --center ADDRESS --token TOKEN` in this process."""
    capsys.readouterr()
    try:
        code = cli.main([*argv, "--center", center.address, "--token", token])
    except SystemExit as exc:
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def audit_json(capsys: pytest.CaptureFixture[str], center: CenterProcess
               ) -> list[dict[str, Any]]:
    code, out, err = fastproxy(capsys, center, "policy", "history", "--audit", "--json")
    assert code == 0, err
    events: list[dict[str, Any]] = json.loads(out)
    return events


def write(folder: Path, name: str, text: str) -> str:
    path = folder / name
    path.write_text(text)
    return str(path)


def bad_policy(keys: PolicyKeys) -> str:
    """A policy holding real secrets that fails validation on one unknown field."""
    return policy_yaml(keys) + "colour: blue\n"


def test_history_shows_who_applied_rolled_back_and_was_refused_each_change(
        token_center: CenterProcess, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    keys = PolicyKeys()
    first = write(tmp_path, "first.yaml", policy_yaml(keys))
    second = write(tmp_path, "second.yaml", policy_yaml(keys, song_timeout_ms=500))
    refused = write(tmp_path, "refused.yaml", bad_policy(keys))
    for argv, expected_code in [(("policy", "apply", first), 0),
                                (("policy", "apply", second), 0),
                                (("policy", "apply", refused), 1),
                                (("policy", "rollback", "1"), 0),
                                (("policy", "rollback", "9"), 1)]:
        code, _, err = fastproxy(capsys, token_center, *argv)
        assert code == expected_code, (argv, err)

    events = audit_json(capsys, token_center)
    assert [(e["actor"], e["action"], e["revision"]) for e in events] == [
        ("admin:alice", "refused_rollback", 9),
        ("admin:alice", "rollback", 3),
        ("admin:alice", "refused_apply", None),
        ("admin:alice", "apply", 2),
        ("admin:alice", "apply", 1),
    ]
    assert events[0]["detail"] == "revision 9 does not exist"
    assert "colour" in events[2]["detail"]  # the refusal says which field
    assert all(e["peer"].startswith("ipv4:127.0.0.1:") for e in events)

    code, table, err = fastproxy(capsys, token_center, "policy", "history")
    assert code == 0, err
    revisions, audit = table.split("\n\n", 1)
    assert [line.split()[0] for line in revisions.splitlines()[1:]] == ["3", "2", "1"]
    title, header, *rows = audit.splitlines()
    assert title == cli_format.AUDIT_TITLE
    assert header.split()[:3] == ["TIME", "ACTOR", "ACTION"]
    assert [row.split()[2:4] for row in rows] == [
        ["admin:alice", "refused_rollback"], ["admin:alice", "rollback"],
        ["admin:alice", "refused_apply"], ["admin:alice", "apply"], ["admin:alice", "apply"]]


def test_a_refused_policy_is_recorded_without_its_secrets(
        token_center: CenterProcess, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    keys = PolicyKeys()
    code, _, _ = fastproxy(capsys, token_center, "policy", "apply",
                           write(tmp_path, "refused.yaml", bad_policy(keys)))
    assert code == 1
    code, text, _ = fastproxy(capsys, token_center, "policy", "history")
    assert code == 0
    shown = text + json.dumps(audit_json(capsys, token_center))
    assert "refused_apply" in shown
    for secret in keys.secrets().values():
        assert base64.b64encode(secret).decode() not in shown
        assert secret.hex() not in shown


def test_admin_calls_denied_for_their_credential_are_recorded(
        token_center: CenterProcess, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    policy = write(tmp_path, "p.yaml", policy_yaml(PolicyKeys()))
    code, _, err = fastproxy(capsys, token_center, "policy", "apply", policy,
                             token="not-a-token")
    assert code == 1 and "unauthenticated" in err
    code, _, err = fastproxy(capsys, token_center, "policy", "rollback", "1",
                             token=NODE_TOKEN)
    assert code == 1 and "permission denied" in err

    events = audit_json(capsys, token_center)
    assert [(e["actor"], e["action"]) for e in events] == [
        ("node:chat_service", "denied"), ("anonymous", "denied")]
    assert events[0]["detail"].startswith("PERMISSION_DENIED on RollbackPolicy")
    assert events[1]["detail"].startswith("UNAUTHENTICATED on ApplyPolicy")
    assert all(e["revision"] is None for e in events)
    assert "not-a-token" not in json.dumps(events)


def test_policy_file_applies_and_refusals_are_recorded_as_the_file(
        start_center: StartCenter, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    keys = PolicyKeys()
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(policy_yaml(keys))
    center = start_center("--policy", str(policy_file), "--policy-poll", "0.1")
    policy_file.write_text(bad_policy(keys))
    wait_until(lambda: len(audit_json(capsys, center)) == 2, timeout=10,
               what="the refused file edit in the audit")
    events = audit_json(capsys, center)
    actor = f"file:{policy_file}"
    assert [(e["actor"], e["action"], e["revision"]) for e in events] == [
        (actor, "refused_apply", None), (actor, "apply", 1)]
    assert all(e["peer"] == "" for e in events)
