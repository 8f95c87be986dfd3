"""Interceptors for grpc.aio channels (`interceptors=`): the twin of `sync_interceptors`,
driving the same `SdkCore`; only waiting and sleeping are asynchronous here."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterable, Awaitable, Callable, Iterable
from typing import Any

import grpc

from fastproxy.pipeline.handshake import OPEN_METHOD
from fastproxy.pipeline.metadata import HELLO_KEY
from fastproxy.pipeline.reasons import FastProxyError

from .aio_call_objects import AioStreamCall, AioUnaryCall
from .core import Attempt, CallPlan, Refuse, SdkCore
from .refusal import aio_refusal
from .request_log import AioRequestLog

Continuation = Callable[[grpc.aio.ClientCallDetails, Any], Awaitable[Any]]
POLICY_POLL_S = 0.01


def _details_for(details: grpc.aio.ClientCallDetails, attempt: Attempt
                 ) -> grpc.aio.ClientCallDetails:
    return details._replace(timeout=attempt.timeout,
                            metadata=grpc.aio.Metadata(*attempt.metadata))


class _AioInterceptor:
    """`single`: the method takes one request; `streams_responses`: it answers a stream."""

    single = False
    streams_responses = False

    def __init__(self, core: SdkCore) -> None:
        self._core = core

    async def _attempt(self, continuation: Continuation, details: grpc.aio.ClientCallDetails,
                       plan: CallPlan, empty: Callable[[], Any]) -> Attempt:
        """The next attempt; in embedded mode, a session with the callee first, opened
        through the app's own channel when there is none. Raises the SDK's refusal."""
        core = self._core
        try:
            handshake = core.handshake_needed(plan)
            if handshake is not None:
                hello = details._replace(
                    method=OPEN_METHOD.encode() if isinstance(details.method, bytes)
                    else OPEN_METHOD, timeout=core.handshake_timeout(plan),
                    metadata=grpc.aio.Metadata((HELLO_KEY, handshake.request)))
                call = await continuation(hello, empty())
                # the next handshake's key, made while this one waits for its answer
                asyncio.get_running_loop().call_soon(core.make_spare_key, plan)
                try:
                    if self.streams_responses:
                        async for _ in call:
                            pass
                    else:
                        await call
                except grpc.aio.AioRpcError as failed:
                    raise core.handshake_failed(plan, failed.code(), failed.details()) from None
                core.session_opened(plan, handshake, tuple(await call.trailing_metadata()))
            return core.next_attempt(plan, self.single)
        except FastProxyError as refused:
            raise aio_refusal(core.refused(refused, plan)) from None

    async def _begin(self, continuation: Continuation, details: grpc.aio.ClientCallDetails,
                     empty: Callable[[], Any]) -> tuple[CallPlan, Attempt]:
        core = self._core
        metadata = tuple(details.metadata) if details.metadata is not None else ()
        plan = core.plan(details.method, details.timeout, metadata)
        try:
            if core.needs_policy():
                waited = core.policy_wait_s(plan)
                until = time.monotonic() + waited
                while core.needs_policy():
                    if time.monotonic() >= until:
                        raise core.no_policy(waited)
                    await asyncio.sleep(POLICY_POLL_S)
        except FastProxyError as refused:
            raise aio_refusal(core.refused(refused, plan)) from None
        return plan, await self._attempt(continuation, details, plan, empty)

    async def _unary_response(self, continuation: Continuation,
                              details: grpc.aio.ClientCallDetails,
                              request_for: Callable[[Attempt], Any], empty: Callable[[], Any],
                              requests: AioRequestLog | None) -> Any:
        """Starts the first attempt and returns at once (grpc.aio feeds `write()`s through
        the request iterator only once the interceptor returned); awaiting the returned call
        retries what the policy allows (or what a lost session needs), opens the response
        and checks the answer."""
        core = self._core
        plan, attempt = await self._begin(continuation, details, empty)
        first = await continuation(_details_for(details, attempt), request_for(attempt))
        retryable = core.may_retry(plan) and (requests is None or requests.replayable)
        if not core.config.embedded and not retryable:
            return first

        async def finish(unary: AioUnaryCall) -> Any:
            nonlocal attempt
            while True:
                try:
                    raw = await unary._call
                except grpc.aio.AioRpcError as err:
                    decision = core.after_failure(plan, err.code(), err.trailing_metadata(),
                                                  responded=False, requests=requests)
                    if isinstance(decision, Refuse):
                        raise unary.refuse(core.refused(decision.error, plan, attempt)) from None
                    if decision is None:
                        raise unary.checked(err, attempt, plan) from None
                    await asyncio.sleep(decision.delay)
                    attempt = await self._attempt(continuation, details, plan, empty)
                    unary._call = await continuation(_details_for(details, attempt),
                                                     request_for(attempt))
                    continue
                return await unary.opened(raw, attempt, plan)

        return AioUnaryCall(first, finish, core)

    async def _stream_response(self, continuation: Continuation,
                               details: grpc.aio.ClientCallDetails,
                               request_for: Callable[[Attempt], Any], empty: Callable[[], Any],
                               requests: AioRequestLog | None) -> Any:
        plan, attempt = await self._begin(continuation, details, empty)

        async def start(next_attempt: Attempt) -> Any:
            return await continuation(_details_for(details, next_attempt),
                                      request_for(next_attempt))

        async def next_attempt() -> Attempt:
            return await self._attempt(continuation, details, plan, empty)

        call = await start(attempt)
        return AioStreamCall(self._core, plan, start, call, attempt, next_attempt, requests)


def _empty_like(request: Any) -> Callable[[], Any]:
    """The request a handshake sends through a unary-request stub: an empty message of the
    app's class (nothing of the app's request travels)."""
    return lambda: b"" if isinstance(request, bytes) else type(request)()


async def _no_requests() -> Any:
    return
    yield  # pragma: no cover - makes this an async generator with no item


class AioUnaryUnaryInterceptor(_AioInterceptor, grpc.aio.UnaryUnaryClientInterceptor):
    single = True

    async def intercept_unary_unary(self, continuation: Continuation,
                                    client_call_details: grpc.aio.ClientCallDetails,
                                    request: Any) -> Any:
        return await self._unary_response(
            continuation, client_call_details,
            lambda attempt: attempt.messages.request(request), _empty_like(request), None)


class AioUnaryStreamInterceptor(_AioInterceptor, grpc.aio.UnaryStreamClientInterceptor):
    single = True
    streams_responses = True

    async def intercept_unary_stream(self, continuation: Continuation,
                                     client_call_details: grpc.aio.ClientCallDetails,
                                     request: Any) -> Any:
        return await self._stream_response(
            continuation, client_call_details,
            lambda attempt: attempt.messages.request(request), _empty_like(request), None)


class AioStreamUnaryInterceptor(_AioInterceptor, grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(self, continuation: Continuation,
                                     client_call_details: grpc.aio.ClientCallDetails,
                                     request_iterator: AsyncIterable[Any] | Iterable[Any]
                                     ) -> Any:
        requests = AioRequestLog(request_iterator)
        return await self._unary_response(
            continuation, client_call_details,
            lambda attempt: requests.attempt(attempt.messages.request,
                                             attempt.messages.end_requests),
            _no_requests, requests)


class AioStreamStreamInterceptor(_AioInterceptor, grpc.aio.StreamStreamClientInterceptor):
    streams_responses = True

    async def intercept_stream_stream(self, continuation: Continuation,
                                      client_call_details: grpc.aio.ClientCallDetails,
                                      request_iterator: AsyncIterable[Any] | Iterable[Any]
                                      ) -> Any:
        requests = AioRequestLog(request_iterator)
        return await self._stream_response(
            continuation, client_call_details,
            lambda attempt: requests.attempt(attempt.messages.request,
                                             attempt.messages.end_requests),
            _no_requests, requests)


def aio_interceptors(core: SdkCore) -> tuple[_AioInterceptor, ...]:
    return (AioUnaryUnaryInterceptor(core), AioUnaryStreamInterceptor(core),
            AioStreamUnaryInterceptor(core), AioStreamStreamInterceptor(core))
