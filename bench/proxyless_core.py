"""The proxyless path's own work per call, without gRPC: what the SDK in embedded mode and
the embedded server compute for one 1 KiB unary call, step by step, in one thread.

    python bench/proxyless_core.py [--calls 5000] [--rounds 5] [--code DIR]

Builds both sides from one policy file as an app does (`aio_client_interceptors(...,
embedded=True)` and `aio_server_interceptors(...)`), opens a session once, then per call:
the caller's plan, route and CALL record; sealing the request; the callee's admission (the
CALL record, session, replay window, allow rules, rate limit); its view of the metadata and
opening the request; sealing the response and the status; the caller opening and checking
the answer. Prints thread CPU microseconds per call of each step (the median of `--rounds`)
and in total. `--code DIR` imports `fastproxy` from DIR (a copy of `client/` at another
commit), for before/after figures.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
if str(BENCH_DIR) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR))

import proxyless_micro  # noqa: E402

STEPS = ("client: plan, route, CALL record", "client: metadata, seal the request",
         "server: admit (CALL record, session, replay, allow, rate limit)",
         "server: app's metadata, open the request", "server: seal the response and status",
         "client: open and check the answer")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--code", default="")
    args = parser.parse_args(argv)
    if args.code:
        proxyless_micro.use_code(args.code)
    import grpc

    import fastproxy
    from fastproxy.server import aio_server_interceptors
    from fastproxy.server.sealed_call import SealedCall, aio_call_details, app_metadata

    directory = tempfile.mkdtemp(prefix="fastproxy-core-")
    policy = os.path.join(directory, "policy.yaml")
    Path(policy).write_text(proxyless_micro.policy_yaml(1))
    server_side = aio_server_interceptors(service=proxyless_micro.SERVICE, policy_file=policy)
    assert server_side[0].policy.wait_loaded(30)
    client_side = fastproxy.aio_client_interceptors(service=proxyless_micro.CALLER,
                                                    policy_file=policy, embedded=True)
    assert client_side.wait_for_policy(30)
    core, callee = client_side.core, server_side[0].policy
    method = proxyless_micro.METHOD
    plan = core.plan(method, None, ())
    handshake = core.handshake_needed(plan)
    assert handshake is not None
    core.session_opened(plan, handshake,
                        callee.answer_hello((("fastproxy-hello-bin", handshake.request),)))
    payload = os.urandom(args.size)
    clock = time.thread_time

    def one(spent: list[float]) -> None:
        t0 = clock()
        plan = core.plan(method, None, ())
        assert core.handshake_needed(plan) is None
        attempt = core.next_attempt(plan, True)
        t1 = clock()
        metadata = grpc.aio.Metadata(*attempt.metadata)
        sealed = attempt.messages.request(payload)
        t2 = clock()
        received = tuple(metadata)
        admitted = callee.admit(method, received)
        t3 = clock()
        seen = app_metadata(received, admitted.restored)
        aio_call_details(method, seen)
        call = SealedCall(admitted, False, seen)
        request = call.deserializer(None)(sealed)
        t4 = clock()
        response = call.seal_unary(request, None)
        trailers = call.end()
        t5 = clock()
        messages = attempt.messages
        messages.head(())
        assert messages.response(response) == payload
        messages.end(0, "", trailers)
        t6 = clock()
        for index, (start, end) in enumerate(zip((t0, t1, t2, t3, t4, t5),
                                                 (t1, t2, t3, t4, t5, t6), strict=True)):
            spent[index] += end - start

    for _ in range(200):
        one([0.0] * len(STEPS))
    rounds: list[list[float]] = []
    for _ in range(args.rounds):
        spent = [0.0] * len(STEPS)
        for _ in range(args.calls):
            one(spent)
        rounds.append([value / args.calls * 1e6 for value in spent])
    print(f"fastproxy from {os.path.dirname(fastproxy.__file__)}; {args.size} B unary; "
          f"thread CPU us per call, median of {args.rounds} x {args.calls} calls")
    for index, step in enumerate(STEPS):
        print(f"  {statistics.median(r[index] for r in rounds):7.1f}  {step}")
    print(f"  {statistics.median(sum(r) for r in rounds):7.1f}  total")
    client_side.close()
    callee.stop()


if __name__ == "__main__":
    main()
