"""What grpc.aio itself costs per call, by call and handler shape, under one or more Pythons
(one per grpcio version, each in a scratch venv), run interleaved.

    python bench/grpc_shapes.py [--python 1.75.1=/tmp/venv-175/bin/python ...]
                                [--calls 4000] [--rounds 3] [--json FILE]

A grpc.aio echo server (generic handler: `/s/U` unary, `/s/G` stream-stream async generator,
`/s/C` stream-stream with read()/write(), `/s/US` unary-stream) and a client making 1 KiB calls,
32 in flight, both on uvloop (as the proxies run), each its own process. Shapes: `uu` a
unary_unary call to `/s/U` (the proxies' fast path), `us` a unary_stream call to `/s/G` (the
single-request path: kind-agnostic on both sides), `ssit` and `ssw` stream_stream calls (the
stream path). Figures: the client's CPU per call (`time.process_time` of its process over the
measured calls) and the server's (its `getrusage` over the same window), medians with
min-max over the rounds. Used for issue 15's grpcio version comparison (grpc/grpc#43092)
and the handler-shape costs in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import grpc

MESSAGE = b"x" * 1024
IN_FLIGHT = 32
SHAPES = {"uu": "/s/U", "us": "/s/G", "ssit": "/s/G", "ssw": "/s/C"}


async def _unary(request: bytes, _context: Any) -> bytes:
    return request


async def _generator(requests: AsyncIterator[bytes], _context: Any) -> AsyncIterator[bytes]:
    async for request in requests:
        yield request


async def _reader_writer(_requests: Any, context: Any) -> None:
    while (request := await context.read()) is not grpc.aio.EOF:
        await context.write(request)


async def _unary_stream(request: bytes, _context: Any) -> AsyncIterator[bytes]:
    yield request


class _Handler(grpc.GenericRpcHandler):  # type: ignore[misc]
    handlers: ClassVar[dict[str, grpc.RpcMethodHandler]] = {
        "/s/U": grpc.unary_unary_rpc_method_handler(_unary),
        "/s/G": grpc.stream_stream_rpc_method_handler(_generator),
        "/s/C": grpc.stream_stream_rpc_method_handler(_reader_writer),
        "/s/US": grpc.unary_stream_rpc_method_handler(_unary_stream),
    }

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        return self.handlers.get(details.method)


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _serve(port: int) -> None:
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((_Handler(),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print("ready", flush=True)
    loop = asyncio.get_running_loop()
    while await loop.run_in_executor(None, sys.stdin.readline):
        print(f"{_cpu():.6f}", flush=True)


async def _load(port: int, shape: str, calls: int) -> tuple[float, float]:
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    method = SHAPES[shape]

    async def one() -> None:
        if shape == "uu":
            reply = await channel.unary_unary(method)(MESSAGE)
        elif shape == "us":
            reply = b"".join([r async for r in channel.unary_stream(method)(MESSAGE)])
        elif shape == "ssit":
            reply = b"".join([r async for r in channel.stream_stream(method)(iter((MESSAGE,)))])
        else:
            call = channel.stream_stream(method)()
            await call.write(MESSAGE)
            await call.done_writing()
            reply = b"".join([r async for r in call])
        assert reply == MESSAGE

    async def worker(count: int) -> None:
        for _ in range(count):
            await one()

    await asyncio.gather(*(worker(20) for _ in range(IN_FLIGHT)))
    started, wall = _cpu(), time.perf_counter()
    await asyncio.gather(*(worker(calls // IN_FLIGHT) for _ in range(IN_FLIGHT)))
    return (_cpu() - started) / calls * 1000, calls / (time.perf_counter() - wall)


def _run(main: Any) -> Any:
    import uvloop

    return uvloop.run(main)


def _measure(python: str, port: int, calls: int) -> dict[str, tuple[float, float, float]]:
    here = str(Path(__file__).resolve())
    server = subprocess.Popen([python, here, "--serve", str(port)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    assert server.stdin is not None and server.stdout is not None
    assert server.stdout.readline().strip() == "ready"
    out: dict[str, tuple[float, float, float]] = {}

    def server_cpu() -> float:
        assert server.stdin is not None and server.stdout is not None
        server.stdin.write("x\n")
        server.stdin.flush()
        return float(server.stdout.readline())

    try:
        for shape in ("uu", "us"):
            before = server_cpu()
            done = subprocess.run([python, here, "--client", str(port), shape, str(calls)],
                                  capture_output=True, text=True, check=True)
            server_ms = (server_cpu() - before) / (calls + 20 * IN_FLIGHT) * 1000
            client_ms, rate = map(float, done.stdout.split())
            out[shape] = (client_ms, server_ms, rate)
    finally:
        server.stdin.close()
        server.wait(10)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--python", action="append", default=[],
                        help="LABEL=PATH of a Python with another grpcio (repeatable); "
                             "default: this one")
    parser.add_argument("--calls", type=int, default=4000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--client", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        _run(_serve(args.serve))
        return 0
    if args.client:
        port, shape, calls = args.client
        print(*_run(_load(int(port), shape, int(calls))))
        return 0
    pythons = dict(entry.split("=", 1) for entry in args.python) or {
        grpc.__version__: sys.executable}
    figures: dict[str, dict[str, list[tuple[float, float, float]]]] = {}
    for round_ in range(args.rounds):  # interleaved: every version once per round
        for index, (label, python) in enumerate(pythons.items()):
            port = 24100 + 10 * round_ + index
            for shape, values in _measure(python, port, args.calls).items():
                figures.setdefault(label, {}).setdefault(shape, []).append(values)
    for label, shapes in figures.items():
        for shape, runs in shapes.items():
            client, server = [r[0] for r in runs], [r[1] for r in runs]
            print(f"grpcio {label} {shape}: client {statistics.median(client):.3f} "
                  f"({min(client):.3f}-{max(client):.3f}) ms/call, server "
                  f"{statistics.median(server):.3f} ({min(server):.3f}-{max(server):.3f})")
    if args.json:
        args.json.write_text(json.dumps({"load_average": os.getloadavg(), "calls": args.calls,
                                         "figures": figures}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
