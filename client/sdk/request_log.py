"""The app's request stream, kept so that a retried attempt can send it again.

Each attempt reads the stream through its own iterator: first what earlier attempts already
took (replayed, sealed anew for this attempt), then new messages from the app. Recording
stops once a response arrived (no retry is possible any more) or the log grows past
`MAX_REPLAYED_MESSAGES`; from then on messages only flow through. A pipeline error while
sealing is kept for the call to report (grpc would only cancel the call).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator
from typing import Any

from fastproxy.pipeline.reasons import FastProxyError

MAX_REPLAYED_MESSAGES = 1024
Transform = Callable[[Any], Any]
Finish = Callable[[], Any]


class _Log:
    def __init__(self) -> None:
        self.sent: list[Any] = []
        self.taken = 0
        self.recording = True
        self.error: FastProxyError | None = None

    def stop_recording(self) -> None:
        self.recording = False
        self.sent = []

    @property
    def replayable(self) -> bool:
        return self.recording

    def _keep(self, item: Any) -> None:
        self.taken += 1
        if self.recording:
            if len(self.sent) >= MAX_REPLAYED_MESSAGES:
                self.stop_recording()
            else:
                self.sent.append(item)

    def _transform(self, transform: Transform, item: Any) -> Any:
        try:
            return transform(item)
        except FastProxyError as err:
            self.error = err
            raise

    def _finish(self, finish: Finish | None) -> Any:
        if finish is None:
            return None
        try:
            return finish()
        except FastProxyError as err:
            self.error = err
            raise


_END = object()


class RequestLog(_Log):
    """For sync calls: the request iterator runs on grpc's sending thread."""

    def __init__(self, source: Iterable[Any]) -> None:
        super().__init__()
        self._source = iter(source)
        self._done = False
        self._lock = threading.Lock()

    def attempt(self, transform: Transform, finish: Finish | None = None) -> Iterator[Any]:
        """The attempt's requests; then what `finish` makes of the end (the END record)."""
        index = 0
        while True:
            with self._lock:
                item = self._item(index)
            if item is _END:
                break
            index += 1
            yield self._transform(transform, item)
        last = self._finish(finish)
        if last is not None:
            yield last

    def _item(self, index: int) -> Any:
        if index < self.taken:
            return self.sent[index] if self.recording else _END
        if self._done:
            return _END
        item = next(self._source, _END)
        if item is _END:
            self._done = True
            return _END
        self._keep(item)
        return item


class AioRequestLog(_Log):
    """For grpc.aio calls; the app's requests may be a sync or an async iterable."""

    def __init__(self, source: AsyncIterable[Any] | Iterable[Any]) -> None:
        super().__init__()
        self._async: AsyncIterator[Any] | None = None
        self._sync: Iterator[Any] | None = None
        if hasattr(source, "__aiter__"):
            self._async = source.__aiter__()
        else:
            assert isinstance(source, Iterable)
            self._sync = iter(source)
        self._done = False
        self._lock = asyncio.Lock()

    async def attempt(self, transform: Transform, finish: Finish | None = None
                      ) -> AsyncIterator[Any]:
        index = 0
        while True:
            async with self._lock:
                item = await self._item(index)
            if item is _END:
                break
            index += 1
            yield self._transform(transform, item)
        last = self._finish(finish)
        if last is not None:
            yield last

    async def _item(self, index: int) -> Any:
        if index < self.taken:
            return self.sent[index] if self.recording else _END
        if self._done:
            return _END
        if self._async is not None:
            try:
                item = await self._async.__anext__()
            except StopAsyncIteration:
                item = _END
        else:
            assert self._sync is not None
            item = next(self._sync, _END)
        if item is _END:
            self._done = True
            return _END
        self._keep(item)
        return item
