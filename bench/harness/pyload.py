"""The Python grpc.aio load client, run as its own process by the harness.

    python bench/harness/pyload.py --target HOST:PORT --method /svc/Unary --size N
        --mode check|saturate|rate|single|bidi [--seconds S] [--concurrency C] [--rate R]
        [--embedded-service NAME --center HOST:PORT]

It connects and warms up (calls not counted), prints `ready`, waits for one line on stdin
(the harness reads every server's CPU counters in between), runs the measured load, and
prints one JSON line: calls, errors, wrong replies, elapsed seconds, throughput, latency
percentiles in ms, and its own CPU seconds over the measured load (`cpu_s`: user+system of all
its threads, `time.process_time`). Every reply is compared with the request it echoes.

With `--embedded-service NAME --center ADDR` the channel carries the SDK's interceptors in
embedded mode (`fastproxy.aio_client_interceptors(service=NAME, center=ADDR,
embedded=True)`): the client itself routes, signs, seals each request and opens each
response, and `--target` is the callee's in-proxy. The first policy is awaited before the
warm-up.

- check: a few unary calls and one bidi stream of 3 messages, each reply compared;
- saturate: C workers making unary calls back to back for S seconds;
- rate: an open loop of R calls/s for S seconds; latency counted from each call's planned
  start, so a stalled server cannot hide its queue (no coordinated omission);
- single: one call in flight for S seconds;
- bidi: C bidirectional streams, each sending a message and awaiting its echo, for S seconds
  (figures count messages, not streams).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import sys
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc

MAX_MESSAGE_BYTES = 64 * 1024 * 1024
OPTIONS = (
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
)
ALPHABET = b"abcdefghijklmnopqrstuvwxyz0123456789 ,:{}\"\n"
WARM_UP_CALLS = 20


def payload(size: int) -> bytes:
    """Text-like bytes (about 5.4 bits of entropy per byte), the same for every setup, so
    compression has something to do, as it would with JSON or protobuf strings."""
    return bytes(random.Random(size).choices(ALPHABET, k=size))


@dataclass
class Tally:
    calls: int = 0
    errors: int = 0
    wrong: int = 0
    latencies_s: list[float] = field(default_factory=list)
    first_error: str = ""

    def error(self, exc: BaseException) -> None:
        self.errors += 1
        if not self.first_error:
            self.first_error = f"{type(exc).__name__}: {exc}"[:300]


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of an already sorted sequence (0 for none)."""
    if not sorted_values:
        return 0.0
    rank = max(1, min(len(sorted_values), math.ceil(fraction * len(sorted_values))))
    return sorted_values[rank - 1]


class Load:
    def __init__(self, target: str, method: str, size: int,
                 interceptors: Sequence[grpc.aio.ClientInterceptor] | None = None) -> None:
        self.channel = grpc.aio.insecure_channel(target, options=OPTIONS,
                                                 interceptors=interceptors)
        self.unary = self.channel.unary_unary(method)
        self.bidi_method = self.channel.stream_stream(method.rsplit("/", 1)[0] + "/Bidi")
        self.request = payload(size)

    async def one_unary(self, tally: Tally, planned: float | None = None) -> None:
        start = time.perf_counter() if planned is None else planned
        try:
            reply = await self.unary(self.request, timeout=30)
        except grpc.aio.AioRpcError as exc:
            tally.error(exc)
            return
        tally.latencies_s.append(time.perf_counter() - start)
        tally.calls += 1
        if reply != self.request:
            tally.wrong += 1

    async def warm_up(self, mode: str) -> None:
        tally = Tally()
        for _ in range(3 if len(self.request) > 100_000 else WARM_UP_CALLS):
            if mode == "bidi":
                await self.one_stream(tally, 2)
            else:
                await self.one_unary(tally)
        if tally.errors:
            raise SystemExit(f"warm-up failed: {tally.first_error}")

    async def one_stream(self, tally: Tally, messages: int | None,
                         until: float | None = None) -> None:
        # Requests go through an iterator, not `call.write()`: the SDK's aio interceptors
        # return a call without the `_done_writing_flag` grpc.aio's write() reads (bug
        # reported), and one API style for every setup keeps the client's work the same.
        outbox: asyncio.Queue[bytes | None] = asyncio.Queue()

        async def requests() -> AsyncIterator[bytes]:
            while (message := await outbox.get()) is not None:
                yield message

        call = self.bidi_method(requests(), timeout=300)
        try:
            sent = 0
            while (messages is None or sent < messages) and (
                    until is None or time.perf_counter() < until):
                start = time.perf_counter()
                outbox.put_nowait(self.request)
                reply = await call.read()
                sent += 1
                if reply is grpc.aio.EOF:
                    tally.wrong += 1
                    break
                tally.latencies_s.append(time.perf_counter() - start)
                tally.calls += 1
                if reply != self.request:
                    tally.wrong += 1
            outbox.put_nowait(None)
            if await call.read() is not grpc.aio.EOF:
                tally.wrong += 1
            if await call.code() != grpc.StatusCode.OK:
                tally.errors += 1
        except grpc.aio.AioRpcError as exc:
            tally.error(exc)
        except asyncio.CancelledError:
            call.cancel()
            raise

    async def check(self, tally: Tally) -> None:
        for _ in range(3):
            await self.one_unary(tally)
        await self.one_stream(tally, 3)

    async def saturate(self, tally: Tally, seconds: float, concurrency: int) -> None:
        until = time.perf_counter() + seconds

        async def worker() -> None:
            while time.perf_counter() < until:
                await self.one_unary(tally)

        await asyncio.gather(*(worker() for _ in range(concurrency)))

    async def at_rate(self, tally: Tally, seconds: float, rate: float) -> None:
        start = time.perf_counter()
        tasks = []
        for index in range(int(seconds * rate)):
            planned = start + index / rate
            delay = planned - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(self.one_unary(tally, planned)))
        await asyncio.gather(*tasks)

    async def single(self, tally: Tally, seconds: float) -> None:
        until = time.perf_counter() + seconds
        while time.perf_counter() < until:
            await self.one_unary(tally)

    async def bidi(self, tally: Tally, seconds: float, concurrency: int) -> None:
        until = time.perf_counter() + seconds
        await asyncio.gather(*(self.one_stream(tally, None, until) for _ in range(concurrency)))


def embedded_interceptors(service: str, center: str) -> Any:
    """The SDK's aio interceptors in embedded mode, once the first policy is in."""
    import fastproxy

    made = fastproxy.aio_client_interceptors(service=service, center=center, embedded=True)
    if not made.wait_for_policy(30.0):
        made.close()
        raise SystemExit(f"embedded SDK: no policy from {center} within 30 s")
    return made


async def run(args: argparse.Namespace) -> dict[str, object]:
    interceptors = (embedded_interceptors(args.embedded_service, args.center)
                    if args.embedded_service else None)
    load = Load(args.target, args.method, args.size, interceptors)
    tally = Tally()
    try:
        if args.mode != "check":
            await load.warm_up(args.mode)
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        cpu_started = time.process_time()
        started = time.perf_counter()
        if args.mode == "check":
            await load.check(tally)
        elif args.mode == "saturate":
            await load.saturate(tally, args.seconds, args.concurrency)
        elif args.mode == "rate":
            await load.at_rate(tally, args.seconds, args.rate)
        elif args.mode == "single":
            await load.single(tally, args.seconds)
        else:
            await load.bidi(tally, args.seconds, args.concurrency)
        elapsed = time.perf_counter() - started
        cpu_s = time.process_time() - cpu_started
    finally:
        await load.channel.close()
        if interceptors is not None:
            interceptors.close()
    latencies = sorted(tally.latencies_s)
    return {
        "calls": tally.calls, "errors": tally.errors, "wrong": tally.wrong,
        "first_error": tally.first_error, "elapsed_s": elapsed,
        "throughput": tally.calls / elapsed if elapsed > 0 else 0.0,
        "p50_ms": percentile(latencies, 0.50) * 1000,
        "p90_ms": percentile(latencies, 0.90) * 1000,
        "p99_ms": percentile(latencies, 0.99) * 1000,
        "cpu_s": cpu_s,
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="grpc.aio load client for the harness")
    parser.add_argument("--target", required=True)
    parser.add_argument("--method", required=True, help="unary path; bidi uses SVC/Bidi")
    parser.add_argument("--size", type=int, required=True)
    parser.add_argument("--mode", required=True,
                        choices=["check", "saturate", "rate", "single", "bidi"])
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--embedded-service", default="",
                        help="caller service of the SDK in embedded mode (needs --center)")
    parser.add_argument("--center", default="", help="the Center, for --embedded-service")
    result = asyncio.run(run(parser.parse_args(argv)))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
