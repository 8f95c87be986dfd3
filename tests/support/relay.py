"""The scaffolding of a gRPC intermediary the tests put between two nodes: a grpc.aio server
on its own event loop in a thread that takes every method as a stream and hands each call to
the subclass's `_relay`, with a channel to `target` to forward it on."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Sequence
from typing import Any, Self

import grpc

RELAY_OPTIONS = (("grpc.max_receive_message_length", 64 << 20),
                 ("grpc.max_send_message_length", 64 << 20))
# what gRPC sets itself on every call: not relayed as metadata
TRANSPORT_KEYS = ("user-agent", "content-type", "te", "grpc-accept-encoding", "grpc-encoding")
Metadata = Sequence[tuple[str, str | bytes]]


def relayable(metadata: Any) -> Metadata:
    """A call's metadata as a relay passes it on (no pseudo-headers, none of gRPC's own)."""
    return tuple((m[0], m[1]) for m in metadata or () if not m[0].startswith(":")
                 and m[0] not in TRANSPORT_KEYS)


class LoopbackRelay:
    """Started on 127.0.0.1 (`port` 0: any), its `address` known once `start` returns."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.address = ""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def start(self, port: int = 0) -> Self:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(port), self._loop).result(10)
        return self

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    async def _start(self, port: int) -> None:
        self._channel = grpc.aio.insecure_channel(self.target, options=RELAY_OPTIONS)
        self._server = grpc.aio.server(options=RELAY_OPTIONS)
        relay = self

        class Handler(grpc.GenericRpcHandler):
            def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
                async def handle(requests: AsyncIterator[bytes],
                                 context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
                    async for reply in relay._relay(details.method, requests, context):
                        yield reply
                return grpc.stream_stream_rpc_method_handler(handle)

        self._server.add_generic_rpc_handlers((Handler(),))
        bound = self._server.add_insecure_port(f"127.0.0.1:{port}")
        await self._server.start()
        self.address = f"127.0.0.1:{bound}"

    async def _stop(self) -> None:
        await self._server.stop(0)
        await self._channel.close()

    def _relay(self, method: str, requests: AsyncIterator[bytes],
               context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        raise NotImplementedError
