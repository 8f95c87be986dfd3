"""What a sync channel's app gets back: the call interface grpc gives, with messages opened
and the callee's answer checked (embedded mode), retries made while iterating, and the SDK's
own refusals as the status."""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable
from typing import Any

import grpc

from fastproxy.hosting.grpc_metadata import sync_metadata
from fastproxy.hosting.refusal import Refusal
from fastproxy.pipeline.metadata import Metadata
from fastproxy.pipeline.reasons import FastProxyError

from .core import Attempt, CallPlan, Refuse, SdkCore
from .messages import MessageCodec, checked_failure
from .refusal import RefusedCall
from .request_log import RequestLog

_UNSET = object()
StartAttempt = Callable[[Attempt], Any]
Restart = Callable[[], tuple[Any, MessageCodec] | None]


def checked_error(err: grpc.RpcError, messages: MessageCodec) -> RefusedCall:
    """A failed attempt as the app gets it (embedded mode): the callee's code and details,
    its headers and trailers checked and without the protocol's entries. Raises
    `FastProxyError` when they do not check."""
    code, details = err.code(), err.details() or ""
    initial, trailers = checked_failure(messages, code.value[0], details,
                                        tuple(err.initial_metadata() or ()),
                                        tuple(err.trailing_metadata() or ()))
    return RefusedCall(Refusal(code, details, trailers), initial)


class SyncUnaryCall(grpc.Call, grpc.Future):
    """A unary-response outcome whose answer is opened and checked on first access."""

    def __init__(self, outcome: Any, messages: MessageCodec, requests: RequestLog | None,
                 refused: Callable[[FastProxyError], Refusal],
                 restart: Restart | None = None) -> None:
        """`refused` audits a refusal of the SDK's own (`SdkCore.refused`); `restart`
        sends the call once more in a new session when the callee lost the first one."""
        self._refused = refused
        self._outcome = outcome
        self._messages = messages
        self._requests = requests
        self._restart = restart
        self._opened: Any = _UNSET
        self._initial: Metadata = ()
        self._trailers: Metadata = ()
        self._refusal: RefusedCall | None = None
        self._lock = threading.Lock()

    def _settle(self, timeout: float | None = None) -> None:
        with self._lock:
            while self._opened is _UNSET and self._refusal is None:
                try:
                    raw = self._outcome.result(timeout)
                except grpc.RpcError as err:
                    if not self._failed(err):
                        return
                    continue
                self._open(raw)

    def _failed(self, err: grpc.RpcError) -> bool:
        """True when the call was sent again (in a new session)."""
        if self._requests is not None and self._requests.error is not None:
            self._refusal = RefusedCall(self._refused(self._requests.error))
            return False
        again = self._restart() if self._restart is not None else None
        self._restart = None
        if again is not None:
            self._outcome, self._messages = again
            return True
        try:
            self._refusal = checked_error(err, self._messages)
        except FastProxyError as refused:
            self._refusal = RefusedCall(self._refused(refused))
        return False

    def _open(self, raw: Any) -> None:
        outcome, messages = self._outcome, self._messages
        try:
            self._initial = messages.head(tuple(outcome.initial_metadata() or ()))
            opened = messages.response(raw)
            self._trailers = messages.end(outcome.code().value[0], outcome.details() or "",
                                          tuple(outcome.trailing_metadata() or ()))
        except FastProxyError as err:
            self._refusal = RefusedCall(self._refused(err))
            return
        self._opened = opened

    def _settle_quietly(self) -> None:
        try:
            self._settle()
        except Exception:  # cancelled or timed out: the outcome's own status stands
            return

    def result(self, timeout: float | None = None) -> Any:
        self._settle(timeout)
        if self._refusal is not None:
            raise self._refusal
        if self._opened is _UNSET:
            return self._outcome.result(timeout)
        return self._opened

    def exception(self, timeout: float | None = None) -> Any:
        self._settle_quietly()
        return self._refusal if self._refusal is not None else self._outcome.exception(timeout)

    def traceback(self, timeout: float | None = None) -> Any:
        self._settle_quietly()
        if self._refusal is not None:
            return None
        return self._outcome.traceback(timeout)

    def code(self) -> grpc.StatusCode:
        self._settle_quietly()
        return self._refusal.code() if self._refusal is not None else self._outcome.code()

    def details(self) -> str | None:
        self._settle_quietly()
        return self._refusal.details() if self._refusal is not None else self._outcome.details()

    def trailing_metadata(self) -> Any:
        self._settle_quietly()
        if self._refusal is not None:
            return self._refusal.trailing_metadata()
        return sync_metadata(self._trailers if self._opened is not _UNSET else ())

    def initial_metadata(self) -> Any:
        self._settle_quietly()
        if self._refusal is not None:
            return self._refusal.initial_metadata()
        return sync_metadata(self._initial)

    def is_active(self) -> bool:
        return bool(self._outcome.is_active())

    def time_remaining(self) -> float | None:
        remaining: float | None = self._outcome.time_remaining()
        return remaining

    def cancel(self) -> bool:
        return bool(self._outcome.cancel())

    def cancelled(self) -> bool:
        return bool(self._outcome.cancelled())

    def running(self) -> bool:
        return bool(self._outcome.running())

    def done(self) -> bool:
        return bool(self._outcome.done())

    def add_callback(self, callback: Callable[[], None]) -> bool:
        return bool(self._outcome.add_callback(callback))

    def add_done_callback(self, fn: Callable[[Any], None]) -> None:
        self._outcome.add_done_callback(lambda _outcome: fn(self))


class SyncStreamCall(grpc.Call, grpc.Future):
    """A response stream: the current attempt's call interface; iteration opens each
    message, checks the end (embedded mode) and, before the first message, retries an
    attempt the policy allows (or whose session the callee lost)."""

    def __init__(self, core: SdkCore, plan: CallPlan, start: StartAttempt, attempt: Attempt,
                 next_attempt: Callable[[], Attempt],
                 requests: RequestLog | None = None) -> None:
        self._core = core
        self._plan = plan
        self._start = start
        self._next_attempt = next_attempt
        self._attempt = attempt
        self._requests = requests
        self._call = start(attempt)
        self._responded = False
        self._refusal: RefusedCall | None = None
        self._cancelled = False
        self._initial: Metadata | None = None
        self._trailers: Metadata | None = None

    def __iter__(self) -> SyncStreamCall:
        return self

    def next(self) -> Any:
        return self.__next__()

    def __next__(self) -> Any:
        while True:
            if self._refusal is not None:
                raise self._refusal
            try:
                raw = next(self._call)
            except StopIteration:
                self._check(self._ended_ok)
                raise
            except grpc.RpcError as err:
                self._after_failure(err)
                continue
            if not self._responded:
                self._responded = True
                if self._requests is not None:
                    self._requests.stop_recording()
            return self._check(functools.partial(self._open, raw))

    def _head(self) -> None:
        if self._initial is None:
            self._initial = self._attempt.messages.head(
                tuple(self._call.initial_metadata() or ()))

    def _open(self, raw: Any) -> Any:
        self._head()
        return self._attempt.messages.response(raw)

    def _ended_ok(self) -> None:
        self._end(grpc.StatusCode.OK, "", self._call.trailing_metadata())

    def _end(self, code: grpc.StatusCode, details: str, trailers: Any) -> None:
        self._head()
        self._trailers = self._attempt.messages.end(code.value[0], details,
                                                    tuple(trailers or ()))

    def _check(self, step: Callable[[], Any]) -> Any:
        """Runs one check of the answer; the call is refused when it fails."""
        try:
            return step()
        except FastProxyError as refused:
            self._call.cancel()
            self._refusal = RefusedCall(self._audited(refused))
            raise self._refusal from None

    def _audited(self, refused: FastProxyError) -> Refusal:
        return self._core.refused(refused, self._plan, self._attempt)

    def _after_failure(self, err: grpc.RpcError) -> None:
        """Starts the next attempt, or raises the failure as final."""
        decision = self._core.after_failure(
            self._plan, err.code(), err.trailing_metadata(), responded=self._responded,
            requests=self._requests, no_retry=self._cancelled)
        if isinstance(decision, Refuse):
            self._refusal = RefusedCall(self._audited(decision.error))
            raise self._refusal from None
        if decision is None:
            if not self._attempt.messages.sealed:
                raise err
            self._refusal = self._check(lambda: checked_error(err, self._attempt.messages))
            assert self._refusal is not None
            raise self._refusal from None
        time.sleep(decision.delay)
        try:
            self._attempt = self._next_attempt()
        except FastProxyError as refused:
            self._refusal = RefusedCall(self._core.refused(refused, self._plan))
            raise self._refusal from None
        self._initial = None
        self._call = self._start(self._attempt)

    # grpc.Call, answered by the current attempt unless the SDK refused the call
    def initial_metadata(self) -> Any:
        if not self._attempt.messages.sealed:
            return self._call.initial_metadata()
        if self._refusal is not None:
            return self._refusal.initial_metadata()
        self._check(self._head)
        return sync_metadata(self._initial)

    def trailing_metadata(self) -> Any:
        if self._refusal is not None:
            return self._refusal.trailing_metadata()
        if self._attempt.messages.sealed:
            return sync_metadata(self._trailers)
        return self._call.trailing_metadata()

    def code(self) -> grpc.StatusCode:
        return self._refusal.code() if self._refusal is not None else self._call.code()

    def details(self) -> str | None:
        return self._refusal.details() if self._refusal is not None else self._call.details()

    def is_active(self) -> bool:
        return self._refusal is None and bool(self._call.is_active())

    def time_remaining(self) -> float | None:
        remaining: float | None = self._call.time_remaining()
        return remaining

    def cancel(self) -> bool:
        self._cancelled = True
        return bool(self._call.cancel())

    def add_callback(self, callback: Callable[[], None]) -> bool:
        return bool(self._call.add_callback(callback))

    # grpc.Future
    def cancelled(self) -> bool:
        return bool(self._call.cancelled())

    def running(self) -> bool:
        return bool(self._call.running())

    def done(self) -> bool:
        return self._refusal is not None or bool(self._call.done())

    def result(self, timeout: float | None = None) -> Any:
        if self._refusal is not None:
            raise self._refusal
        return self._call.result(timeout)

    def exception(self, timeout: float | None = None) -> Any:
        return self._refusal if self._refusal is not None else self._call.exception(timeout)

    def traceback(self, timeout: float | None = None) -> Any:
        return None if self._refusal is not None else self._call.traceback(timeout)

    def add_done_callback(self, fn: Callable[[Any], None]) -> None:
        self._call.add_done_callback(lambda _call: fn(self))
