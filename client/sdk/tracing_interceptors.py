"""The SDK's CLIENT span: one per call the app makes, the parent of the proxies' spans.

These interceptors come first in the set (outermost), so the span is current while the
SDK's own interceptors build the call's metadata: `SdkCore.plan` then writes this span's
`traceparent`. The span ends when the call is done (through retries, at the end of the
attempt whose outcome the app sees for unary calls; at the first attempt's end for a
streaming call that was retried). They are only added when a tracer is configured: with
none, the SDK creates no span.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind

from fastproxy.hosting.grpc_aio import value_now
from fastproxy.hosting.refusal import HostRole
from fastproxy.pipeline.reasons import ERROR_TRAILER
from fastproxy.telemetry.tracing import CallSpans, end_call_span


def client_spans(tracer_provider: Any | None, service: str) -> CallSpans | None:
    """CLIENT spans from `tracer_provider` (else OpenTelemetry's global one), or None when
    no SDK tracer provider is configured (the API's default creates only no-op spans)."""
    provider = tracer_provider or trace.get_tracer_provider()
    if isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider):
        return None
    return CallSpans(provider.get_tracer("fastproxy.sdk"), HostRole.CLIENT.value, SpanKind.CLIENT,
                     service)


def _reason(trailers: Any) -> str | None:
    for key, value in trailers or ():
        if key == ERROR_TRAILER:
            return str(value)
    return None


def _end_from_call(span: Span, call: Any, aio: bool) -> None:
    try:
        if aio:
            code, trailers = value_now(call.code()), value_now(call.trailing_metadata())
        else:
            code, trailers = call.code(), call.trailing_metadata()
    except Exception:  # a call that failed before it had a status
        code, trailers = grpc.StatusCode.UNKNOWN, None
    end_call_span(span, code or grpc.StatusCode.UNKNOWN, reason=_reason(trailers))


def _end_from_error(span: Span, error: BaseException) -> None:
    if isinstance(error, grpc.RpcError) and isinstance(error, grpc.Call):
        end_call_span(span, error.code(), reason=_reason(error.trailing_metadata()),
                      detail=error.details() or "")
    else:
        end_call_span(span, grpc.StatusCode.UNKNOWN, detail=type(error).__name__)


class _SyncTracing:
    def __init__(self, spans: CallSpans) -> None:
        self._spans = spans

    def _traced(self, continuation: Callable[[Any, Any], Any], details: Any,
                request: Any) -> Any:
        span = self._spans.start(details.method)
        token = otel_context.attach(trace.set_span_in_context(span))
        try:
            call = continuation(details, request)
        except BaseException as error:
            _end_from_error(span, error)
            raise
        finally:
            otel_context.detach(token)
        call.add_done_callback(lambda done: _end_from_call(span, done, aio=False))
        return call


class SyncUnaryUnaryTracing(_SyncTracing, grpc.UnaryUnaryClientInterceptor):
    def intercept_unary_unary(self, continuation: Any, client_call_details: Any,
                              request: Any) -> Any:
        return self._traced(continuation, client_call_details, request)


class SyncUnaryStreamTracing(_SyncTracing, grpc.UnaryStreamClientInterceptor):
    def intercept_unary_stream(self, continuation: Any, client_call_details: Any,
                               request: Any) -> Any:
        return self._traced(continuation, client_call_details, request)


class SyncStreamUnaryTracing(_SyncTracing, grpc.StreamUnaryClientInterceptor):
    def intercept_stream_unary(self, continuation: Any, client_call_details: Any,
                               request_iterator: Any) -> Any:
        return self._traced(continuation, client_call_details, request_iterator)


class SyncStreamStreamTracing(_SyncTracing, grpc.StreamStreamClientInterceptor):
    def intercept_stream_stream(self, continuation: Any, client_call_details: Any,
                                request_iterator: Any) -> Any:
        return self._traced(continuation, client_call_details, request_iterator)


class _AioTracing:
    def __init__(self, spans: CallSpans) -> None:
        self._spans = spans

    async def _traced(self, continuation: Callable[[Any, Any], Awaitable[Any]], details: Any,
                      request: Any) -> Any:
        method = details.method
        span = self._spans.start(method.decode() if isinstance(method, bytes) else method)
        token = otel_context.attach(trace.set_span_in_context(span))
        try:
            call = await continuation(details, request)
        except BaseException as error:
            _end_from_error(span, error)
            raise
        finally:
            otel_context.detach(token)
        call.add_done_callback(lambda done: _end_from_call(span, done, aio=True))
        return call


class AioUnaryUnaryTracing(_AioTracing, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation: Any, client_call_details: Any,
                                    request: Any) -> Any:
        return await self._traced(continuation, client_call_details, request)


class AioUnaryStreamTracing(_AioTracing, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation: Any, client_call_details: Any,
                                     request: Any) -> Any:
        return await self._traced(continuation, client_call_details, request)


class AioStreamUnaryTracing(_AioTracing, grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(self, continuation: Any, client_call_details: Any,
                                     request_iterator: Any) -> Any:
        return await self._traced(continuation, client_call_details, request_iterator)


class AioStreamStreamTracing(_AioTracing, grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(self, continuation: Any, client_call_details: Any,
                                      request_iterator: Any) -> Any:
        return await self._traced(continuation, client_call_details, request_iterator)


def sync_tracing(spans: CallSpans) -> tuple[Any, ...]:
    return (SyncUnaryUnaryTracing(spans), SyncUnaryStreamTracing(spans),
            SyncStreamUnaryTracing(spans), SyncStreamStreamTracing(spans))


def aio_tracing(spans: CallSpans) -> tuple[Any, ...]:
    return (AioUnaryUnaryTracing(spans), AioUnaryStreamTracing(spans),
            AioStreamUnaryTracing(spans), AioStreamStreamTracing(spans))
