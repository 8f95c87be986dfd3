"""What a grpc.aio app gets back: the current attempt's call interface, with messages opened
and the callee's answer checked (embedded mode), retries made while iterating, and the SDK's
own refusals as the status."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Generator
from typing import Any

import grpc

from fastproxy.hosting.grpc_metadata import aio_metadata
from fastproxy.hosting.refusal import Refusal
from fastproxy.pipeline.metadata import Metadata
from fastproxy.pipeline.reasons import FastProxyError

from .core import Attempt, CallPlan, Refuse, SdkCore
from .messages import checked_failure
from .refusal import aio_refusal
from .request_log import AioRequestLog

StartAttempt = Callable[[Attempt], Awaitable[Any]]


class _Delegating:
    """The parts of the call interface answered by the current attempt's call, unless the
    call failed (`_refusal`: ours, or the callee's checked failure) or its answer was
    checked (`_checked`: the headers and trailers the app gets)."""

    _call: Any
    _refusal: grpc.aio.AioRpcError | None = None
    _checked: tuple[Metadata, Metadata] | None = None

    def cancel(self) -> bool:
        return bool(self._call.cancel())

    def cancelled(self) -> bool:
        return bool(self._call.cancelled())

    def done(self) -> bool:
        return self._refusal is not None or bool(self._call.done())

    def time_remaining(self) -> float | None:
        remaining: float | None = self._call.time_remaining()
        return remaining

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        self._call.add_done_callback(lambda _call: callback(self))

    async def initial_metadata(self) -> Any:
        if self._checked is not None:
            return aio_metadata(self._checked[0])
        if self._refusal is not None:
            return self._refusal.initial_metadata()
        return await self._call.initial_metadata()

    async def trailing_metadata(self) -> Any:
        if self._checked is not None:
            return aio_metadata(self._checked[1])
        if self._refusal is not None:
            return self._refusal.trailing_metadata()
        return await self._call.trailing_metadata()

    async def code(self) -> grpc.StatusCode:
        if self._refusal is not None:
            return self._refusal.code()
        code: grpc.StatusCode = await self._call.code()
        return code

    async def details(self) -> str:
        if self._refusal is not None:
            return self._refusal.details() or ""
        details: str = await self._call.details()
        return details

    async def wait_for_connection(self) -> None:
        await self._call.wait_for_connection()

    async def write(self, request: Any) -> None:
        await self._call.write(request)

    @property
    def _done_writing_flag(self) -> bool:
        # grpc.aio's intercepted stream call reads this private flag on whatever the
        # interceptor returned before each write() (grpc/aio/_interceptor.py); its own
        # wrappers delegate it to the underlying call, and so do we.
        return bool(getattr(self._call, "_done_writing_flag", False))

    async def done_writing(self) -> None:
        await self._call.done_writing()


class _Checks:
    """How an embedded attempt's answer is checked, for both call objects."""

    _core: SdkCore
    _refusal: grpc.aio.AioRpcError | None
    _checked: tuple[Metadata, Metadata] | None

    def refuse(self, refused: Refusal) -> grpc.aio.AioRpcError:
        """The SDK's own refusal becomes this call's status, and the error to raise."""
        self._refusal = aio_refusal(refused)
        return self._refusal

    def checked(self, err: grpc.aio.AioRpcError, attempt: Attempt,
                plan: CallPlan) -> grpc.aio.AioRpcError:
        """The error to raise for a failed attempt: the callee's, checked and with the
        trailers the app would get behind an in-proxy, or our refusal when it does not
        check (sidecar mode: as it came)."""
        messages = attempt.messages
        if not messages.sealed:
            return err
        try:
            initial, trailers = checked_failure(messages, err.code().value[0],
                                                err.details() or "",
                                                tuple(err.initial_metadata() or ()),
                                                tuple(err.trailing_metadata() or ()))
        except FastProxyError as refused:
            return self.refuse(self._core.refused(refused, plan, attempt))
        self._refusal = grpc.aio.AioRpcError(err.code(), aio_metadata(initial),
                                             aio_metadata(trailers), err.details())
        return self._refusal


class AioUnaryCall(_Checks, _Delegating, grpc.aio.UnaryUnaryCall, grpc.aio.StreamUnaryCall):
    """A unary-response call returned as soon as its first attempt started, so that grpc.aio
    can feed it `write()`s; awaiting it runs `finish` once (retries, opening the response,
    checking the answer) and remembers the outcome. `_call` is always the current attempt's
    call."""

    def __init__(self, call: Any, finish: Callable[[AioUnaryCall], Awaitable[Any]],
                 core: SdkCore) -> None:
        self._call = call
        self._finish = finish
        self._core = core
        self._outcome: asyncio.Future[Any] | None = None

    def __await__(self) -> Generator[Any, None, Any]:
        return self._get().__await__()

    async def _get(self) -> Any:
        """The first await runs `finish` in the awaiting task itself (no task of its own:
        one fewer per call, and cancelling the awaiting task cancels the attempt, as with a
        plain grpc.aio call); any later or concurrent await gets its outcome."""
        if self._outcome is not None:
            return await asyncio.shield(self._outcome)
        outcome = self._outcome = asyncio.get_running_loop().create_future()
        try:
            result = await self._finish(self)
        except asyncio.CancelledError:
            outcome.cancel()
            raise
        except BaseException as error:
            outcome.set_exception(error)
            outcome.exception()  # retrieved: raised here, so asyncio need not report it
            raise
        outcome.set_result(result)
        return result

    async def opened(self, raw: Any, attempt: Attempt, plan: CallPlan) -> Any:
        """The response as the app gets it, once the answer checked."""
        messages = attempt.messages
        if not messages.sealed:
            return raw
        try:
            initial = messages.head(tuple(await self._call.initial_metadata() or ()))
            opened = messages.response(raw)
            trailers = messages.end(0, "", tuple(await self._call.trailing_metadata() or ()))
        except FastProxyError as refused:
            raise self.refuse(self._core.refused(refused, plan, attempt)) from None
        self._checked = (initial, trailers)
        return opened


class AioStreamCall(_Checks, _Delegating, grpc.aio.UnaryStreamCall, grpc.aio.StreamStreamCall):
    """A response stream: iteration opens each message, checks the end (embedded mode)
    and, before the first message, retries an attempt the policy allows (or whose session
    the callee lost)."""

    def __init__(self, core: SdkCore, plan: CallPlan, start: StartAttempt, call: Any,
                 attempt: Attempt, next_attempt: Callable[[], Awaitable[Attempt]],
                 requests: AioRequestLog | None = None) -> None:
        self._core = core
        self._plan = plan
        self._start = start
        self._next_attempt = next_attempt
        self._call = call
        self._attempt = attempt
        self._requests = requests
        self._responded = False
        self._cancelled = False
        self._initial: Metadata | None = None
        self._responses = self._iterate()

    def cancel(self) -> bool:
        self._cancelled = True
        return super().cancel()

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._responses

    async def read(self) -> Any:
        try:
            return await self._responses.__anext__()
        except StopAsyncIteration:
            return grpc.aio.EOF

    async def _iterate(self) -> AsyncIterator[Any]:
        while True:
            try:
                async for raw in self._call:
                    if not self._responded:
                        self._responded = True
                        if self._requests is not None:
                            self._requests.stop_recording()
                    yield await self._open(raw)
                await self._ended()
                return
            except grpc.aio.AioRpcError as err:
                if err is self._refusal:
                    raise
                await self._after_failure(err)

    async def _head(self) -> None:
        if self._initial is None:
            self._initial = self._attempt.messages.head(
                tuple(await self._call.initial_metadata() or ()))

    async def _open(self, raw: Any) -> Any:
        try:
            await self._head()
            return self._attempt.messages.response(raw)
        except FastProxyError as refused:
            raise self._refused(refused) from None

    async def _ended(self) -> None:
        messages = self._attempt.messages
        if not messages.sealed:
            return
        try:
            await self._head()
            trailers = messages.end(0, "", tuple(await self._call.trailing_metadata() or ()))
        except FastProxyError as refused:
            raise self._refused(refused) from None
        assert self._initial is not None
        self._checked = (self._initial, trailers)

    def _refused(self, refused: FastProxyError) -> grpc.aio.AioRpcError:
        self._call.cancel()
        return self.refuse(self._core.refused(refused, self._plan, self._attempt))

    async def _after_failure(self, err: grpc.aio.AioRpcError) -> None:
        decision = self._core.after_failure(
            self._plan, err.code(), err.trailing_metadata(), responded=self._responded,
            requests=self._requests, no_retry=self._cancelled)
        if isinstance(decision, Refuse):
            raise self.refuse(self._core.refused(decision.error, self._plan,
                                                 self._attempt)) from None
        if decision is None:
            raise self.checked(err, self._attempt, self._plan) from None
        await asyncio.sleep(decision.delay)
        self._attempt = await self._next_attempt()
        self._initial = None
        self._call = await self._start(self._attempt)
