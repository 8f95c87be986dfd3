"""Interceptors for grpc.aio channels (`interceptors=`): the twin of `sync_interceptors`,
driving the same `SdkCore`; only waiting and sleeping are asynchronous here."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterable, Awaitable, Callable, Iterable
from typing import Any

import grpc

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
    def __init__(self, core: SdkCore) -> None:
        self._core = core

    async def _begin(self, details: grpc.aio.ClientCallDetails) -> tuple[CallPlan, Attempt]:
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
            return plan, core.next_attempt(plan)
        except FastProxyError as refused:
            raise aio_refusal(core.refused(refused, plan)) from None

    def _next_attempt(self, plan: CallPlan) -> Attempt:
        try:
            return self._core.next_attempt(plan)
        except FastProxyError as refused:
            raise aio_refusal(self._core.refused(refused, plan)) from None

    async def _unary_response(self, continuation: Continuation,
                              details: grpc.aio.ClientCallDetails,
                              request_for: Callable[[Attempt], Any],
                              requests: AioRequestLog | None) -> Any:
        """Starts the first attempt and returns at once (grpc.aio feeds `write()`s through
        the request iterator only once the interceptor returned); awaiting the returned call
        retries what the policy allows and opens the response."""
        core = self._core
        plan, attempt = await self._begin(details)
        first = await continuation(_details_for(details, attempt), request_for(attempt))
        retryable = core.may_retry(plan) and (requests is None or requests.replayable)
        if not retryable and not core.config.embedded:
            return first

        async def finish(unary: AioUnaryCall) -> Any:
            nonlocal attempt
            while True:
                try:
                    raw = await unary._call
                except grpc.aio.AioRpcError as err:
                    decision = core.after_failure(plan, err.code(), err.trailing_metadata(),
                                                  responded=False, requests=requests,
                                                  no_retry=not retryable)
                    if isinstance(decision, Refuse):
                        raise unary.refuse(core.refused(decision.error, plan, attempt)) from None
                    if decision is None:
                        raise
                    await asyncio.sleep(decision.delay)
                    attempt = self._next_attempt(plan)
                    unary._call = await continuation(_details_for(details, attempt),
                                                     request_for(attempt))
                    continue
                if not core.config.embedded:
                    return raw
                try:
                    return attempt.messages.response(raw)
                except FastProxyError as refused:
                    raise unary.refuse(core.refused(refused, plan, attempt)) from None

        return AioUnaryCall(first, finish)

    async def _stream_response(self, continuation: Continuation,
                               details: grpc.aio.ClientCallDetails,
                               request_for: Callable[[Attempt], Any],
                               requests: AioRequestLog | None) -> Any:
        plan, attempt = await self._begin(details)

        async def start(next_attempt: Attempt) -> Any:
            return await continuation(_details_for(details, next_attempt),
                                      request_for(next_attempt))

        call = await start(attempt)
        return AioStreamCall(self._core, plan, start, call, attempt, requests)


class AioUnaryUnaryInterceptor(_AioInterceptor, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation: Continuation,
                                    client_call_details: grpc.aio.ClientCallDetails,
                                    request: Any) -> Any:
        return await self._unary_response(
            continuation, client_call_details,
            lambda attempt: attempt.messages.request(request), None)


class AioUnaryStreamInterceptor(_AioInterceptor, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation: Continuation,
                                     client_call_details: grpc.aio.ClientCallDetails,
                                     request: Any) -> Any:
        return await self._stream_response(
            continuation, client_call_details,
            lambda attempt: attempt.messages.request(request), None)


class AioStreamUnaryInterceptor(_AioInterceptor, grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(self, continuation: Continuation,
                                     client_call_details: grpc.aio.ClientCallDetails,
                                     request_iterator: AsyncIterable[Any] | Iterable[Any]
                                     ) -> Any:
        requests = AioRequestLog(request_iterator)
        return await self._unary_response(
            continuation, client_call_details,
            lambda attempt: requests.attempt(attempt.messages.request), requests)


class AioStreamStreamInterceptor(_AioInterceptor, grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(self, continuation: Continuation,
                                      client_call_details: grpc.aio.ClientCallDetails,
                                      request_iterator: AsyncIterable[Any] | Iterable[Any]
                                      ) -> Any:
        requests = AioRequestLog(request_iterator)
        return await self._stream_response(
            continuation, client_call_details,
            lambda attempt: requests.attempt(attempt.messages.request), requests)


def aio_interceptors(core: SdkCore) -> tuple[_AioInterceptor, ...]:
    return (AioUnaryUnaryInterceptor(core), AioUnaryStreamInterceptor(core),
            AioStreamUnaryInterceptor(core), AioStreamStreamInterceptor(core))
