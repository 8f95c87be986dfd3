"""A lean benchmark upstream: a plain grpc.aio echo server of raw bytes.

    python bench/harness/echo_upstream.py --port PORT

Every method is served without a `.proto`: a path ending in `/Bidi` echoes each message of a
bidirectional stream as it arrives; any other path is unary and replies with its request. It
records nothing, so its CPU per call is the cost of grpc.aio itself. Prints
`listening 127.0.0.1:PORT` once it serves; stops on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import AsyncIterator, Sequence

import grpc

MAX_MESSAGE_BYTES = 64 * 1024 * 1024
OPTIONS = (
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
)


async def _unary(request: bytes, _context: grpc.aio.ServicerContext) -> bytes:
    return request


async def _bidi(requests: AsyncIterator[bytes],
                _context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
    async for message in requests:
        yield message


class EchoAnything(grpc.GenericRpcHandler):  # type: ignore[misc]
    """Unary echo for every method, stream echo for methods named `Bidi`."""

    _unary_handler = grpc.unary_unary_rpc_method_handler(_unary)
    _bidi_handler = grpc.stream_stream_rpc_method_handler(_bidi)

    def service(self, handler_call_details: grpc.HandlerCallDetails
                ) -> grpc.RpcMethodHandler | None:
        method: str = handler_call_details.method
        return self._bidi_handler if method.endswith("/Bidi") else self._unary_handler


async def serve(port: int) -> None:
    server = grpc.aio.server(options=OPTIONS)
    server.add_generic_rpc_handlers((EchoAnything(),))
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print(f"listening 127.0.0.1:{bound}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await server.stop(0.5)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="raw-bytes grpc.aio echo server")
    parser.add_argument("--port", type=int, default=0)
    asyncio.run(serve(parser.parse_args(argv).port))


if __name__ == "__main__":
    main()
