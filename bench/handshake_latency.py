"""What a new session costs the first call: protocol version 2's handshake, measured.

    python bench/handshake_latency.py [--sessions 200] [--calls 5]

Starts the echo upstream and an in-proxy on loopback (policy file, no Center), then, on one
open gRPC connection, many times over: a new embedded SDK interceptor set (a new caller node,
hence a new session) makes `--calls` unary 1 KiB calls. The first call of each set includes
the `Session/Open` round trip and both sides' handshake work; the others run in the session.
Reports the median and p90 of first calls and of later calls, and their difference (the
handshake, and what else a new SDK instance does on its first call); then the handshake
alone, as the out-proxy makes it: hello, `Session/Open` round trip, finish. The connection
is opened before any timing, so no TCP or HTTP/2 setup is counted. Run with an older
checkout's Python (protocol version 1) for the first-call figures without a handshake.
"""

from __future__ import annotations

import argparse
import base64
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
if str(BENCH_DIR) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR))

import grpc  # noqa: E402
from harness.processes import free_port, spawn, stop, wait_listening, wait_serving  # noqa: E402

import fastproxy  # noqa: E402

METHOD = "/bench.v1.Handshake/Unary"


def _policy(in_port: int) -> str:
    def secret() -> str:
        return "base64:" + base64.b64encode(os.urandom(32)).decode()

    return "\n".join([
        "version: 1", "keys:",
        f'  enc: {{type: aes-256-gcm, secret: "{secret()}"}}',
        f'  caller-id: {{type: hmac-sha256, secret: "{secret()}"}}',
        f'  callee-id: {{type: hmac-sha256, secret: "{secret()}"}}',
        "services:",
        "  echo:", "    grpc_services: [bench.v1.Handshake]",
        f'    endpoints: ["127.0.0.1:{in_port}"]',
        "    identity: {key: callee-id}", "    encrypt: {key: enc}",
        "    allow:", "      - caller: caller", '        methods: ["*"]',
        "  caller:", "    identity: {key: caller-id}", ""])


def measure(address: str, policy: Path, sessions: int, calls: int
            ) -> tuple[list[float], list[float], list[float]]:
    """First calls of new SDK instances, their later calls, and the first call of a new
    session in an SDK instance that has made calls already (its session forgotten, as at
    expiry): that one differs from a later call by the handshake alone."""
    firsts: list[float] = []
    laters: list[float] = []
    renewals: list[float] = []
    payload = os.urandom(1024)
    with grpc.insecure_channel(address) as plain:
        grpc.channel_ready_future(plain).result(timeout=10)
        for _ in range(sessions):
            interceptors = fastproxy.client_interceptors(service="caller", embedded=True,
                                                         policy_file=str(policy))
            assert interceptors.wait_for_policy(5)
            method = grpc.intercept_channel(plain, *interceptors).unary_unary(METHOD)
            for index in range(calls):
                started = time.perf_counter()
                assert method(payload, timeout=5) == payload
                (firsts if index == 0 else laters).append(time.perf_counter() - started)
            interceptors.core._sessions.clear()  # the next call opens a new session
            started = time.perf_counter()
            assert method(payload, timeout=5) == payload
            renewals.append(time.perf_counter() - started)
            interceptors.close()
    return firsts, laters, renewals


def measure_handshakes(address: str, policy_text: str, count: int) -> list[float]:
    """The handshake alone, as the out-proxy makes it on an open connection: the caller's
    hello, the `Session/Open` round trip to the in-proxy (its answer included), and the
    caller's `finish`. (Protocol version 2 only.)"""
    from fastproxy.pipeline.handshake import OPEN_METHOD
    from fastproxy.pipeline.metadata import HELLO_KEY, hello_of
    from fastproxy.pipeline.node_policy import NodePolicy
    from fastproxy.policy import load_policy
    from fastproxy.policy.scope import scope_snapshot
    from fastproxy.v1 import policy_pb2

    node = NodePolicy.from_snapshot(scope_snapshot(load_policy(policy_text),
                                                   policy_pb2.ROLE_OUT, "caller"))
    destination = node.route(METHOD)
    took: list[float] = []
    with grpc.insecure_channel(address) as opened:
        grpc.channel_ready_future(opened).result(timeout=10)
        open_call = opened.unary_unary(OPEN_METHOD)
        for _ in range(count):
            started = time.perf_counter()
            handshake = node.caller.handshake(destination, time.time())
            _, rpc = open_call.with_call(b"", metadata=((HELLO_KEY, handshake.request),),
                                         timeout=5)
            handshake.finish(hello_of(rpc.trailing_metadata()), destination.verifiers,
                             time.time())
            took.append(time.perf_counter() - started)
    return took


def _ms(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return 1000 * ordered[min(int(q * len(ordered)), len(ordered) - 1)]


def _speaks_sessions() -> bool:
    try:
        import fastproxy.pipeline.handshake  # noqa: F401
    except ImportError:  # protocol version 1 (a checkout from before it, for comparison)
        return False
    return True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=200)
    parser.add_argument("--calls", type=int, default=5)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="fastproxy-handshake-"))
    upstream_port, in_port = free_port(), free_port()
    policy = work / "policy.yaml"
    policy.write_text(_policy(in_port))
    upstream = spawn("upstream", [sys.executable, str(BENCH_DIR / "harness" / "echo_upstream.py"),
                                  "--port", str(upstream_port)],
                     f"127.0.0.1:{upstream_port}", work)
    inproxy = spawn("in-proxy", [sys.executable, "-m", "proxy_svc", "--role", "in",
                                 "--service", "echo", "--listen", f"127.0.0.1:{in_port}",
                                 "--upstream", f"127.0.0.1:{upstream_port}",
                                 "--policy", str(policy)], f"127.0.0.1:{in_port}", work)
    try:
        wait_listening(upstream)
        wait_serving(inproxy)
        firsts, laters, renewals = measure(inproxy.address, policy, args.sessions, args.calls)
        alone = (measure_handshakes(inproxy.address, policy.read_text(), args.sessions)
                 if _speaks_sessions() else [])
    finally:
        stop(inproxy)
        stop(upstream)
    first, later = statistics.median(firsts), statistics.median(laters)
    print(f"sessions: {args.sessions}, calls each: {args.calls} (1 KiB unary, embedded SDK -> "
          "in-proxy -> echo upstream, one connection)")
    print(f"first call of a session: p50 {1000 * first:.3f} ms, p90 {_ms(firsts, 0.9):.3f} ms")
    print(f"later calls:             p50 {1000 * later:.3f} ms, p90 {_ms(laters, 0.9):.3f} ms")
    print(f"first minus later:       p50 {1000 * (first - later):.3f} ms")
    renewal = statistics.median(renewals)
    print(f"new session, warm SDK:   p50 {1000 * renewal:.3f} ms, p90 {_ms(renewals, 0.9):.3f} ms"
          f"; minus later calls: {1000 * (renewal - later):.3f} ms (what the handshake adds)")
    if alone:
        print(f"handshake alone:         p50 {1000 * statistics.median(alone):.3f} ms, "
              f"p90 {_ms(alone, 0.9):.3f} ms (hello, Session/Open round trip, finish)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
