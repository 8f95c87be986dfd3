"""Interceptors for `grpc.intercept_channel`: thin glue that waits, sleeps and calls, around
the shared `SdkCore` (the aio twin is `aio_interceptors`)."""

from __future__ import annotations

import functools
import time
from collections import namedtuple
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from fastproxy.pipeline.handshake import OPEN_METHOD
from fastproxy.pipeline.metadata import HELLO_KEY
from fastproxy.pipeline.reasons import FastProxyError

from .core import Attempt, CallPlan, Retry, SdkCore
from .messages import MessageCodec
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
    """`single`: the method takes one request; `streams_responses`: it answers a stream."""

    single = False
    streams_responses = False

    def __init__(self, core: SdkCore) -> None:
        self._core = core

    def _attempt(self, continuation: Continuation, details: grpc.ClientCallDetails,
                 plan: CallPlan, empty: Callable[[], Any]) -> Attempt:
        """The next attempt; in embedded mode, a session with the callee first, opened
        through the app's own channel when there is none (`empty` makes the request the
        handshake call sends: an empty message, or no stream message at all)."""
        core = self._core
        handshake = core.handshake_needed(plan)
        if handshake is not None:
            hello = _CallDetails(OPEN_METHOD, core.handshake_timeout(plan),
                                 ((HELLO_KEY, handshake.request),),
                                 getattr(details, "credentials", None),
                                 getattr(details, "wait_for_ready", None),
                                 getattr(details, "compression", None))
            outcome = continuation(hello, empty())
            try:
                if self.streams_responses:
                    for _ in outcome:
                        pass
                else:
                    outcome.result()
            except grpc.RpcError as failed:
                raise core.handshake_failed(plan, failed.code(), failed.details()) from None
            core.session_opened(plan, handshake, outcome.trailing_metadata())
        return core.next_attempt(plan, self.single)

    def _begin(self, continuation: Continuation, details: grpc.ClientCallDetails,
               empty: Callable[[], Any]) -> tuple[CallPlan, Attempt | RefusedCall]:
        """The call's plan and its first attempt, or the SDK's refusal of it."""
        core = self._core
        plan = core.plan(details.method, details.timeout, details.metadata)
        try:
            if core.needs_policy():
                waited = core.policy_wait_s(plan)
                assert core.source is not None
                if core.source.wait(waited) is None:
                    raise core.no_policy(waited)
            return plan, self._attempt(continuation, details, plan, empty)
        except FastProxyError as refused:
            return plan, RefusedCall(core.refused(refused, plan))

    def _unary_response(self, continuation: Continuation, details: grpc.ClientCallDetails,
                        request_for: Callable[[Attempt], Any], empty: Callable[[], Any],
                        requests: RequestLog | None) -> Any:
        core = self._core
        plan, attempt = self._begin(continuation, details, empty)
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
                        attempt = self._attempt(continuation, details, plan, empty)
                    except FastProxyError as refused:
                        return RefusedCall(core.refused(refused, plan))
                    continue
            if not core.config.embedded:
                return outcome
            return SyncUnaryCall(
                outcome, attempt.messages, requests,
                functools.partial(core.refused, plan=plan, attempt=attempt),
                restart=functools.partial(self._restart, continuation, details, plan, outcome,
                                          request_for, empty, requests))

    def _restart(self, continuation: Continuation, details: grpc.ClientCallDetails,
                 plan: CallPlan, outcome: Any, request_for: Callable[[Attempt], Any],
                 empty: Callable[[], Any], requests: RequestLog | None
                 ) -> tuple[Any, MessageCodec] | None:
        """The call sent once more in a new session, if the callee lost the first one."""
        decision = self._core.after_failure(plan, outcome.code(), outcome.trailing_metadata(),
                                            responded=False, requests=requests)
        if not isinstance(decision, Retry) or plan.session is not None:
            return None  # only a lost session (which `after_failure` forgot) restarts here
        try:
            attempt = self._attempt(continuation, details, plan, empty)
        except FastProxyError:
            return None
        return continuation(_details_for(details, attempt), request_for(attempt)), \
            attempt.messages

    def _stream_response(self, continuation: Continuation, details: grpc.ClientCallDetails,
                         request_for: Callable[[Attempt], Any], empty: Callable[[], Any],
                         requests: RequestLog | None) -> Any:
        plan, attempt = self._begin(continuation, details, empty)
        if isinstance(attempt, RefusedCall):
            return attempt

        def start(next_attempt: Attempt) -> Any:
            return continuation(_details_for(details, next_attempt), request_for(next_attempt))

        def next_attempt() -> Attempt:
            return self._attempt(continuation, details, plan, empty)

        return SyncStreamCall(self._core, plan, start, attempt, next_attempt, requests)


def _empty_like(request: Any) -> Callable[[], Any]:
    """The request a handshake sends through a unary-request stub: an empty message of the
    app's class (nothing of the app's request travels)."""
    return lambda: b"" if isinstance(request, bytes) else type(request)()


def _no_requests() -> Any:
    return iter(())


class SyncUnaryUnaryInterceptor(_SyncInterceptor, grpc.UnaryUnaryClientInterceptor):
    single = True

    def intercept_unary_unary(self, continuation: Continuation,
                              client_call_details: grpc.ClientCallDetails, request: Any) -> Any:
        return self._unary_response(continuation, client_call_details,
                                    lambda attempt: attempt.messages.request(request),
                                    _empty_like(request), None)


class SyncUnaryStreamInterceptor(_SyncInterceptor, grpc.UnaryStreamClientInterceptor):
    single = True
    streams_responses = True

    def intercept_unary_stream(self, continuation: Continuation,
                               client_call_details: grpc.ClientCallDetails,
                               request: Any) -> Any:
        return self._stream_response(continuation, client_call_details,
                                     lambda attempt: attempt.messages.request(request),
                                     _empty_like(request), None)


class SyncStreamUnaryInterceptor(_SyncInterceptor, grpc.StreamUnaryClientInterceptor):
    def intercept_stream_unary(self, continuation: Continuation,
                               client_call_details: grpc.ClientCallDetails,
                               request_iterator: Iterator[Any]) -> Any:
        requests = RequestLog(request_iterator)
        return self._unary_response(
            continuation, client_call_details,
            lambda attempt: requests.attempt(attempt.messages.request,
                                             attempt.messages.end_requests),
            _no_requests, requests)


class SyncStreamStreamInterceptor(_SyncInterceptor, grpc.StreamStreamClientInterceptor):
    streams_responses = True

    def intercept_stream_stream(self, continuation: Continuation,
                                client_call_details: grpc.ClientCallDetails,
                                request_iterator: Iterator[Any]) -> Any:
        requests = RequestLog(request_iterator)
        return self._stream_response(
            continuation, client_call_details,
            lambda attempt: requests.attempt(attempt.messages.request,
                                             attempt.messages.end_requests),
            _no_requests, requests)


def sync_interceptors(core: SdkCore) -> tuple[_SyncInterceptor, ...]:
    return (SyncUnaryUnaryInterceptor(core), SyncUnaryStreamInterceptor(core),
            SyncStreamUnaryInterceptor(core), SyncStreamStreamInterceptor(core))
