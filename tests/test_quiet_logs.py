"""Expected events leave no error lines: the logs of real processes are read back after
scenarios an operator meets every day, and hold no `ERROR` line they should not, no
traceback, no grpc internals (`Internal error from Core`, grpc/grpc#36066) and no asyncio
noise (`aclose(): asynchronous generator is already running`).

- A node whose credential the Center refuses says so once, clearly, first (no INTERNAL
  before it), and backs off instead of retrying at full speed.
- A Center restarted under its nodes.
- Proxies stopped while streams, tunnels and unary calls are in flight.
"""

from __future__ import annotations

import re
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from conftest import StartCenter, launch_center, wait_until
from support.dataplane import Proxies, free_address
from support.sdk_stack import CALLEE, CALLER, UpstreamServer, sdk_policy_yaml

from fastproxy.v1 import demo_pb2, demo_pb2_grpc

pytestmark = pytest.mark.timeout(90)

NOISE = re.compile(r"Internal error from Core|Traceback|asynchronous generator|"
                   r"Task was destroyed|Task exception was never retrieved|Exception in callback")


def noise(text: str) -> list[str]:
    return [line for line in text.splitlines() if NOISE.search(line)]


def errors(text: str) -> list[str]:
    return [line for line in text.splitlines() if " ERROR " in line or "CRITICAL" in line]


def test_a_refused_node_credential_is_one_clear_line_and_the_node_backs_off(
        start_center: StartCenter, tmp_path: Path) -> None:
    tokens = tmp_path / "node-tokens"
    tokens.write_text(f"{CALLEE}: song-token\n{CALLER}: chat-token\n")
    admins = tmp_path / "admin-tokens"
    admins.write_text("alice: admin-token\n")
    policy = tmp_path / "policy.yaml"
    policy.write_text(sdk_policy_yaml("127.0.0.1:9"))
    center = start_center("--node-tokens", str(tokens), "--admin-tokens", str(admins),
                          "--policy", str(policy))
    proxies = Proxies(tmp_path)
    # an in-proxy that registers (it sends more than its hello), an out-proxy, wrong tokens
    # of both kinds: unknown, and an administrator's
    nodes = [
        proxies.start("in", CALLEE, free_address(), center=center.address,
                      upstream="127.0.0.1:9", extra=["--token", "wrong"], wait=False),
        proxies.start("out", CALLER, free_address(), center=center.address,
                      extra=["--token", "admin-token"], wait=False),
        proxies.start("out", CALLER, free_address(), center=center.address, wait=False),
    ]
    watching_s = 3.0
    started = time.monotonic()
    try:
        wait_until(lambda: all("refused this node's credential" in node.log()
                               for node in nodes), timeout=10, what="every refusal logged")
        time.sleep(max(watching_s - (time.monotonic() - started), 0))
    finally:
        proxies.stop_all()
    for node in nodes:
        text = node.log()
        assert noise(text) == [], text
        refusals = errors(text)
        assert len(refusals) == 1, text
        assert re.search(r"refused this node's credential \(\w+, role (in|out)\): "
                         r"(no valid node credential|admin:alice may not watch)", refusals[0])
        # nothing about the watch before the refusal: it is the first thing the node says
        before = text.split("refused this node's credential")[0]
        assert "watch stream to" not in before, text
    # backoff from 0.2 s doubling (jittered): a handful of attempts each, not one every 0.15 s
    refused = [line for line in center.log().splitlines() if "watch refused from" in line]
    assert len(refused) <= 3 * 8, "\n".join(refused)
    assert noise(center.log()) == [], center.log()


@pytest.fixture
def upstream() -> Iterator[UpstreamServer]:
    server = UpstreamServer().start()
    yield server
    server.stop()


def test_a_center_restarted_under_its_nodes_leaves_no_error_line(
        tmp_path: Path, upstream: UpstreamServer) -> None:
    policy = tmp_path / "policy.yaml"
    in_address = free_address()
    policy.write_text(sdk_policy_yaml(in_address))
    center_port = int(free_address().rsplit(":", 1)[1])
    center = launch_center(("--policy", str(policy)), tmp_path / "center.log",
                           port=center_port)
    proxies = Proxies(tmp_path)
    try:
        inproxy = proxies.start("in", CALLEE, in_address, center=center.address,
                                upstream=upstream.address)
        outproxy = proxies.start("out", CALLER, free_address(), center=center.address)
        assert center.terminate() == 0
        center = launch_center(("--policy", str(policy)), tmp_path / "center.log",
                               port=center_port)
        wait_until(lambda: center.log().count("connected from") >= 4, timeout=15,
                   what="both nodes back at the restarted Center")
        with grpc.insecure_channel(outproxy.address) as channel:
            echo = demo_pb2_grpc.EchoStub(channel)
            assert echo.Unary(demo_pb2.EchoRequest(text="after"), timeout=10).text == "after"
    finally:
        proxies.stop_all()
        center.terminate()
    for text in (inproxy.log(), outproxy.log(), center.log()):
        assert noise(text) == [], text
        assert errors(text) == [], text


def keep_calling(address: str, kind: int, stop: threading.Event) -> None:
    """Unary calls (kind 0: through the tunnel), bidi streams (1) or long server streams
    (2), one after the other until `stop`; failures (the proxies stopping) are expected."""
    def requests() -> Iterator[demo_pb2.EchoRequest]:
        while not stop.is_set():
            yield demo_pb2.EchoRequest(text="s")
            time.sleep(0.01)

    with grpc.insecure_channel(address) as channel:
        echo = demo_pb2_grpc.EchoStub(channel)
        while not stop.is_set():
            try:
                if kind == 0:
                    echo.Unary(demo_pb2.EchoRequest(text="u"), timeout=5)
                elif kind == 1:
                    for _ in echo.Bidi(requests(), timeout=5):
                        pass
                else:
                    for _ in echo.ServerStream(demo_pb2.EchoRequest(repeat=1000), timeout=5):
                        time.sleep(0.001)
            except grpc.RpcError:
                time.sleep(0.01)


def test_proxies_stopped_with_calls_in_flight_leave_no_error_line(
        tmp_path: Path, upstream: UpstreamServer) -> None:
    policy = tmp_path / "policy.yaml"
    in_address = free_address()
    policy.write_text(sdk_policy_yaml(in_address))
    proxies = Proxies(tmp_path)
    inproxy = proxies.start("in", CALLEE, in_address, policy=policy, upstream=upstream.address,
                            extra=["--grace", "0.5", "--metrics-port",
                                   free_address().rsplit(":", 1)[1]])
    outproxy = proxies.start("out", CALLER, free_address(), policy=policy,
                             extra=["--grace", "0.5"])
    stop = threading.Event()
    workers = [threading.Thread(target=keep_calling, args=(outproxy.address, n % 3, stop))
               for n in range(9)]
    for worker in workers:
        worker.start()
    try:
        time.sleep(1.0)
        assert inproxy.proc is not None
        inproxy.proc.send_signal(signal.SIGTERM)  # the in-proxy first: its tunnels end
        assert inproxy.terminate() == 0
        assert outproxy.terminate() == 0
    finally:
        stop.set()
        for worker in workers:
            worker.join(10)
        proxies.stop_all()
    for text in (inproxy.log(), outproxy.log()):
        assert noise(text) == [], text
        assert errors(text) == [], text
