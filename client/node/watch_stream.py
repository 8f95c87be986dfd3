"""One `WatchPolicy` stream as `CenterWatcher` drives it, on grpc.aio or on sync gRPC.

Both give the watcher the same asyncio face: `send` a request, `taken()` (the Center took the
hello: its headers came and the call goes on), the responses as an async iterator that ends
with the stream or raises its `grpc.RpcError`, and `close()`.

`AioWatchStream` is for hosts whose watcher runs on the host's own loop (the proxies).
`ThreadedWatchStream` is for hosts whose watcher runs on the process's background loop beside
an app's own grpc.aio loop (the SDK, the embedded server): grpc.aio on a second loop binds
both loops to its one completion-queue socket, and both then wake on every event of the app's
calls, handing each over with a thread hop (0.1-0.3 ms of CPU per app call, measured in
bench/proxyless_micro.py). On sync gRPC the stream runs on grpc's own threads instead: a
daemon thread reads it and hands each item to the watcher's loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import AsyncIterator
from typing import Any, Protocol

import grpc

from fastproxy.node.credentials import CenterCredentials
from fastproxy.v1 import center_pb2, center_pb2_grpc


class WatchStream(Protocol):
    def send(self, request: center_pb2.WatchRequest) -> None: ...
    async def taken(self) -> bool: ...
    def __aiter__(self) -> AsyncIterator[center_pb2.WatchResponse]: ...
    async def close(self) -> None: ...


class AioWatchStream:
    def __init__(self, credentials: CenterCredentials, address: str,
                 hello: center_pb2.WatchRequest) -> None:
        self._channel = credentials.aio_channel(address)
        self._outbox: asyncio.Queue[center_pb2.WatchRequest | None] = asyncio.Queue()
        self._outbox.put_nowait(hello)
        self._call = center_pb2_grpc.CenterStub(self._channel).WatchPolicy(
            self._requests(), metadata=credentials.metadata)

    async def _requests(self) -> AsyncIterator[center_pb2.WatchRequest]:
        while (request := await self._outbox.get()) is not None:
            yield request

    def send(self, request: center_pb2.WatchRequest) -> None:
        self._outbox.put_nowait(request)

    async def taken(self) -> bool:
        await self._call.initial_metadata()
        return not self._call.done()

    def __aiter__(self) -> AsyncIterator[center_pb2.WatchResponse]:
        iterator: AsyncIterator[center_pb2.WatchResponse] = self._call.__aiter__()
        return iterator

    async def close(self) -> None:
        self._call.cancel()
        # ends the request iterator, else grpc.aio's task that consumes it is left pending
        # ("Task was destroyed but it is pending!")
        self._outbox.put_nowait(None)
        await self._channel.close()


_END = object()  # the stream ended with OK


class _Taken:
    __slots__ = ("taken",)

    def __init__(self, taken: bool) -> None:
        self.taken = taken


class ThreadedWatchStream:
    def __init__(self, credentials: CenterCredentials, address: str,
                 hello: center_pb2.WatchRequest) -> None:
        self._loop = asyncio.get_running_loop()
        self._inbox: asyncio.Queue[Any] = asyncio.Queue()
        self._early: Any = None  # what came instead of the headers, kept for the iterator
        self._outbox: queue.SimpleQueue[center_pb2.WatchRequest | None] = queue.SimpleQueue()
        self._outbox.put(hello)
        self._channel = credentials.channel(address)
        self._call = center_pb2_grpc.CenterStub(self._channel).WatchPolicy(
            iter(self._outbox.get, None), metadata=credentials.metadata)
        threading.Thread(target=self._read, name="fastproxy-watch", daemon=True).start()

    def _hand(self, item: object) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
            self._loop.call_soon_threadsafe(self._inbox.put_nowait, item)

    def _read(self) -> None:
        try:
            self._call.initial_metadata()  # returns once the headers came or the call ended
            self._hand(_Taken(not self._call.done()))
            for response in self._call:
                self._hand(response)
            self._hand(_END)
        except grpc.RpcError as exc:
            self._hand(exc)

    def send(self, request: center_pb2.WatchRequest) -> None:
        self._outbox.put(request)

    async def taken(self) -> bool:
        item = await self._inbox.get()
        if isinstance(item, _Taken):
            return item.taken
        self._early = item
        return False

    def __aiter__(self) -> AsyncIterator[center_pb2.WatchResponse]:
        return self._responses()

    async def _responses(self) -> AsyncIterator[center_pb2.WatchResponse]:
        while True:
            item, self._early = (self._early or await self._inbox.get()), None
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    async def close(self) -> None:
        self._call.cancel()  # the reader thread then ends with CANCELLED
        self._outbox.put(None)  # and so does grpc's thread that sends our requests
        self._channel.close()
