"""Interceptors for `grpc.intercept_channel`: thin glue that waits, sleeps and calls, around
the shared `SdkCore` (the aio twin is `aio_interceptors`)."""

from __future__ import annotations

import functools
import time
from collections import namedtuple
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from fastproxy.pipeline.reasons import FastProxyError

from .core import Attempt, CallPlan, Retry, SdkCore
from .refusal import RefusedCall
from .request_log import RequestLog
from .sync_call_objects import SyncStreamCall, SyncUnaryCall

Continuation = Callable[[grpc.ClientCallDetails, Any], Any]


class _CallDetails(
    namedtuple("_CallDetails", ("method", "timeout", "metadata", "credentials",
                                "wait_for_ready", "compression")),
    grpc.ClientCallDetails,
):
    pass


def _details_for(details: grpc.ClientCallDetails, attempt: Attempt) -> _CallDetails:
    return _CallDetails(details.method, attempt.timeout, attempt.metadata,
                        getattr(details, "credentials", None),
                        getattr(details, "wait_for_ready", None),
                        getattr(details, "compression", None))


class _SyncInterceptor:
    def __init__(self, core: SdkCore) -> None:
        self._core = core

    def _begin(self, details: grpc.ClientCallDetails) -> tuple[CallPlan, Attempt | RefusedCall]:
        """The call's plan and its first attempt, or the SDK's refusal of it."""
        core = self._core
        plan = core.plan(details.method, details.timeout, details.metadata)
        try:
            if core.needs_policy():
                waited = core.policy_wait_s(plan)
                assert core.source is not None
                if core.source.wait(waited) is None:
                    raise core.no_policy(waited)
            return plan, core.next_attempt(plan)
        except FastProxyError as refused:
            return plan, RefusedCall(core.refused(refused, plan))

    def _unary_response(self, continuation: Continuation, details: grpc.ClientCallDetails,
                        request_for: Callable[[Attempt], Any],
                        requests: RequestLog | None) -> Any:
        core = self._core
        plan, attempt = self._begin(details)
        if isinstance(attempt, RefusedCall):
            return attempt
        while True:
            outcome = continuation(_details_for(details, attempt), request_for(attempt))
            # Waiting for the outcome only when a retry could follow it.
            if core.may_retry(plan) and outcome.exception() is not None:
                decision = core.after_failure(plan, outcome.code(), outcome.trailing_metadata(),
                                              responded=False, requests=requests)
                if isinstance(decision, Retry):  # a Refuse is the returned call's to make
                    time.sleep(decision.delay)
                    try:
                        attempt = core.next_attempt(plan)
                    except FastProxyError as refused:
                        return RefusedCall(core.refused(refused, plan))
                    continue
            if not core.config.embedded:
                return outcome
            return SyncUnaryCall(outcome, attempt.messages, requests,
                                 functools.partial(core.refused, plan=plan, attempt=attempt))

    def _stream_response(self, continuation: Continuation, details: grpc.ClientCallDetails,
                         request_for: Callable[[Attempt], Any],
                         requests: RequestLog | None) -> Any:
        plan, attempt = self._begin(details)
        if isinstance(attempt, RefusedCall):
            return attempt

        def start(next_attempt: Attempt) -> Any:
            return continuation(_details_for(details, next_attempt), request_for(next_attempt))

        return SyncStreamCall(self._core, plan, start, attempt, requests)


class SyncUnaryUnaryInterceptor(_SyncInterceptor, grpc.UnaryUnaryClientInterceptor):
    def intercept_unary_unary(self, continuation: Continuation,
                              client_call_details: grpc.ClientCallDetails, request: Any) -> Any:
        return self._unary_response(continuation, client_call_details,
                                    lambda attempt: attempt.messages.request(request), None)


class SyncUnaryStreamInterceptor(_SyncInterceptor, grpc.UnaryStreamClientInterceptor):
    def intercept_unary_stream(self, continuation: Continuation,
                               client_call_details: grpc.ClientCallDetails,
                               request: Any) -> Any:
        return self._stream_response(continuation, client_call_details,
                                     lambda attempt: attempt.messages.request(request), None)


class SyncStreamUnaryInterceptor(_SyncInterceptor, grpc.StreamUnaryClientInterceptor):
    def intercept_stream_unary(self, continuation: Continuation,
                               client_call_details: grpc.ClientCallDetails,
                               request_iterator: Iterator[Any]) -> Any:
        requests = RequestLog(request_iterator)
        return self._unary_response(continuation, client_call_details,
                                    lambda attempt: requests.attempt(attempt.messages.request),
                                    requests)


class SyncStreamStreamInterceptor(_SyncInterceptor, grpc.StreamStreamClientInterceptor):
    def intercept_stream_stream(self, continuation: Continuation,
                                client_call_details: grpc.ClientCallDetails,
                                request_iterator: Iterator[Any]) -> Any:
        requests = RequestLog(request_iterator)
        return self._stream_response(continuation, client_call_details,
                                     lambda attempt: requests.attempt(attempt.messages.request),
                                     requests)


def sync_interceptors(core: SdkCore) -> tuple[_SyncInterceptor, ...]:
    return (SyncUnaryUnaryInterceptor(core), SyncUnaryStreamInterceptor(core),
            SyncStreamUnaryInterceptor(core), SyncStreamStreamInterceptor(core))
