"""The Center as a process: `--policy FILE`, refusals at start, flags, help and SIGTERM."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import grpc
from conftest import StartCenter, free_port, wait_until
from support.center_policy import PolicyKeys, parse, policy_yaml, service_in

from fastproxy.v1 import center_pb2, policy_pb2

RPS_ERROR = "services.song_service.allow[0].rate_limit.rps: must be greater than 0"


def write_atomically(path: Path, text: str) -> None:
    """Replaces the file whole, so the Center never reads half of it."""
    partial = path.with_suffix(".partial")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, path)


def run_center(*flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "center_svc", *flags], capture_output=True,
                          text=True, timeout=30, stdin=subprocess.DEVNULL)


def test_policy_file_is_applied_at_start_and_on_edit_and_a_bad_edit_keeps_the_last_good(
        start_center: StartCenter, tmp_path: Path) -> None:
    keys = PolicyKeys()
    policy_file = tmp_path / "policy.yaml"
    write_atomically(policy_file, policy_yaml(keys))
    center = start_center("--policy", str(policy_file), "--policy-poll", "0.2")
    stub = center.stub()
    assert stub.GetPolicy(center_pb2.GetPolicyRequest(), timeout=5).revision.revision == 1
    chat = center.watch().hello("chat-1", policy_pb2.ROLE_OUT, "chat_service")
    assert parse(chat.next_snapshot()).revision == 1

    write_atomically(policy_file, policy_yaml(keys, song_timeout_ms=4321))
    pushed = parse(chat.next_snapshot(timeout=5))
    assert pushed.revision == 2 and service_in(pushed, "song_service").timeout_ms == 4321

    write_atomically(policy_file, policy_yaml(keys, song_timeout_ms=55).replace(
        "rps: 100", "rps: 0"))
    wait_until(lambda: RPS_ERROR in center.log(), 5, what="the refused edit's error logged")
    chat.expect_silence(0.5)
    now = stub.GetPolicy(center_pb2.GetPolicyRequest(), timeout=5)
    assert now.revision.revision == 2
    late = center.watch().hello("chat-2", policy_pb2.ROLE_OUT, "chat_service")
    assert service_in(parse(late.next_snapshot()), "song_service").timeout_ms == 4321


def test_a_bad_policy_file_at_start_is_refused_with_its_errors(tmp_path: Path) -> None:
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(policy_yaml(PolicyKeys()).replace("rps: 100", "rps: 0"))
    result = run_center("--listen", f"127.0.0.1:{free_port()}", "--store", "memory://",
                        "--policy", str(policy_file))
    assert result.returncode != 0
    assert RPS_ERROR in result.stderr


def test_development_mode_refuses_a_non_loopback_listen_address() -> None:
    result = run_center("--listen", f"0.0.0.0:{free_port()}", "--store", "memory://")
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "development mode" in lines[0] and "0.0.0.0" in lines[0]


def test_bad_flags_end_with_one_line_and_exit_2() -> None:
    for flags in (["--listen", "not-an-address"], ["--no-such-flag"], ["--grace", "soon"],
                  ["--tls-cert", "/nonexistent/cert.pem"]):
        result = run_center(*flags)
        assert result.returncode == 2, (flags, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("center_svc: error:"), (flags, lines)


def test_help_describes_the_flags() -> None:
    result = run_center("--help")
    assert result.returncode == 0
    for flag in ("--listen", "--store", "--policy", "--node-tokens", "--admin-tokens",
                 "--tls-cert", "--client-ca"):
        assert flag in result.stdout
    assert "--policy-poll" not in result.stdout


def test_sigterm_ends_open_watch_streams_with_unavailable_and_exits_0_within_the_grace(
        start_center: StartCenter) -> None:
    center = start_center("--grace", "3")
    stub = center.stub()
    stub.ApplyPolicy(center_pb2.ApplyPolicyRequest(yaml=policy_yaml(PolicyKeys())), timeout=5)
    watchers = [center.watch().hello(f"chat-{i}", policy_pb2.ROLE_OUT, "chat_service")
                for i in range(3)]
    for watcher in watchers:
        watcher.next_snapshot()
    started = time.monotonic()
    assert center.terminate(timeout=10) == 0
    assert time.monotonic() - started < 3 + 1.5
    for watcher in watchers:
        assert watcher.final_code(timeout=2) == grpc.StatusCode.UNAVAILABLE
    assert "Traceback" not in center.log()
