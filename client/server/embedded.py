"""Embedded mode: an app's own gRPC server does the in-proxy's job in-process.

`server_interceptors(...)` (sync `grpc.server`) and `aio_server_interceptors(...)`
(`grpc.aio.server`) are twins over one core, `EmbeddedPolicy`, which runs the in-proxy's
sans-IO stages: `NodePolicy.inbound` admits each call (signed call header, replay check,
allow rule, rate limit) before the app's handler runs, and the returned `InboundCall` opens
every request message and seals every response message.

How the messages are reached without touching the app's handlers: requests arrive sealed
(the envelope rides in an unknown protobuf field, so any message class parses them), and
grpc hands each message to the handler's `request_deserializer` and each response to its
`response_serializer`. Per call, `intercept_service` returns a copy of the app's
`RpcMethodHandler` whose deserializer opens then parses, and whose serializer serializes then
seals, bound to that call's `InboundCall` (and its sequence numbers). A request that fails to
open does not raise inside grpc (which would answer INTERNAL): the deserializer hands back a
marker, and the wrapped behavior ends the call with the pipeline's status and the trailers
`fastproxy-error: REASON`, `fastproxy-proxy: in`, as the in-proxy would.

Limits: an aio handler that reads with `context.read()` instead of its request iterator sees
the marker of a refused message rather than an exception; the service's `timeout_ms` is not
imposed on the app's handler (grpc gives a server no way to shorten a call's deadline).
"""

from __future__ import annotations

import inspect
import os
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any, NoReturn

import grpc

from fastproxy.hosting.drain import drain, drain_blocking
from fastproxy.hosting.refusal import HostRole, Refusal, refuse
from fastproxy.node.credentials import CenterCredentials
from fastproxy.node.holder import PolicyHolder
from fastproxy.node.source import PolicyThread, open_policy_source
from fastproxy.node.watch import NodeIdentity
from fastproxy.pipeline.metadata import Metadata
from fastproxy.pipeline.node_policy import NodePolicy, NodeState
from fastproxy.pipeline.reasons import FastProxyError
from fastproxy.pipeline.stages import DEFAULT_MAX_MESSAGE_BYTES, InboundCall
from fastproxy.v1 import policy_pb2 as pb

# Reachable without a sealed call: orchestrators' health checks speak plain grpc.health.v1.
DEFAULT_OPEN_METHOD_PREFIXES = ("/grpc.health.v1.Health/",)

Serializer = Callable[[Any], bytes]
Deserializer = Callable[[bytes], Any]


class EmbeddedPolicy:
    """The policy of one embedded server (an in-node of `service`), kept current by a watcher
    on its own thread, plus the state (replay cache, rate limits) that outlives policy swaps.

    With `center`, the node watches the Center and, if `advertise` is set, registers that
    address as an endpoint of `service`; with `policy_file` it runs from the YAML file (a bad
    file raises `fastproxy.node.source.PolicySourceError` here).
    """

    def __init__(self, *, service: str, center: str | None = None,
                 policy_file: str | None = None, node_id: str | None = None,
                 token: str | None = None, credentials: CenterCredentials | None = None,
                 advertise: str = "", pinned_key: bytes | None = None,
                 cache_dir: str | None = None,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                 open_method_prefixes: Sequence[str] = DEFAULT_OPEN_METHOD_PREFIXES,
                 clock: Callable[[], float] = time.time) -> None:
        if credentials is None:
            credentials = CenterCredentials(token=token or "")
        elif token:
            raise ValueError("give either token or credentials, not both")
        self.service = service
        self.node = NodeIdentity(
            node_id or f"{service}-server-{socket.gethostname()}-{os.getpid()}",
            pb.ROLE_IN, service, advertise=advertise)
        self.holder: PolicyHolder[NodePolicy] = PolicyHolder()
        self.state = NodeState()
        self._clock = clock
        self._open_prefixes = tuple(open_method_prefixes)

        def compile_snapshot(snapshot: pb.PolicySnapshot) -> NodePolicy:
            return NodePolicy.from_snapshot(snapshot, max_message_bytes=max_message_bytes)

        source = open_policy_source(self.node, compile_snapshot, self.holder, center=center,
                                    policy_file=policy_file, credentials=credentials,
                                    pinned_key=pinned_key, cache_dir=cache_dir)
        self._thread = PolicyThread(source, name=f"fastproxy-policy-{service}")
        self._started = False

    def start(self) -> EmbeddedPolicy:
        """Starts watching (and registering); idempotent."""
        if not self._started:
            self._started = True
            self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stops watching; the Center drops the registration with the stream."""
        self._thread.stop(timeout)

    def wait_loaded(self, timeout: float | None = None) -> bool:
        """True once a policy is in force (False after `timeout` seconds without one)."""
        return self._thread.wait_loaded(timeout)

    @property
    def revision(self) -> int:
        return self.holder.revision

    def admit(self, method: str, metadata: Metadata) -> InboundCall | None:
        """The admitted call, or None for a method open to plain calls (health); raises
        `FastProxyError` when the call is refused."""
        if method.startswith(self._open_prefixes):
            return None
        return self.holder.require().inbound(method, metadata, self._clock(), self.state)

    def sealed_call(self, call: InboundCall) -> SealedCall:
        return SealedCall(call, self._clock)


class _Refused:
    """What the deserializer hands over in place of a request that failed to open."""

    __slots__ = ("error",)

    def __init__(self, error: FastProxyError) -> None:
        self.error = error


class _CallAudit:
    """The answer to one call if it is refused, with its audit line (as the in-proxy's)."""

    __slots__ = ("_method", "_policy")

    def __init__(self, policy: EmbeddedPolicy, method: str) -> None:
        self._policy = policy
        self._method = method

    def refused(self, error: FastProxyError, peer: str | None) -> Refusal:
        return refuse(error, HostRole.IN, service=self._policy.service, other="",
                      method=self._method, revision=self._policy.revision, peer=peer or "")


class SealedCall:
    """One admitted call's message transforms, and the first refusal met while opening."""

    __slots__ = ("_call", "_clock", "error")

    def __init__(self, call: InboundCall, clock: Callable[[], float]) -> None:
        self._call = call
        self._clock = clock
        self.error: FastProxyError | None = None

    def deserializer(self, parse: Deserializer | None) -> Deserializer:
        def open_then_parse(sealed: bytes) -> Any:
            try:
                plain = self._call.open_request(sealed, self._clock())
            except FastProxyError as error:
                return _Refused(error)
            return parse(plain) if parse is not None else plain
        return open_then_parse

    def serializer(self, serialize: Serializer | None) -> Serializer:
        def serialize_then_seal(message: Any) -> bytes:
            plain = serialize(message) if serialize is not None else message
            return self._call.seal_response(plain)
        return serialize_then_seal

    def check(self, request: Any) -> Any:
        """The request itself; raises (and remembers) the refusal of one that did not open."""
        if isinstance(request, _Refused):
            if self.error is None:
                self.error = request.error
            raise request.error
        return request

    def requests(self, iterator: Iterator[Any]) -> Iterator[Any]:
        for request in iterator:
            yield self.check(request)

    async def aio_requests(self, iterator: AsyncIterator[Any]) -> AsyncIterator[Any]:
        async for request in iterator:
            yield self.check(request)


def _rebuild(handler: grpc.RpcMethodHandler | None, behavior: Callable[..., Any],
             deserializer: Deserializer | None, serializer: Serializer | None
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


# --- sync grpc.server -----------------------------------------------------------------------


def _abort(context: grpc.ServicerContext, error: FastProxyError, audit: _CallAudit,
           unread: Iterator[Any] | None = None) -> NoReturn:
    answer = audit.refused(error, context.peer())
    drain_blocking(unread)
    context.set_trailing_metadata(answer.trailers)
    context.abort(answer.code, answer.details)
    raise AssertionError("context.abort returned")  # pragma: no cover


def _refusing_handler(handler: grpc.RpcMethodHandler | None, error: FastProxyError,
                      audit: _CallAudit) -> grpc.RpcMethodHandler:
    streaming = handler is None or handler.request_streaming

    def refuse(request: Any, context: grpc.ServicerContext) -> Any:
        _abort(context, error, audit, request if streaming else None)
    return _rebuild(handler, refuse, None, None)


def _settle(sealed: SealedCall, audit: _CallAudit, context: grpc.ServicerContext,
            unread: Iterator[Any] | None) -> None:
    """Ends the call with the refusal met while opening a request, if there was one (also
    when the app swallowed the error its request iterator raised)."""
    if sealed.error is not None:
        _abort(context, sealed.error, audit, unread)


def _run(produce: Callable[[], Any], sealed: SealedCall, audit: _CallAudit,
         context: grpc.ServicerContext, unread: Iterator[Any] | None) -> Any:
    try:
        result = produce()
    except Exception:
        _settle(sealed, audit, context, unread)
        raise
    _settle(sealed, audit, context, unread)
    return result


def _stream(produce: Callable[[], Iterator[Any]], sealed: SealedCall, audit: _CallAudit,
            context: grpc.ServicerContext, unread: Iterator[Any] | None) -> Iterator[Any]:
    try:
        yield from produce()
    except Exception:
        _settle(sealed, audit, context, unread)
        raise
    _settle(sealed, audit, context, unread)


def _sealed_handler(handler: grpc.RpcMethodHandler, sealed: SealedCall,
                    audit: _CallAudit) -> grpc.RpcMethodHandler:
    behavior = _behavior(handler)
    respond = _stream if handler.response_streaming else _run

    def wrapped_streaming(requests: Iterator[Any], context: grpc.ServicerContext) -> Any:
        opened = sealed.requests(requests)
        return respond(lambda: behavior(opened, context), sealed, audit, context, requests)

    def wrapped_unary(request: Any, context: grpc.ServicerContext) -> Any:
        if isinstance(request, _Refused):
            _abort(context, request.error, audit)
        return respond(lambda: behavior(request, context), sealed, audit, context, None)

    wrapped = wrapped_streaming if handler.request_streaming else wrapped_unary
    return _rebuild(handler, wrapped, sealed.deserializer(handler.request_deserializer),
                    sealed.serializer(handler.response_serializer))


class SealingServerInterceptor(grpc.ServerInterceptor):
    """For `grpc.server(..., interceptors=[...])`; `policy` is its `EmbeddedPolicy`."""

    def __init__(self, policy: EmbeddedPolicy) -> None:
        self.policy = policy

    def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails],
                                                       grpc.RpcMethodHandler | None],
                          handler_call_details: grpc.HandlerCallDetails
                          ) -> grpc.RpcMethodHandler | None:
        details: Any = handler_call_details
        audit = _CallAudit(self.policy, details.method)
        try:
            call = self.policy.admit(details.method, details.invocation_metadata or ())
        except FastProxyError as error:
            # refused before anything else, so a refused caller learns no method names
            return _refusing_handler(continuation(handler_call_details), error, audit)
        handler = continuation(handler_call_details)
        if handler is None or call is None:
            return handler
        return _sealed_handler(handler, self.policy.sealed_call(call), audit)


# --- grpc.aio.server ------------------------------------------------------------------------


async def _aio_abort(context: grpc.aio.ServicerContext[Any, Any], error: FastProxyError,
                     audit: _CallAudit, unread: AsyncIterator[Any] | None = None) -> NoReturn:
    answer = audit.refused(error, context.peer())
    if unread is not None:
        await drain(unread)
    await context.abort(answer.code, answer.details, answer.trailers)
    raise AssertionError("context.abort returned")  # pragma: no cover


def _aio_refusing_handler(handler: grpc.RpcMethodHandler | None, error: FastProxyError,
                          audit: _CallAudit) -> grpc.RpcMethodHandler:
    streaming = handler is None or handler.request_streaming

    async def refuse(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await _aio_abort(context, error, audit, request if streaming else None)
    return _rebuild(handler, refuse, None, None)


def _aio_sealed_handler(handler: grpc.RpcMethodHandler, sealed: SealedCall,
                        audit: _CallAudit) -> grpc.RpcMethodHandler:
    behavior = _behavior(handler)
    takes_stream = handler.request_streaming

    def first(request: Any) -> Any:
        return sealed.aio_requests(request) if takes_stream else sealed.check(request)

    async def settle(context: grpc.aio.ServicerContext[Any, Any], request: Any) -> None:
        if sealed.error is not None:
            await _aio_abort(context, sealed.error, audit, request if takes_stream else None)

    if handler.response_streaming and not inspect.iscoroutinefunction(behavior):
        async def wrapped_stream(request: Any, context: grpc.aio.ServicerContext[Any, Any]
                                 ) -> AsyncIterator[Any]:
            try:
                responses = behavior(first(request), context)
                if inspect.isasyncgen(responses):
                    async for response in responses:
                        yield response
                else:  # a sync generator, which grpc.aio also accepts
                    for response in responses:
                        yield response
            except Exception:
                await settle(context, request)
                raise
            await settle(context, request)
        wrapped: Callable[..., Any] = wrapped_stream
    else:  # a coroutine: returns the one response, or writes with context.write()
        async def wrapped_call(request: Any,
                               context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            try:
                result = await behavior(first(request), context)
            except Exception:
                await settle(context, request)
                raise
            await settle(context, request)
            return result
        wrapped = wrapped_call
    return _rebuild(handler, wrapped, sealed.deserializer(handler.request_deserializer),
                    sealed.serializer(handler.response_serializer))


class AioSealingServerInterceptor(grpc.aio.ServerInterceptor):
    """For `grpc.aio.server(interceptors=[...])`; `policy` is its `EmbeddedPolicy`."""

    def __init__(self, policy: EmbeddedPolicy) -> None:
        self.policy = policy

    async def intercept_service(self, continuation: Any,
                                handler_call_details: grpc.HandlerCallDetails
                                ) -> grpc.RpcMethodHandler:
        details: Any = handler_call_details
        audit = _CallAudit(self.policy, details.method)
        try:
            call = self.policy.admit(details.method, details.invocation_metadata or ())
        except FastProxyError as error:
            return _aio_refusing_handler(await continuation(handler_call_details), error,
                                         audit)
        handler = await continuation(handler_call_details)
        if handler is None or call is None:
            return handler
        return _aio_sealed_handler(handler, self.policy.sealed_call(call), audit)


# --- public constructors --------------------------------------------------------------------


def server_interceptors(*, service: str, center: str | None = None,
                        policy_file: str | None = None, node_id: str | None = None,
                        token: str | None = None, advertise: str = "", start: bool = True,
                        **options: Any) -> list[grpc.ServerInterceptor]:
    """Interceptors for a sync `grpc.server(..., interceptors=...)` that admit, open and seal
    every call as `service`'s in-proxy would. `advertise` ("HOST:PORT" of this server) is
    registered at the Center as an endpoint of `service`. Further keyword options go to
    `EmbeddedPolicy` (credentials, pinned_key, cache_dir, max_message_bytes, ...)."""
    policy = EmbeddedPolicy(service=service, center=center, policy_file=policy_file,
                            node_id=node_id, token=token, advertise=advertise, **options)
    if start:
        policy.start()
    return [SealingServerInterceptor(policy)]


def aio_server_interceptors(*, service: str, center: str | None = None,
                            policy_file: str | None = None, node_id: str | None = None,
                            token: str | None = None, advertise: str = "", start: bool = True,
                            **options: Any) -> list[grpc.aio.ServerInterceptor]:
    """The `grpc.aio.server(interceptors=...)` twin of `server_interceptors`."""
    policy = EmbeddedPolicy(service=service, center=center, policy_file=policy_file,
                            node_id=node_id, token=token, advertise=advertise, **options)
    if start:
        policy.start()
    return [AioSealingServerInterceptor(policy)]
