"""The embedded server's interceptors: the sync twin (`grpc.server`) and the aio twin
(`grpc.aio.server`), over the shared `EmbeddedPolicy` and `SealedCall`.

Per call, `intercept_service` admits the call before the app's handler is even looked up: a
refused call is answered here and never reaches the app (its interceptors, handlers or
their lookup), so a refused caller learns no method names. An admitted call goes on with
the app's view of its metadata (`AppCallDetails`, `aio_call_details`), and grpc gets a
copy of the app's handler whose codecs open and seal and whose behavior runs the app's
with a sealing context.
`/fastproxy.v1.Session/Open` is answered here, whatever the app serves.

Limits: the service's `timeout_ms` is not imposed on the app's handler (grpc gives a server
no way to shorten a call's deadline).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, NoReturn

import grpc

from fastproxy.hosting.drain import drain, drain_blocking
from fastproxy.pipeline.handshake import CARRY_METHOD
from fastproxy.pipeline.handshake import OPEN_METHOD as OPEN_SESSION_METHOD
from fastproxy.pipeline.reasons import FastProxyError
from fastproxy.server.policy import EmbeddedPolicy
from fastproxy.server.sealed_call import (
    AioSealingContext,
    AppCallDetails,
    Refused,
    SealedCall,
    SealingContext,
    Serializer,
    aio_call_details,
    app_exception_details,
    app_metadata,
)

UNKNOWN = grpc.StatusCode.UNKNOWN


def _rebuild(handler: grpc.RpcMethodHandler | None, behavior: Callable[..., Any],
             deserializer: Callable[[bytes], Any] | None, serializer: Serializer | None
             ) -> grpc.RpcMethodHandler:
    """A handler of the same RPC kind as `handler` with another behavior and codecs (of
    the stream-stream kind for a method the server does not have)."""
    if handler is None or (handler.request_streaming and handler.response_streaming):
        make = grpc.stream_stream_rpc_method_handler
    elif handler.request_streaming:
        make = grpc.stream_unary_rpc_method_handler
    elif handler.response_streaming:
        make = grpc.unary_stream_rpc_method_handler
    else:
        make = grpc.unary_unary_rpc_method_handler
    return make(behavior, request_deserializer=deserializer, response_serializer=serializer)


def _behavior(handler: grpc.RpcMethodHandler) -> Callable[..., Any]:
    behavior: Callable[..., Any] | None = (handler.stream_stream or handler.stream_unary
                                           or handler.unary_stream or handler.unary_unary)
    assert behavior is not None
    return behavior


class _Call:
    """What a handler of one call needs: the policy, the method, and the sealed call (None
    when the call was refused before it opened)."""

    __slots__ = ("method", "policy", "sealed")

    def __init__(self, policy: EmbeddedPolicy, method: str, sealed: SealedCall | None) -> None:
        self.policy = policy
        self.method = method
        self.sealed = sealed

    def refusal(self, error: FastProxyError, peer: str | None) -> Any:
        sealed = self.sealed
        seal = None if sealed is None or sealed.ended else sealed.call.seal_end
        if sealed is not None:
            sealed.ended = True
        return self.policy.refused(error, self.method, peer, seal)


# --- sync grpc.server ----------------------------------------------------------------------


def _abort(context: grpc.ServicerContext, call: _Call, error: FastProxyError,
           unread: Iterator[Any] | None = None) -> NoReturn:
    answer = call.refusal(error, context.peer())
    drain_blocking(unread)
    context.set_trailing_metadata(answer.trailers)
    context.abort(answer.code, answer.details)
    raise AssertionError("context.abort returned")  # pragma: no cover


def _failed(exc: Exception, call: _Call, sealing: SealingContext, context: grpc.ServicerContext,
            unread: Iterator[Any] | None) -> NoReturn:
    """How a call ends once the app's handler raised: our refusal of a request that did not
    open, the app's own abort (already sealed), or the app's exception as UNKNOWN."""
    sealed = call.sealed
    assert sealed is not None
    if sealed.error is not None:
        _abort(context, call, sealed.error, unread)
    if sealed.ended:
        raise exc
    sealing.abort(UNKNOWN, app_exception_details(exc))
    raise exc  # pragma: no cover (abort raises)


def _respond(produce: Callable[[Any], Any], call: _Call, context: grpc.ServicerContext,
             unread: Iterator[Any] | None, serialize: Serializer | None) -> bytes:
    sealed = call.sealed
    assert sealed is not None
    sealing = SealingContext(context, sealed)
    try:
        data = sealed.seal_unary(produce(sealing), serialize)
    except Exception as exc:
        _failed(exc, call, sealing, context, unread)
    if sealed.error is not None:  # the app swallowed the refusal
        _abort(context, call, sealed.error, unread)
    sealing.finish()
    return data


def _stream(produce: Callable[[Any], Any], call: _Call, context: grpc.ServicerContext,
            unread: Iterator[Any] | None) -> Iterator[Any]:
    sealed = call.sealed
    assert sealed is not None
    sealing = SealingContext(context, sealed)
    try:
        yield from produce(sealing)
    except Exception as exc:
        _failed(exc, call, sealing, context, unread)
    if sealed.error is not None:
        _abort(context, call, sealed.error, unread)
    sealing.finish()


def _sealed_handler(handler: grpc.RpcMethodHandler, call: _Call) -> grpc.RpcMethodHandler:
    behavior = _behavior(handler)
    sealed = call.sealed
    assert sealed is not None
    serialize = handler.response_serializer

    def wrapped_streaming(requests: Iterator[Any], context: grpc.ServicerContext) -> Any:
        opened = sealed.requests(requests)

        def produce(app_context: Any) -> Any:
            return behavior(opened, app_context)
        if handler.response_streaming:
            return _stream(produce, call, context, requests)
        return _respond(produce, call, context, requests, serialize)

    def wrapped_unary(request: Any, context: grpc.ServicerContext) -> Any:
        if isinstance(request, Refused):
            _abort(context, call, request.error)

        def produce(app_context: Any) -> Any:
            return behavior(request, app_context)
        if handler.response_streaming:
            return _stream(produce, call, context, None)
        return _respond(produce, call, context, None, serialize)

    wrapped = wrapped_streaming if handler.request_streaming else wrapped_unary
    return _rebuild(handler, wrapped, sealed.deserializer(handler.request_deserializer),
                    sealed.serializer(serialize) if handler.response_streaming else None)


def _unimplemented(call: _Call, requests: Iterator[Any], context: grpc.ServicerContext
                   ) -> Iterator[Any]:
    assert call.sealed is not None
    drain_blocking(requests)
    sealing = SealingContext(context, call.sealed)
    sealing.abort(grpc.StatusCode.UNIMPLEMENTED, "Method not found!")
    yield from ()  # pragma: no cover (abort raises)


def _refusing_handler(call: _Call, error: FastProxyError) -> grpc.RpcMethodHandler:
    """Of the stream-stream kind, which takes a call of any kind: the app's handler is not
    looked up for a refused call."""
    def refuse(requests: Iterator[Any], context: grpc.ServicerContext) -> Any:
        _abort(context, call, error, requests)
    return _rebuild(None, refuse, None, None)


def _session_handler(policy: EmbeddedPolicy) -> grpc.RpcMethodHandler:
    def open_session(requests: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
        # A message the caller's stub sent says nothing: not read (see `SessionService`).
        try:
            answer = policy.answer_hello(tuple(context.invocation_metadata() or ()))
        except FastProxyError as error:
            _abort(context, _Call(policy, OPEN_SESSION_METHOD, None), error)
        context.set_trailing_metadata(answer)
        return b""
    # Requests as a stream (a caller's stream stub may send none), one answer: any stub of
    # the app's can make the call, and it costs about what a unary call costs.
    return grpc.stream_unary_rpc_method_handler(open_session)


class SealingServerInterceptor(grpc.ServerInterceptor):
    """For `grpc.server(..., interceptors=[...])`; `policy` is its `EmbeddedPolicy`."""

    def __init__(self, policy: EmbeddedPolicy) -> None:
        self.policy = policy
        self._sessions = _session_handler(policy)

    def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails],
                                                       grpc.RpcMethodHandler | None],
                          handler_call_details: grpc.HandlerCallDetails
                          ) -> grpc.RpcMethodHandler | None:
        details: Any = handler_call_details
        method: str = details.method
        if method == OPEN_SESSION_METHOD:
            return self._sessions
        if method == CARRY_METHOD:
            return None
        if self.policy.is_open(method):
            return continuation(handler_call_details)
        received = tuple(details.invocation_metadata or ())
        try:
            admitted = self.policy.admit(method, received)
        except FastProxyError as error:
            return _refusing_handler(_Call(self.policy, method, None), error)
        metadata = app_metadata(received, admitted.restored)
        handler = continuation(AppCallDetails(method, metadata))
        call = _Call(self.policy, method, SealedCall(
            admitted, handler.request_streaming if handler is not None else True, metadata))
        if handler is None:  # the app lacks the method: said so, sealed
            return _rebuild(None, functools.partial(_unimplemented, call), None, None)
        return _sealed_handler(handler, call)


# --- grpc.aio.server -----------------------------------------------------------------------


async def _aio_abort(context: grpc.aio.ServicerContext[Any, Any], call: _Call,
                     error: FastProxyError, unread: AsyncIterator[Any] | None = None
                     ) -> NoReturn:
    answer = call.refusal(error, context.peer())
    if unread is not None:
        await drain(unread)
    await context.abort(answer.code, answer.details, answer.trailers)
    raise AssertionError("context.abort returned")  # pragma: no cover


async def _aio_failed(exc: Exception, call: _Call, sealing: AioSealingContext,
                      context: grpc.aio.ServicerContext[Any, Any],
                      unread: AsyncIterator[Any] | None) -> NoReturn:
    sealed = call.sealed
    assert sealed is not None
    if sealed.error is not None:
        await _aio_abort(context, call, sealed.error, unread)
    if sealed.ended:
        raise exc
    await sealing.abort(UNKNOWN, app_exception_details(exc))
    raise exc  # pragma: no cover (abort raises)


class _AioRun:
    """The parts of an aio handler's run shared by its streaming and coroutine forms."""

    __slots__ = ("call", "sealed", "takes_stream")

    def __init__(self, call: _Call, takes_stream: bool) -> None:
        assert call.sealed is not None
        self.call = call
        self.sealed = call.sealed
        self.takes_stream = takes_stream

    def unread(self, request: Any) -> AsyncIterator[Any] | None:
        return request if self.takes_stream else None

    async def begin(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        """What the app's handler gets: its opened request, or its request stream."""
        if self.takes_stream:
            return self.sealed.aio_requests(request)
        if isinstance(request, Refused):
            await _aio_abort(context, self.call, request.error)
        return request

    async def settle(self, context: grpc.aio.ServicerContext[Any, Any], request: Any,
                     sealing: AioSealingContext) -> None:
        """After the app's handler: a refusal it swallowed, else the sealed end."""
        if self.sealed.error is not None:
            await _aio_abort(context, self.call, self.sealed.error, self.unread(request))
        sealing.finish()


def _aio_sealed_unary(handler: grpc.RpcMethodHandler, call: _Call, sealed: SealedCall,
                      deserializer: Callable[[bytes], Any]) -> grpc.RpcMethodHandler:
    """A unary method's handler (one request, one response): the steps of `_AioRun`
    inline, so a call makes no more objects and awaits than it needs."""
    behavior = handler.unary_unary
    assert behavior is not None
    serialize = handler.response_serializer

    async def unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        if isinstance(request, Refused):
            await _aio_abort(context, call, request.error)
        sealing = AioSealingContext(context, sealed)
        try:
            result = sealed.seal_unary(await behavior(request, sealing), serialize)
        except Exception as exc:
            await _aio_failed(exc, call, sealing, context, None)
        if sealed.error is not None:  # the app swallowed a refusal
            await _aio_abort(context, call, sealed.error)
        sealing.finish()
        return result
    return grpc.unary_unary_rpc_method_handler(unary, request_deserializer=deserializer)


def _aio_sealed_handler(handler: grpc.RpcMethodHandler, call: _Call) -> grpc.RpcMethodHandler:
    sealed = call.sealed
    assert sealed is not None
    deserializer = sealed.deserializer(handler.request_deserializer)
    if not handler.request_streaming and not handler.response_streaming:
        return _aio_sealed_unary(handler, call, sealed, deserializer)
    behavior = _behavior(handler)
    run = _AioRun(call, handler.request_streaming)
    serialize = handler.response_serializer

    if handler.response_streaming and not inspect.iscoroutinefunction(behavior):
        async def wrapped_stream(request: Any, context: grpc.aio.ServicerContext[Any, Any]
                                 ) -> AsyncIterator[Any]:
            sealing = AioSealingContext(context, sealed)
            try:
                responses = behavior(await run.begin(request, context), sealing)
                if inspect.isasyncgen(responses):
                    async for response in responses:
                        yield response
                else:  # a sync generator, which grpc.aio also accepts
                    for response in responses:
                        yield response
            except Exception as exc:
                await _aio_failed(exc, call, sealing, context, run.unread(request))
            await run.settle(context, request, sealing)
        return _rebuild(handler, wrapped_stream, deserializer, sealed.serializer(serialize))

    # a coroutine: returns the one response, or writes with context.write()
    async def wrapped_call(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        sealing = AioSealingContext(context, sealed)
        try:
            result = await behavior(await run.begin(request, context), sealing)
            if not handler.response_streaming:
                result = sealed.seal_unary(result, serialize)
        except Exception as exc:
            await _aio_failed(exc, call, sealing, context, run.unread(request))
        await run.settle(context, request, sealing)
        return result
    return _rebuild(handler, wrapped_call, deserializer,
                    sealed.serializer(serialize) if handler.response_streaming else None)


async def _aio_unimplemented(call: _Call, requests: AsyncIterator[Any],
                             context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
    assert call.sealed is not None
    await drain(requests)
    await AioSealingContext(context, call.sealed).abort(grpc.StatusCode.UNIMPLEMENTED,
                                                        "Method not found!")
    yield  # pragma: no cover (abort raises)


def _aio_refusing_handler(call: _Call, error: FastProxyError) -> grpc.RpcMethodHandler:
    """The aio twin of `_refusing_handler`."""
    async def refuse(requests: AsyncIterator[Any],
                     context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await _aio_abort(context, call, error, requests)
    return _rebuild(None, refuse, None, None)


def _aio_session_handler(policy: EmbeddedPolicy) -> grpc.RpcMethodHandler:
    async def open_session(requests: AsyncIterator[bytes],
                           context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        try:
            answer = policy.answer_hello(tuple(context.invocation_metadata() or ()),
                                         asyncio.get_running_loop().call_soon)
        except FastProxyError as error:
            await _aio_abort(context, _Call(policy, OPEN_SESSION_METHOD, None), error)
        context.set_trailing_metadata(answer)
        return b""
    return grpc.stream_unary_rpc_method_handler(open_session)


class AioSealingServerInterceptor(grpc.aio.ServerInterceptor):
    """For `grpc.aio.server(interceptors=[...])`; `policy` is its `EmbeddedPolicy`."""

    def __init__(self, policy: EmbeddedPolicy) -> None:
        self.policy = policy
        self._sessions = _aio_session_handler(policy)

    async def intercept_service(self, continuation: Any,
                                handler_call_details: grpc.HandlerCallDetails
                                ) -> grpc.RpcMethodHandler:
        details: Any = handler_call_details
        method: str = details.method
        if method == OPEN_SESSION_METHOD:
            return self._sessions
        if method == CARRY_METHOD:
            return None  # grpc.aio: no handler -> UNIMPLEMENTED
        if self.policy.is_open(method):
            return await continuation(handler_call_details)
        received = tuple(details.invocation_metadata or ())
        try:
            admitted = self.policy.admit(method, received)
        except FastProxyError as error:
            return _aio_refusing_handler(_Call(self.policy, method, None), error)
        metadata = app_metadata(received, admitted.restored)
        handler = await continuation(aio_call_details(method, metadata))
        call = _Call(self.policy, method, SealedCall(
            admitted, handler.request_streaming if handler is not None else True, metadata))
        if handler is None:  # the app lacks the method: said so, sealed
            return _rebuild(None, functools.partial(_aio_unimplemented, call), None, None)
        return _aio_sealed_handler(handler, call)
