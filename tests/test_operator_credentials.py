"""Credentials in operation (issue 17, point 3): the SDK refused by the Center fails at once
with one clear line; the CLI keeps its own credential variables, refuses plaintext off
loopback, and prints the Center's key for nodes to pin (`fastproxy center key`)."""

from __future__ import annotations

import asyncio
import base64
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import grpc
import pytest
from conftest import StartCenter
from support.dataplane import CALLER, CenterAdmin, DataplanePolicy, Proxies, free_address

import fastproxy
from fastproxy.cli import commands as cli
from fastproxy.policy.signing import parse_center_public_key
from fastproxy.v1 import center_pb2

SDK_SCRIPT = textwrap.dedent("""\
    import sys, time, grpc, fastproxy
    interceptors = fastproxy.client_interceptors(service="chat_service", center=sys.argv[1],
                                                 embedded=True)
    channel = grpc.intercept_channel(grpc.insecure_channel("127.0.0.1:1"), *interceptors)
    started = time.monotonic()
    try:
        channel.unary_unary("/test.v1.Echo/Unary")(b"ping")
    except grpc.RpcError as error:
        print(f"{error.code().name}|{error.details()}|{time.monotonic() - started:.2f}")
    time.sleep(1.5)  # the watch retries meanwhile: the refusal must not be logged again
    interceptors.close()
""")


def test_the_sdk_refused_by_the_center_fails_at_once_with_one_clear_line(
        start_center: StartCenter, tmp_path: Path) -> None:
    nodes = tmp_path / "node-tokens"
    nodes.write_text("chat_service: chat-token\n")
    admins = tmp_path / "admin-tokens"
    admins.write_text("alice: alice-token\n")
    center = start_center("--node-tokens", str(nodes), "--admin-tokens", str(admins))
    script = tmp_path / "app.py"
    script.write_text(SDK_SCRIPT)
    env = {**os.environ, "FASTPROXY_TOKEN": "alice-token"}  # an admin token left in a shell
    done = subprocess.run([sys.executable, str(script), center.address], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    code, details, seconds = done.stdout.strip().split("|")
    assert code == "UNAVAILABLE"
    assert details == (f"center {center.address} refused this node's credential "
                       "(chat_service, role client): admin:alice may not watch")
    assert float(seconds) < 2.0  # not the 5 s wait for a policy that will not come
    assert done.stderr.count("refused this node's credential") == 1, done.stderr
    assert "Task was destroyed" not in done.stderr
    assert "alice-token" not in done.stderr + done.stdout


def test_the_aio_sdk_refused_by_the_center_fails_at_once_too(
        start_center: StartCenter, tmp_path: Path) -> None:
    nodes = tmp_path / "node-tokens"
    nodes.write_text("chat_service[app]: app-token\n")
    center = start_center("--node-tokens", str(nodes))

    async def call() -> tuple[grpc.StatusCode, str, float]:
        interceptors = fastproxy.aio_client_interceptors(
            service="chat_service", center=center.address, embedded=True, token="app-token")
        started = time.monotonic()
        try:
            async with grpc.aio.insecure_channel("127.0.0.1:1",
                                                 interceptors=interceptors) as channel:
                with pytest.raises(grpc.aio.AioRpcError) as failed:
                    await channel.unary_unary("/test.v1.Echo/Unary")(b"ping")
        finally:
            interceptors.close()
        return failed.value.code(), failed.value.details() or "", time.monotonic() - started

    code, details, seconds = asyncio.run(call())
    assert code == grpc.StatusCode.UNAVAILABLE
    assert details.endswith("node:chat_service may not watch as role client (its credential "
                            "allows app)")
    assert seconds < 2.0


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    try:
        code = cli.main(list(argv))
    except SystemExit as exc:
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(autouse=True)
def _no_environment_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("FASTPROXY_TOKEN", *cli.ENV.values()):
        monkeypatch.delenv(name, raising=False)


def test_the_cli_refuses_plaintext_to_a_center_off_loopback(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FASTPROXY_ADMIN_TOKEN", "admin-secret")
    code, out, err = run_cli(capsys, "nodes", "--center", "192.0.2.10:7070")
    assert code == 1
    assert out == ""
    assert err.splitlines() == [
        "fastproxy: refusing plaintext to the Center: the Center at 192.0.2.10:7070 is not "
        "on loopback, and the credential would travel in the clear; use TLS (--tls-ca FILE)"]


def test_the_cli_does_not_take_a_nodes_token_and_says_which_variable_it_reads(
        start_center: StartCenter, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    nodes = tmp_path / "node-tokens"
    nodes.write_text("chat_service: chat-token\n")
    admins = tmp_path / "admin-tokens"
    admins.write_text("alice: alice-token\n")
    center = start_center("--node-tokens", str(nodes), "--admin-tokens", str(admins))
    monkeypatch.setenv("FASTPROXY_TOKEN", "chat-token")
    code, _, err = run_cli(capsys, "nodes", "--center", center.address)
    assert code == 1
    assert err.splitlines() == [
        f"fastproxy: the Center at {center.address} refused the credential: unauthenticated "
        "(no --token: FASTPROXY_TOKEN is a node's token, the CLI reads "
        "FASTPROXY_ADMIN_TOKEN): no valid credential: no bearer token and no client "
        "certificate"]
    monkeypatch.setenv("FASTPROXY_ADMIN_TOKEN", "alice-token")
    code, out, err = run_cli(capsys, "nodes", "--center", center.address)
    assert code == 0, err
    assert out.startswith("latest revision: none")


def test_center_key_prints_the_key_nodes_pin_and_a_pinned_proxy_takes_it(
        start_center: StartCenter, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    center = start_center()
    info = center.stub().GetCenterInfo(center_pb2.GetCenterInfoRequest(), timeout=5)
    where = ("--center", center.address)

    code, out, _ = run_cli(capsys, "center", "key", *where)
    assert code == 0
    assert out == base64.b64encode(info.public_key).decode() + "\n"
    code, pem, _ = run_cli(capsys, "center", "key", "--pem", *where)
    assert pem.startswith("-----BEGIN PUBLIC KEY-----")
    assert parse_center_public_key(pem.encode()) == info.public_key
    pinned = tmp_path / "center.pub"
    code, out, _ = run_cli(capsys, "center", "key", "--pem", "-o", str(pinned), *where)
    assert code == 0
    assert out == f"wrote the Center's public key to {pinned} (for --center-public-key)\n"

    admin = CenterAdmin(center.address)
    revision = admin.apply(DataplanePolicy())
    proxies = Proxies(tmp_path)
    try:
        proxies.start("out", CALLER, free_address(), wait=False, center=center.address,
                      extra=("--node-id", "pinned-out", "--center-public-key", str(pinned)))
        admin.wait_acked(["pinned-out"], revision, timeout=20)
    finally:
        proxies.stop_all()


def test_center_key_is_one_line_when_the_center_is_unreachable(
        capsys: pytest.CaptureFixture[str]) -> None:
    started = time.monotonic()
    code, out, err = run_cli(capsys, "center", "key", "--center", free_address(),
                             "--timeout", "2")
    assert code == 1 and out == ""
    assert len(err.splitlines()) == 1
    assert "cannot reach the Center" in err
    assert time.monotonic() - started < 10
