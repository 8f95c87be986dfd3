"""The `fastproxy` operator console: command line, output, key generation, and end to end
against a real Center process on loopback."""

from __future__ import annotations

import base64
import json
import os
import queue
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from conftest import CenterProcess, StartCenter
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fastproxy.cli import commands as cli
from fastproxy.cli import format as cli_format
from fastproxy.policy import load_policy
from fastproxy.policy.keygen import default_key_name, generate_key
from fastproxy.policy.model import KeyType
from fastproxy.policy.redaction import redact_policy
from fastproxy.v1 import center_pb2, center_pb2_grpc, policy_pb2

PYTHON = sys.executable
FASTPROXY = str(Path(sys.executable).with_name("fastproxy"))
REPO = Path(__file__).resolve().parent.parent


# --- helpers ----------------------------------------------------------------------------------


@dataclass
class Outcome:
    code: int
    out: str
    err: str

    @property
    def err_lines(self) -> list[str]:
        return self.err.splitlines()


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> Outcome:
    """Runs `fastproxy argv...` in this process (argparse exits become exit codes)."""
    capsys.readouterr()
    try:
        code = cli.main(list(argv))
    except SystemExit as exc:
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    return Outcome(code, captured.out, captured.err)


def secret_b64() -> str:
    return base64.b64encode(os.urandom(32)).decode("ascii")


def minimal_policy(endpoint_port: int = 9) -> str:
    return f"""\
version: 1
keys:
  a-id: {{type: hmac-sha256, secret: "base64:{secret_b64()}"}}
  b-id: {{type: hmac-sha256, secret: "base64:{secret_b64()}"}}
services:
  b:
    identity: {{key: b-id}}
    grpc_services: [demo.v1.Echo]
    endpoints: ["127.0.0.1:{endpoint_port}"]
    allow: [{{caller: a, methods: ["/demo.v1.Echo/*"]}}]
  a: {{identity: {{key: a-id}}}}
"""


BAD_POLICY = """\
version: 2
colour: blue
services:
  b: {timeout_ms: -5, allow: [{caller: a, methods: ["/demo.v1.Echo/*"],
                               rate_limit: {rps: 0, burst: 1}}]}
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# --- the command line -------------------------------------------------------------------------


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    result = run_cli(capsys, "--help")
    assert result.code == 0
    for command in ("policy", "nodes", "keys"):
        assert command in result.out


def test_every_subcommand_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["policy", "apply"], ["policy", "get"], ["policy", "history"],
                 ["policy", "rollback"], ["nodes"], ["keys", "gen"]):
        result = run_cli(capsys, *argv, "--help")
        assert result.code == 0, argv
        assert "usage: fastproxy " + " ".join(argv) in result.out


@pytest.mark.parametrize("argv", [
    [],
    ["policy"],
    ["policy", "apply"],
    ["policy", "rollback", "zero"],
    ["policy", "rollback", "0"],
    ["policy", "get", "--revision", "-1"],
    ["nodes", "--center", "no-port-here"],
    ["keys", "gen", "rsa-4096"],
    ["frobnicate"],
])
def test_bad_command_line_is_one_line_and_exit_2(
        capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    result = run_cli(capsys, *argv)
    assert result.code == 2
    assert len(result.err_lines) == 1, result.err
    assert result.err.startswith("fastproxy")
    assert result.out == ""


def test_every_center_option_defaults_from_its_environment_variable(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 17: the CLI's credential is the admin's own variable (FASTPROXY_TOKEN is a
    node's, read by the SDK and the proxies), and every connection option has one."""
    monkeypatch.setenv("FASTPROXY_CENTER", "10.1.2.3:7171")
    monkeypatch.setenv("FASTPROXY_TOKEN", "node-t0ken")
    monkeypatch.setenv("FASTPROXY_ADMIN_TOKEN", "t0ken")
    monkeypatch.setenv("FASTPROXY_TLS_CA", "ca.pem")
    monkeypatch.setenv("FASTPROXY_ADMIN_TLS_CERT", "admin.pem")
    monkeypatch.setenv("FASTPROXY_ADMIN_TLS_KEY", "admin-key.pem")
    monkeypatch.setenv("FASTPROXY_TLS_SERVER_NAME", "center.internal")
    monkeypatch.setenv("FASTPROXY_TIMEOUT", "2.5")
    args = cli.build_parser().parse_args(["nodes"])
    assert args.center == "10.1.2.3:7171"
    assert args.token == "t0ken"
    target = cli.CenterTarget.from_args(args)
    assert target.metadata == (("authorization", "Bearer t0ken"),)
    assert (target.tls_ca, target.tls_cert, target.tls_key) == (
        Path("ca.pem"), Path("admin.pem"), Path("admin-key.pem"))
    assert target.tls_server_name == "center.internal"
    assert target.timeout == 2.5
    assert target.uses_tls
    assert "t0ken" not in repr(target)
    flags = cli.CenterTarget.from_args(cli.build_parser().parse_args(
        ["nodes", "--token", "flag", "--timeout", "9", "--tls-ca", "other.pem"]))
    assert (flags.token, flags.timeout, flags.tls_ca) == ("flag", 9.0, Path("other.pem"))


def test_a_bad_timeout_variable_is_one_line(capsys: pytest.CaptureFixture[str],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FASTPROXY_TIMEOUT", "soon")
    result = run_cli(capsys, "nodes")
    assert result.code == 1
    assert result.err_lines == ["fastproxy: FASTPROXY_TIMEOUT='soon': expected a number of "
                                "seconds"]


def test_center_defaults_to_local_port_7070_without_environment(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FASTPROXY_CENTER", raising=False)
    monkeypatch.delenv("FASTPROXY_TOKEN", raising=False)
    args = cli.build_parser().parse_args(["policy", "history"])
    assert args.center == "127.0.0.1:7070"
    target = cli.CenterTarget.from_args(args)
    assert target.metadata == ()
    assert target.timeout == cli.DEFAULT_TIMEOUT_SECONDS


def test_any_tls_option_turns_tls_on() -> None:
    for extra in (["--tls-ca", "ca.pem"], ["--tls-server-name", "center.internal"],
                  ["--tls-cert", "c.pem", "--tls-key", "k.pem"]):
        args = cli.build_parser().parse_args(["nodes", *extra])
        assert cli.CenterTarget.from_args(args).uses_tls, extra


def test_client_certificate_without_its_key_is_refused(
        capsys: pytest.CaptureFixture[str]) -> None:
    result = run_cli(capsys, "nodes", "--tls-cert", "client.pem")
    assert result.code == 1
    assert result.err_lines == ["fastproxy: --tls-cert and --tls-key must be given together"]


def test_unreadable_ca_file_is_one_line(capsys: pytest.CaptureFixture[str],
                                        tmp_path: Path) -> None:
    result = run_cli(capsys, "nodes", "--tls-ca", str(tmp_path / "missing.pem"))
    assert result.code == 1
    assert len(result.err_lines) == 1
    assert "--tls-ca" in result.err and "missing.pem" in result.err


def test_missing_policy_file_is_one_line(capsys: pytest.CaptureFixture[str],
                                         tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    result = run_cli(capsys, "policy", "apply", str(missing), "--center", "127.0.0.1:1")
    assert result.code == 1
    assert result.err_lines == [f"fastproxy: policy file {missing} not found"]


def test_adding_a_subcommand_is_one_function() -> None:
    def add_hello_command(subparsers: cli.Subparsers) -> None:
        cli.add_command(subparsers, "hello", lambda args: 42, "say hello",
                        talks_to_center=False)

    cli.COMMANDS.append(add_hello_command)
    try:
        args = cli.build_parser().parse_args(["hello"])
        assert cli.main(["hello"]) == 42
        assert args.run(args) == 42
    finally:
        cli.COMMANDS.remove(add_hello_command)


# --- keys gen ---------------------------------------------------------------------------------


def policy_with_keys(*entries: str) -> str:
    lines = ["version: 1", "keys:", *(f"  {entry}" for entry in entries)]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("key_type", [t.value for t in KeyType])
def test_keys_gen_entry_loads_in_a_policy(capsys: pytest.CaptureFixture[str],
                                          key_type: str) -> None:
    result = run_cli(capsys, "keys", "gen", key_type, "--name", "fresh-key")
    assert result.code == 0
    entry = result.out.strip()
    assert "\n" not in entry
    policy = load_policy(policy_with_keys(entry))
    key = policy.keys["fresh-key"]
    assert key.type is KeyType(key_type)
    assert len(key.secret) == 32


def test_keys_gen_ed25519_is_a_raw_seed_with_its_public_half_as_comment(
        capsys: pytest.CaptureFixture[str]) -> None:
    result = run_cli(capsys, "keys", "gen", "ed25519", "--name", "signer")
    entry = result.out.strip()
    assert 'private: "base64:' in entry
    key = load_policy(policy_with_keys(entry)).keys["signer"]
    public = Ed25519PrivateKey.from_private_bytes(key.secret).public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert key.public == public
    assert entry.endswith(f"# public: base64:{base64.b64encode(public).decode()}")


def test_keys_gen_makes_new_material_every_time(capsys: pytest.CaptureFixture[str]) -> None:
    first = run_cli(capsys, "keys", "gen", "aes-256-gcm", "--name", "k").out
    second = run_cli(capsys, "keys", "gen", "aes-256-gcm", "--name", "k").out
    a = load_policy(policy_with_keys(first.strip())).keys["k"].secret
    b = load_policy(policy_with_keys(second.strip())).keys["k"].secret
    assert a != b


def test_keys_gen_default_name_is_type_and_date(capsys: pytest.CaptureFixture[str]) -> None:
    import datetime

    assert default_key_name(KeyType.CHACHA20_POLY1305, datetime.date(2026, 1, 31)) == (
        "chacha20-poly1305-20260131")
    result = run_cli(capsys, "keys", "gen", "hmac-sha256")
    name = result.out.split(":", 1)[0]
    assert name == default_key_name(KeyType.HMAC_SHA256)
    assert name in load_policy(policy_with_keys(result.out.strip())).keys


def test_keys_gen_refuses_an_invalid_name(capsys: pytest.CaptureFixture[str]) -> None:
    result = run_cli(capsys, "keys", "gen", "hmac-sha256", "--name", "has space")
    assert result.code == 1
    assert len(result.err_lines) == 1
    assert result.out == ""


def test_keys_gen_json_has_the_fields_of_a_key_entry(capsys: pytest.CaptureFixture[str]) -> None:
    entry = json.loads(run_cli(capsys, "keys", "gen", "ed25519", "--name", "x", "--json").out)
    assert set(entry) == {"name", "type", "private", "public"}
    assert entry["private"].startswith("base64:")
    symmetric = json.loads(run_cli(capsys, "keys", "gen", "aes-256-gcm", "--json").out)
    assert set(symmetric) == {"name", "type", "secret"}


def test_generated_key_repr_hides_material() -> None:
    key = generate_key(KeyType.AES_256_GCM, "k")
    assert key.material_ref not in repr(key)


# --- output -----------------------------------------------------------------------------------


def revision(number: int, *, rolled_back_from: int = 0,
             comment: str = "c") -> center_pb2.RevisionInfo:
    return center_pb2.RevisionInfo(
        revision=number, created_unix=1_769_860_800.0, author="admin:ops", comment=comment,
        content_hash="ab" * 32, rolled_back_from=rolled_back_from)


def test_history_table_shows_rollback_source_and_short_hash() -> None:
    table = cli_format.history_table([revision(3, rolled_back_from=1, comment="undo\nit"),
                                      revision(1)])
    header, third, first = table.splitlines()
    assert header.split() == ["REVISION", "TIME", "AUTHOR", "COMMENT", "HASH", "ROLLBACK", "OF"]
    assert third.split() == ["3", "2026-01-31", "12:00:00Z", "admin:ops", "undo", "it",
                             "ab" * 6, "1"]
    assert first.split()[-1] == "ab" * 6
    assert "ab" * 7 not in table


def test_audit_table_shows_who_did_what_from_where_and_why() -> None:
    table = cli_format.audit_table([
        center_pb2.AuditEvent(id=2, time_unix=1_769_860_800.0, actor="anonymous",
                              peer="ipv4:127.0.0.1:5", action="denied",
                              detail="UNAUTHENTICATED on ApplyPolicy: no valid credential"),
        center_pb2.AuditEvent(id=1, time_unix=1_769_860_800.0, actor="admin:ops",
                              peer="ipv4:127.0.0.1:6", action="apply", revision=3,
                              detail="applied as revision 3"),
    ])
    header, denied, applied = table.splitlines()
    assert header.split() == ["TIME", "ACTOR", "ACTION", "REVISION", "PEER", "DETAIL"]
    assert denied.split()[2:5] == ["anonymous", "denied", "ipv4:127.0.0.1:5"]
    assert applied.split()[2:6] == ["admin:ops", "apply", "3", "ipv4:127.0.0.1:6"]
    assert cli_format.audit_table([]) == "no audit events yet"


def test_nodes_table_shows_every_column_of_a_node() -> None:
    response = center_pb2.ListNodesResponse(latest_revision=4, nodes=[center_pb2.NodeStatus(
        node_id="in-1", role=policy_pb2.ROLE_IN, service="song_service", peer="ipv4:127.0.0.1:5",
        connected_since_unix=1_769_860_800.0, sent_revision=4, acked_revision=3,
        nacked_revision=4, nack_error="bad key", registered_addresses=["127.0.0.1:9101"])])
    lines = cli_format.nodes_table(response).splitlines()
    assert lines[0] == "latest revision: 4"
    assert lines[1].split() == ["NODE", "ROLE", "SERVICE", "PEER", "CONNECTED", "SINCE",
                                "ACKED", "STATE", "LAST", "NACK", "ADDRESSES"]
    assert lines[2].split() == ["in-1", "in", "song_service", "ipv4:127.0.0.1:5", "2026-01-31",
                                "12:00:00Z", "3", "behind", "4:", "bad", "key",
                                "127.0.0.1:9101"]


def test_json_rows_are_made_of_chosen_fields_only() -> None:
    assert set(cli_format.revision_row(revision(1))) == {
        "revision", "created", "created_unix", "author", "comment", "content_hash",
        "rolled_back_from"}
    assert set(cli_format.node_row(center_pb2.NodeStatus(node_id="n"))) == {
        "node_id", "role", "service", "peer", "connected_since", "connected_since_unix",
        "sent_revision", "acked_revision", "acked_hash", "state", "nacked_revision",
        "nack_error",
        "registered_addresses"}


def test_table_cells_stay_on_one_line_and_are_cut_when_long() -> None:
    table = cli_format.render_table(["A", "B"], [["x" * 200, "two\nlines"]])
    row = table.splitlines()[1]
    assert len(table.splitlines()) == 2
    assert "two lines" in row
    assert len(row) < 100


# --- end to end against a real Center ------------------------------------------------------


@pytest.fixture
def center(start_center: StartCenter) -> CenterProcess:
    return start_center()


@pytest.fixture
def guarded_center(start_center: StartCenter, tmp_path: Path) -> CenterProcess:
    admin_tokens = tmp_path / "admin-tokens"
    admin_tokens.write_text("ops: right-admin-token\n")
    node_tokens = tmp_path / "node-tokens"
    node_tokens.write_text("b: node-token-of-b\n")
    return start_center("--admin-tokens", str(admin_tokens), "--node-tokens", str(node_tokens))


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


@pytest.fixture(autouse=True)
def _no_environment_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("FASTPROXY_CENTER", "FASTPROXY_TOKEN", *cli.ENV.values()):
        monkeypatch.delenv(name, raising=False)


def test_apply_valid_policy_makes_revision_1(center: CenterProcess, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    policy = write(tmp_path, "p.yaml", minimal_policy())
    result = run_cli(capsys, "policy", "apply", policy, "-m", "first", *center.args())
    assert result.code == 0, result.err
    assert result.out.startswith("applied: revision 1, hash ")
    assert "(first)" in result.out
    assert result.err == ""


def test_apply_identical_content_says_nothing_changed(
        center: CenterProcess, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    policy = write(tmp_path, "p.yaml", minimal_policy())
    assert run_cli(capsys, "policy", "apply", policy, *center.args()).code == 0
    again = run_cli(capsys, "policy", "apply", policy, *center.args())
    assert again.code == 0
    assert again.out.strip() == (
        "nothing changed: the policy is identical to the latest revision 1")
    history = json.loads(run_cli(capsys, "policy", "history", "--json", *center.args()).out)
    assert [r["revision"] for r in history] == [1]


def test_apply_invalid_policy_prints_every_error_and_fails(
        center: CenterProcess, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    policy = write(tmp_path, "bad.yaml", BAD_POLICY)
    result = run_cli(capsys, "policy", "apply", policy, *center.args())
    assert result.code == 1
    first, *errors = result.err_lines
    assert first.startswith("fastproxy: the Center refused the policy (")
    reported = [e.strip() for e in errors]
    assert "version: must be 1" in reported
    assert "colour: unknown field" in reported
    assert any(e.startswith("services.b.timeout_ms:") for e in reported)
    assert any(e.startswith("services.b.allow[0].rate_limit.rps:") for e in reported)
    assert f"({len(reported)} errors)" in first
    assert result.out == ""
    nothing = run_cli(capsys, "policy", "get", *center.args())
    assert nothing.code == 1
    assert nothing.err_lines == ["fastproxy: the Center holds no policy yet"]


def test_apply_invalid_policy_with_json_prints_the_errors_as_json(
        center: CenterProcess, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    policy = write(tmp_path, "bad.yaml", BAD_POLICY)
    result = run_cli(capsys, "policy", "apply", policy, "--json", *center.args())
    assert result.code == 1
    answer = json.loads(result.out)
    assert answer["applied"] is False
    assert "version: must be 1" in answer["errors"]


def test_get_prints_the_yaml_as_applied_and_any_revision(
        center: CenterProcess, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    first_text, second_text = minimal_policy(9), minimal_policy(10)
    run_cli(capsys, "policy", "apply", write(tmp_path, "1.yaml", first_text), *center.args())
    run_cli(capsys, "policy", "apply", write(tmp_path, "2.yaml", second_text), *center.args())
    latest = run_cli(capsys, "policy", "get", *center.args())
    assert latest.code == 0
    assert latest.out == redact_policy(second_text)  # secret values: <redacted>
    assert latest.out.count('"<redacted>"') == 2
    shown = run_cli(capsys, "policy", "get", "--show-secrets", *center.args())
    assert shown.out == second_text
    older = run_cli(capsys, "policy", "get", "--revision", "1", "--show-secrets",
                    *center.args())
    assert older.out == first_text
    as_json = json.loads(run_cli(capsys, "policy", "get", "--revision", "1", "--json",
                                 *center.args()).out)
    assert as_json["revision"]["revision"] == 1
    assert as_json["yaml"] == redact_policy(first_text)
    missing = run_cli(capsys, "policy", "get", "--revision", "7", *center.args())
    assert missing.code == 1
    assert missing.err_lines == ["fastproxy: revision 7 does not exist"]


def test_history_and_rollback(center: CenterProcess, tmp_path: Path,
                              capsys: pytest.CaptureFixture[str]) -> None:
    first_text = minimal_policy(9)
    run_cli(capsys, "policy", "apply", write(tmp_path, "1.yaml", first_text), "-m", "one",
            *center.args())
    run_cli(capsys, "policy", "apply", write(tmp_path, "2.yaml", minimal_policy(10)), "-m",
            "two", *center.args())
    rolled = run_cli(capsys, "policy", "rollback", "1", "-m", "undo two", *center.args())
    assert rolled.code == 0, rolled.err
    assert rolled.out.startswith("rolled back to revision 1: revision 3, hash ")
    assert run_cli(capsys, "policy", "get", "--show-secrets",
                   *center.args()).out == first_text

    again = run_cli(capsys, "policy", "rollback", "1", *center.args())
    assert again.code == 0
    assert again.out.strip() == (
        "nothing changed: revision 1 is identical to the latest revision 3")

    table = run_cli(capsys, "policy", "history", *center.args())
    assert table.code == 0
    revisions_table, audit_table = table.out.split("\n\n", 1)
    header, *rows = revisions_table.splitlines()
    assert header.split()[0] == "REVISION"
    assert [row.split()[0] for row in rows] == ["3", "2", "1"]
    assert rows[0].split()[-1] == "1"  # rollback source
    assert "undo two" in rows[0]

    history = json.loads(run_cli(capsys, "policy", "history", "--json", *center.args()).out)
    assert [(r["revision"], r["rolled_back_from"], r["comment"]) for r in history] == [
        (3, 1, "undo two"), (2, None, "two"), (1, None, "one")]
    assert history[0]["content_hash"] == history[2]["content_hash"]
    assert history[0]["content_hash"][:12] in rows[0]
    # then who made each change, newest first: the no-op rollback, the rollback, two applies
    audit_title, _, *audit_rows = audit_table.splitlines()
    assert audit_title == cli_format.AUDIT_TITLE
    assert [row.split()[3] for row in audit_rows] == ["rollback", "rollback", "apply", "apply"]

    missing = run_cli(capsys, "policy", "rollback", "42", *center.args())
    assert missing.code == 1
    assert len(missing.err_lines) == 1
    assert "42" in missing.err


def test_nodes_without_nodes(center: CenterProcess, capsys: pytest.CaptureFixture[str]) -> None:
    table = run_cli(capsys, "nodes", *center.args())
    assert table.code == 0
    assert table.out.splitlines() == ["latest revision: none", "no nodes connected"]
    assert json.loads(run_cli(capsys, "nodes", "--json", *center.args()).out) == {
        "latest_revision": 0, "nodes": []}


class Watcher:
    """A node on a real WatchPolicy stream: sends what the test puts in, keeps the replies."""

    def __init__(self, address: str, hello: center_pb2.NodeHello,
                 metadata: tuple[tuple[str, str], ...] = ()) -> None:
        self.channel = grpc.insecure_channel(address)
        self.outbox: queue.Queue[center_pb2.WatchRequest | None] = queue.Queue()
        self.outbox.put(center_pb2.WatchRequest(hello=hello))
        stub = center_pb2_grpc.CenterStub(self.channel)
        self.replies = stub.WatchPolicy(self._requests(), metadata=metadata, timeout=30)

    def _requests(self) -> Iterator[center_pb2.WatchRequest]:
        while (request := self.outbox.get()) is not None:
            yield request

    def send(self, request: center_pb2.WatchRequest) -> None:
        self.outbox.put(request)

    def close(self) -> None:
        self.outbox.put(None)
        self.replies.cancel()
        self.channel.close()


def wait_for_nodes(capsys: pytest.CaptureFixture[str], center: CenterProcess,
                   ready: Callable[[dict[str, Any]], object]) -> dict[str, Any]:
    """Polls `fastproxy nodes --json` until `ready` holds (the Center records acks async)."""
    deadline = time.monotonic() + 10
    while True:
        listing: dict[str, Any] = json.loads(
            run_cli(capsys, "nodes", "--json", *center.args()).out)
        if ready(listing):
            return listing
        assert time.monotonic() < deadline, listing
        time.sleep(0.1)


def test_nodes_shows_a_connected_node_its_ack_nack_and_addresses(
        center: CenterProcess, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    policy = write(tmp_path, "p.yaml", minimal_policy())
    assert run_cli(capsys, "policy", "apply", policy, *center.args()).code == 0
    watcher = Watcher(center.address, center_pb2.NodeHello(
        node_id="b-in-1", role=policy_pb2.ROLE_IN, service="b"))
    try:
        snapshot = next(watcher.replies).snapshot
        assert snapshot is not None
        watcher.send(center_pb2.WatchRequest(ack=center_pb2.Ack(revision=1)))
        watcher.send(center_pb2.WatchRequest(register=center_pb2.Register(
            address="127.0.0.1:9101", lease_seconds=30)))
        listing = wait_for_nodes(capsys, center, lambda got: any(
            n["acked_revision"] == 1 and n["registered_addresses"] for n in got["nodes"]))
        (node,) = listing["nodes"]
        assert node["node_id"] == "b-in-1"
        assert node["role"] == "in"
        assert node["service"] == "b"
        assert node["peer"]
        assert node["connected_since"]
        assert node["registered_addresses"] == ["127.0.0.1:9101"]

        watcher.send(center_pb2.WatchRequest(nack=center_pb2.Nack(revision=1,
                                                                  error="cannot load key")))
        wait_for_nodes(capsys, center, lambda got: got["nodes"][0]["nack_error"])
        table = run_cli(capsys, "nodes", *center.args())
        lines = table.out.splitlines()
        assert lines[0] == "latest revision: 1"
        row = lines[2]
        for text in ("b-in-1", " in ", " b ", "1: cannot load key", "127.0.0.1:9101"):
            assert text in row, (text, row)
        as_json = run_cli(capsys, "nodes", "--json", *center.args()).out
        for key in ("a-id", "b-id", "base64:"):
            assert key not in as_json
    finally:
        watcher.close()


def test_history_json_never_holds_key_material(
        center: CenterProcess, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = minimal_policy()
    run_cli(capsys, "policy", "apply", write(tmp_path, "p.yaml", text), *center.args())
    history = run_cli(capsys, "policy", "history", "--json", *center.args()).out
    nodes = run_cli(capsys, "nodes", "--json", *center.args()).out
    for line in text.splitlines():
        if "base64:" in line:
            secret = line.split("base64:")[1].split('"')[0]
            assert secret not in history
            assert secret not in nodes


def test_unreachable_center_is_one_line_and_nonzero(capsys: pytest.CaptureFixture[str]) -> None:
    address = f"127.0.0.1:{free_port()}"
    started = time.monotonic()
    result = run_cli(capsys, "policy", "history", "--center", address, "--timeout", "3")
    assert time.monotonic() - started < 10
    assert result.code == 1
    assert len(result.err_lines) == 1
    assert result.err.startswith(f"fastproxy: cannot reach the Center at {address}")
    assert result.out == ""


def test_console_script_reports_an_unreachable_center(tmp_path: Path) -> None:
    address = f"127.0.0.1:{free_port()}"
    done = subprocess.run([FASTPROXY, "nodes", "--center", address], capture_output=True,
                          text=True, timeout=30, cwd=tmp_path)
    assert done.returncode == 1
    assert done.stdout == ""
    assert len(done.stderr.splitlines()) == 1
    assert "cannot reach the Center" in done.stderr


def test_console_script_applies_with_center_from_the_environment(
        center: CenterProcess, tmp_path: Path) -> None:
    policy = write(tmp_path, "p.yaml", minimal_policy())
    env = {**os.environ, "FASTPROXY_CENTER": center.address}
    done = subprocess.run([FASTPROXY, "policy", "apply", policy, "-m", "from env"],
                          capture_output=True, text=True, timeout=30, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("applied: revision 1")


def test_admin_commands_without_a_token_are_refused(
        guarded_center: CenterProcess, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    policy = write(tmp_path, "p.yaml", minimal_policy())
    for argv in (["policy", "apply", policy], ["policy", "get"], ["policy", "history"],
                 ["policy", "rollback", "1"], ["nodes"]):
        result = run_cli(capsys, *argv, *guarded_center.args())
        assert result.code == 1, argv
        assert len(result.err_lines) == 1, result.err
        assert "refused the credential: unauthenticated" in result.err
        assert "no --token" in result.err


def test_a_wrong_token_is_refused_and_changes_nothing(
        guarded_center: CenterProcess, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    policy = write(tmp_path, "p.yaml", minimal_policy())
    wrong = run_cli(capsys, "policy", "apply", policy, "--token", "not-the-token",
                    *guarded_center.args())
    assert wrong.code == 1
    assert len(wrong.err_lines) == 1
    assert "refused the credential" in wrong.err
    assert "not-the-token" not in wrong.err
    history = run_cli(capsys, "policy", "history", "--json", "--token", "right-admin-token",
                      *guarded_center.args())
    assert history.code == 0, history.err
    assert json.loads(history.out) == []


def test_a_node_token_is_not_an_admin_credential(
        guarded_center: CenterProcess, capsys: pytest.CaptureFixture[str]) -> None:
    result = run_cli(capsys, "nodes", "--token", "node-token-of-b", *guarded_center.args())
    assert result.code == 1
    assert len(result.err_lines) == 1
    assert "refused the credential" in result.err


def test_the_admin_token_works_and_names_the_author(
        guarded_center: CenterProcess, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    policy = write(tmp_path, "p.yaml", minimal_policy())
    monkeypatch.setenv("FASTPROXY_ADMIN_TOKEN", "right-admin-token")
    applied = run_cli(capsys, "policy", "apply", policy, *guarded_center.args())
    assert applied.code == 0, applied.err
    (entry,) = json.loads(run_cli(capsys, "policy", "history", "--json",
                                  *guarded_center.args()).out)
    assert "ops" in entry["author"]


# --- TLS: verifying the Center, client certificates -----------------------------------------


@dataclass
class Pki:
    ca: Path
    other_ca: Path
    server_cert: Path
    server_key: Path
    admin_cert: Path
    admin_key: Path
    node_cert: Path
    node_key: Path


def _write_pem(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def make_pki(folder: Path) -> Pki:
    """A CA, a Center certificate for the name `center.test` only, and client certificates
    whose common names are `admin:ops` and the node service `b`."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)

    def name(common_name: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])

    def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
        return key.private_bytes(serialization.Encoding.PEM,
                                 serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())

    def authority(common_name: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (x509.CertificateBuilder().subject_name(name(common_name))
                .issuer_name(name(common_name)).public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(days=1))
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .sign(key, hashes.SHA256()))
        return cert, key

    ca_cert, ca_key = authority("test ca")
    other_cert, _ = authority("another ca")

    def leaf(stem: str, common_name: str, dns: str | None) -> tuple[Path, Path]:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (x509.CertificateBuilder().subject_name(name(common_name))
                   .issuer_name(ca_cert.subject).public_key(key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=1)))
        if dns is not None:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.DNSName(dns)]), critical=False)
        cert = builder.sign(ca_key, hashes.SHA256())
        return (_write_pem(folder / f"{stem}.pem", cert.public_bytes(serialization.Encoding.PEM)),
                _write_pem(folder / f"{stem}-key.pem", key_pem(key)))

    server_cert, server_key = leaf("center", "center.test", "center.test")
    admin_cert, admin_key = leaf("admin", "admin:ops", None)
    node_cert, node_key = leaf("node-b", "b", None)
    return Pki(
        ca=_write_pem(folder / "ca.pem", ca_cert.public_bytes(serialization.Encoding.PEM)),
        other_ca=_write_pem(folder / "other-ca.pem",
                            other_cert.public_bytes(serialization.Encoding.PEM)),
        server_cert=server_cert, server_key=server_key, admin_cert=admin_cert,
        admin_key=admin_key, node_cert=node_cert, node_key=node_key)


@pytest.fixture
def tls_center(tmp_path: Path) -> Iterator[tuple[str, Pki]]:
    pki = make_pki(tmp_path)
    address = f"127.0.0.1:{free_port()}"
    log = (tmp_path / "tls-center.log").open("wb")
    process = subprocess.Popen(
        [PYTHON, "-m", "center_svc", "--listen", address, "--store", "memory://",
         "--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key),
         "--client-ca", str(pki.ca)],
        cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while True:
            assert process.poll() is None, Path(log.name).read_text()
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", int(address.rsplit(":", 1)[1]))) == 0:
                    break
            assert time.monotonic() < deadline, "the TLS Center did not start"
            time.sleep(0.1)
        yield address, pki
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def tls_args(address: str, pki: Pki, cert: Path, key: Path) -> list[str]:
    return ["--center", address, "--tls-ca", str(pki.ca), "--tls-server-name", "center.test",
            "--tls-cert", str(cert), "--tls-key", str(key)]


def test_tls_with_an_admin_certificate_applies_and_lists(
        tls_center: tuple[str, Pki], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    address, pki = tls_center
    creds = tls_args(address, pki, pki.admin_cert, pki.admin_key)
    policy = write(tmp_path, "p.yaml", minimal_policy())
    applied = run_cli(capsys, "policy", "apply", policy, *creds)
    assert applied.code == 0, applied.err
    assert applied.out.startswith("applied: revision 1")
    (entry,) = json.loads(run_cli(capsys, "policy", "history", "--json", *creds).out)
    assert "ops" in entry["author"]


def test_tls_with_a_node_certificate_is_not_an_admin(
        tls_center: tuple[str, Pki], capsys: pytest.CaptureFixture[str]) -> None:
    address, pki = tls_center
    result = run_cli(capsys, "nodes", *tls_args(address, pki, pki.node_cert, pki.node_key))
    assert result.code == 1
    assert len(result.err_lines) == 1
    assert "refused the credential: permission denied" in result.err


def test_tls_center_not_signed_by_the_given_ca_is_one_line(
        tls_center: tuple[str, Pki], capsys: pytest.CaptureFixture[str]) -> None:
    address, pki = tls_center
    result = run_cli(capsys, "nodes", "--center", address, "--tls-ca", str(pki.other_ca),
                     "--tls-server-name", "center.test", "--tls-cert", str(pki.admin_cert),
                     "--tls-key", str(pki.admin_key), "--timeout", "3")
    assert result.code == 1
    assert len(result.err_lines) == 1
    assert result.err.startswith(f"fastproxy: cannot reach the Center at {address}")


def test_tls_name_mismatch_without_server_name_override_fails(
        tls_center: tuple[str, Pki], capsys: pytest.CaptureFixture[str]) -> None:
    address, pki = tls_center
    result = run_cli(capsys, "nodes", "--center", address, "--tls-ca", str(pki.ca),
                     "--tls-cert", str(pki.admin_cert), "--tls-key", str(pki.admin_key),
                     "--timeout", "3")
    assert result.code == 1
    assert len(result.err_lines) == 1
    assert "cannot reach the Center" in result.err


def test_console_script_tls_failure_is_one_line_on_stderr(
        tls_center: tuple[str, Pki], tmp_path: Path) -> None:
    """Also covers what gRPC's C core writes to stderr on its own, which capsys cannot see."""
    address, pki = tls_center
    env = {key: value for key, value in os.environ.items() if key != "GRPC_VERBOSITY"}
    done = subprocess.run(
        [FASTPROXY, "nodes", "--center", address, "--tls-ca", str(pki.other_ca),
         "--tls-server-name", "center.test", "--tls-cert", str(pki.admin_cert),
         "--tls-key", str(pki.admin_key), "--timeout", "3"],
        capture_output=True, text=True, timeout=30, env=env, cwd=tmp_path)
    assert done.returncode == 1
    assert done.stdout == ""
    assert len(done.stderr.splitlines()) == 1, done.stderr
    assert "cannot reach the Center" in done.stderr
