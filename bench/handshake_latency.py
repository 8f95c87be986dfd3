"""What a new session costs the first call: protocol version 2's handshake, measured.

    python bench/handshake_latency.py [--sessions 200] [--calls 5]

Starts the echo upstream and an in-proxy on loopback (policy file, no Center), then, on one
open gRPC connection, `--sessions` times over: a new embedded SDK interceptor set (a new
caller node) makes `--calls` unary 1 KiB calls, forgets its session (as at expiry) and makes
one more. Every other instance is handed the previous one's open session before its first
call. Reports medians and p90s, and how much slower than a later call each of these is:
- a new session's call in a warm SDK: the handshake, and nothing else (the issue's "what a
  new session's handshake adds to the first call");
- a new SDK instance's first call: the handshake and the instance's own first-call costs;
- a new instance's first call handed an open session: those costs alone;
then the handshake alone, as the out-proxy makes it: hello, `Session/Open` round trip,
finish. The connection is opened before any timing, so no TCP or HTTP/2 setup is counted.
Runs with an older checkout's Python too (protocol version 1: first calls only).
"""

from __future__ import annotations

import argparse
import base64
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
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


@dataclass
class Timings:
    firsts: list[float] = field(default_factory=list)  # a new SDK instance's first call
    handed: list[float] = field(default_factory=list)  # the same, given an open session
    laters: list[float] = field(default_factory=list)  # calls in an open session
    renewals: list[float] = field(default_factory=list)  # a new session, warm SDK


def measure(address: str, policy: Path, sessions: int, calls: int) -> Timings:
    """Every other new SDK instance makes its first call with a handshake (`firsts`); the
    others are handed the previous instance's open session first (`handed`: what a new
    instance's first call costs without a handshake). After `calls` calls, each instance
    forgets its session (as at expiry) and makes one more call (`renewals`): that call
    differs from a later call by the handshake alone."""
    timings = Timings()
    payload = os.urandom(1024)
    handed: dict[str, object] = {}
    with grpc.insecure_channel(address) as plain:
        grpc.channel_ready_future(plain).result(timeout=10)
        for number in range(sessions):
            interceptors = fastproxy.client_interceptors(service="caller", embedded=True,
                                                         policy_file=str(policy))
            assert interceptors.wait_for_policy(5)
            method = grpc.intercept_channel(plain, *interceptors).unary_unary(METHOD)
            # (the SDK's sessions by destination; none in protocol version 1)
            held: dict[str, object] | None = getattr(interceptors.core, "_sessions", None)
            first = timings.firsts
            if number % 2 and handed and held is not None:
                held.update(handed)
                first = timings.handed
            for index in range(calls):
                started = time.perf_counter()
                assert method(payload, timeout=5) == payload
                (first if index == 0 else timings.laters).append(time.perf_counter() - started)
            if held is not None:
                handed = dict(held)
                held.clear()  # the next call opens a new session
                started = time.perf_counter()
                assert method(payload, timeout=5) == payload
                timings.renewals.append(time.perf_counter() - started)
            interceptors.close()
    return timings


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
        timings = measure(inproxy.address, policy, args.sessions, args.calls)
        alone = (measure_handshakes(inproxy.address, policy.read_text(), args.sessions)
                 if _speaks_sessions() else [])
    finally:
        stop(inproxy)
        stop(upstream)
    later = statistics.median(timings.laters)
    print(f"SDK instances: {args.sessions}, calls each: {args.calls} (1 KiB unary, embedded "
          "SDK -> in-proxy -> echo upstream, one connection)")

    def line(name: str, values: list[float], note: str = "") -> None:
        if values:
            median = statistics.median(values)
            print(f"{name:<34} p50 {1000 * median:.3f} ms, p90 {_ms(values, 0.9):.3f} ms"
                  f"{'' if values is timings.laters else f'; {1000 * (median - later):+.3f} ms'}"
                  f"{note}")

    line("later calls in a session:", timings.laters)
    line("a new session's call, warm SDK:", timings.renewals, " (the handshake)")
    line("a new SDK instance's first call:", timings.firsts,
         " (the handshake and the instance's own first call)")
    line("the same, handed an open session:", timings.handed, " (the instance's own)")
    if alone:
        print(f"{'handshake alone:':<34} p50 {1000 * statistics.median(alone):.3f} ms, "
              f"p90 {_ms(alone, 0.9):.3f} ms (hello, Session/Open round trip, finish)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
