"""The proxy as a process: command line errors, `--policy FILE` reloads, health before and
after the first policy, `--workers`, TLS between the proxies, and a graceful SIGTERM.

A module stack of an in-proxy (song_service) and an out-proxy (chat_service) runs from one
policy file; the tests that need other flags start their own processes.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from conftest import free_port, launch_center
from support.dataplane import (
    CALLEE,
    CALLER,
    NOT_SERVING,
    SERVING,
    DataplanePolicy,
    FileStack,
    Proxies,
    channel,
    free_address,
    health_status,
    make_pki,
    new_call,
    open_session,
    poll,
    reason_of,
    refused_with,
    reply_of,
    start_file_stack,
    start_tls_pair,
    succeeds,
    unary,
)
from support.upstream_app import UNARY, UpstreamProcess

from fastproxy.pipeline.node_policy import NodePolicy
from fastproxy.policy import load_policy
from fastproxy.policy.scope import scope_snapshot
from fastproxy.v1 import policy_pb2 as pb


@pytest.fixture(scope="module")
def upstream() -> Iterator[UpstreamProcess]:
    with UpstreamProcess(name="song") as process:
        yield process


@pytest.fixture(scope="module")
def module_proxies(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxies]:
    proxies = Proxies(tmp_path_factory.mktemp("process"))
    try:
        yield proxies
    finally:
        proxies.stop_all()


@pytest.fixture(scope="module")
def stack(upstream: UpstreamProcess, module_proxies: Proxies) -> FileStack:
    return start_file_stack(module_proxies, upstream.address, module_proxies.log_dir)


@pytest.fixture
def proxies(tmp_path: Path) -> Iterator[Proxies]:
    proxies = Proxies(tmp_path)
    try:
        yield proxies
    finally:
        proxies.stop_all()


def run_proxy(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "proxy_svc", *args], capture_output=True,
                          text=True, timeout=30, stdin=subprocess.DEVNULL)


def stderr_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


# --- command line ---------------------------------------------------------------------


@pytest.mark.parametrize("args, says", [
    (("--role", "sideways", "--service", "s", "--listen", "127.0.0.1:1", "--policy", "x"),
     "--role"),
    (("--role", "in", "--service", "s", "--listen", "127.0.0.1:1", "--policy", __file__),
     "--upstream"),
    (("--role", "out", "--service", "s", "--listen", "nowhere", "--policy", __file__),
     "--listen"),
    (("--role", "out", "--service", "s", "--listen", "127.0.0.1:1"), "--center"),
    (("--role", "out", "--service", "s", "--listen", "127.0.0.1:1",
      "--policy", "/no/such/file.yaml"), "/no/such/file.yaml"),
], ids=["bad-role", "in-without-upstream", "bad-listen", "no-policy-source", "missing-file"])
def test_bad_flags_end_with_one_clear_line_and_a_nonzero_exit(args: tuple[str, ...],
                                                              says: str) -> None:
    result = run_proxy(*args)
    assert result.returncode != 0
    line = stderr_line(result)
    assert line.startswith("proxy_svc: error:") and says in line


def test_a_bad_policy_file_ends_with_one_clear_line_and_a_nonzero_exit(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(DataplanePolicy().yaml_text().replace("rps: 10,", "rps: 0,"))
    result = run_proxy("--role", "out", "--service", CALLER, "--listen", free_address(),
                       "--policy", str(policy))
    assert result.returncode != 0
    line = stderr_line(result)
    assert line.startswith(f"proxy_svc: error: --policy {policy} refused")
    assert "rate_limit" in line


# --- policy file mode -----------------------------------------------------------------


def test_an_edit_of_the_policy_file_takes_effect_without_a_restart(stack: FileStack) -> None:
    out = stack.outproxies[CALLER].address
    original = stack.policy
    assert unary(out, b"before") == b"before"
    stack.write(original.with_(chat_methods=("/test.v1.Echo/Bidi",)))
    poll(lambda: refused_with(out, "denied"), 5, "the edit to deny unary calls")
    stack.write(original)
    poll(lambda: succeeds(out), 5, "the edit back")


def test_a_bad_edit_of_the_policy_file_keeps_the_last_good_policy(stack: FileStack) -> None:
    out = stack.outproxies[CALLER].address
    good = stack.policy
    stack.policy_path.write_text(good.yaml_text().replace("timeout_ms:", "timeout_msec:"))
    for proxy in (stack.inproxy, stack.outproxies[CALLER]):
        poll(lambda proxy=proxy: "the last good policy stays" in proxy.log(), 5,
             "the proxy to refuse the bad edit")
        assert proxy.running()
    assert unary(out, b"still") == b"still"
    stack.write(good)


# --- health ---------------------------------------------------------------------------


def test_health_is_not_serving_until_a_policy_is_loaded(proxies: Proxies,
                                                        tmp_path: Path) -> None:
    center_port = free_port()
    out = proxies.start("out", CALLER, free_address(), wait=False,
                        center=f"127.0.0.1:{center_port}")
    out.wait_status(NOT_SERVING)
    assert refused_with(out.address, "unavailable")
    policy = tmp_path / "center-policy.yaml"
    policy.write_text(DataplanePolicy(song_endpoints=(free_address(),)).yaml_text())
    center = launch_center(("--policy", str(policy)), tmp_path / "center.log",
                           port=center_port)
    try:
        out.wait_status(SERVING, timeout=15)
    finally:
        assert center.terminate() == 0
    assert health_status(out.address) == SERVING


# --- workers --------------------------------------------------------------------------


def test_two_workers_share_the_port_and_both_serve_calls(
        proxies: Proxies, upstream: UpstreamProcess, tmp_path: Path) -> None:
    in_address = free_address()
    policy = DataplanePolicy(song_endpoints=(in_address,))
    path = tmp_path / "policy.yaml"
    path.write_text(policy.yaml_text())
    inproxy = proxies.start("in", CALLEE, in_address, policy=path, upstream=upstream.address,
                            extra=("--workers", "2"))
    chat = NodePolicy.from_snapshot(
        scope_snapshot(load_policy(policy.yaml_text()), pb.ROLE_OUT, CALLER))
    peers: set[str] = set()

    def call_on_a_new_connection() -> bool:
        call_id = uuid.uuid4().hex
        with channel(in_address) as ch:  # the kernel spreads new connections over workers
            # a session lives in the worker that opened it: open it on the call's connection
            call = new_call(chat, in_address, metadata=(("x-test-id", call_id),),
                            session=open_session(chat, in_address, ch=ch))
            reply, rpc = ch.unary_unary(UNARY).with_call(
                call.seal_request(b"w", final=True), timeout=5, metadata=call.metadata)
        assert reply_of(call, reply, rpc) == b"w"
        peers.add(upstream.record(call_id)["peer"])
        return len(peers) >= 2

    poll(call_on_a_new_connection, 15, "calls served by both workers", interval=0.0)
    # each worker has its own channel to the upstream, hence its own client port
    assert len(peers) == 2, peers
    assert inproxy.terminate() == 0


# --- TLS ------------------------------------------------------------------------------


def test_tls_between_the_proxies_and_no_call_without_a_client_certificate(
        proxies: Proxies, upstream: UpstreamProcess, tmp_path: Path) -> None:
    pki = make_pki(tmp_path, (CALLEE, CALLER, "chat_app"))
    inproxy, out, app = start_tls_pair(proxies, pki, upstream.address, tmp_path)
    in_address = inproxy.address
    with channel(out.address, app) as ch:
        assert ch.unary_unary(UNARY)(b"over mTLS", timeout=10) == b"over mTLS"
    with channel(in_address, pki.client_credentials(None)) as ch, \
            pytest.raises(grpc.RpcError) as raised:
        ch.unary_unary(UNARY)(b"no cert", timeout=5)
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    assert reason_of(raised.value) is None  # the handshake failed: no call reached it
    with channel(in_address) as ch, pytest.raises(grpc.RpcError):
        ch.unary_unary(UNARY)(b"plaintext", timeout=5)


# --- SIGTERM (last: it stops the module's in-proxy) -----------------------------------


def test_sigterm_lets_the_in_flight_call_finish_and_exits_0(
        stack: FileStack, upstream: UpstreamProcess) -> None:
    call_id = uuid.uuid4().hex
    outcome: list[bytes | Exception] = []

    def slow_call() -> None:
        try:
            outcome.append(unary(stack.outproxies[CALLER].address, b"slow",
                                 (("x-test-id", call_id), ("x-test-stall-ms", "1000")),
                                 timeout=10))
        except grpc.RpcError as err:
            outcome.append(err)

    caller = threading.Thread(target=slow_call)
    caller.start()
    poll(lambda: upstream.record(call_id), 5, "the upstream to receive the slow call")
    started = time.monotonic()
    assert stack.inproxy.terminate() == 0
    caller.join(10)
    assert outcome == [b"slow"]
    assert time.monotonic() - started < 5
