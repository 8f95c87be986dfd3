"""What a proxy records about each call when telemetry is on: one SERVER span and the
call's metrics.

Why our own spans and not `opentelemetry-instrumentation-grpc`'s server interceptor: the
proxy serves every method with one generic raw-bytes handler, while that interceptor wraps
the per-method handler and its servicer context; it cannot add the caller, callee, refusal
reason and policy revision only the pipeline knows, it does not replace the `traceparent`
the proxy forwards (the next hop's parent must be this hop's span), and it would run (and
cost) on every call even with no exporter configured. Here, with no exporter and no metrics,
`ForwardingHandler` never reaches this module's per-call code. (Audit lines of refused
calls are written by `fastproxy.hosting.refusal`, with telemetry on or off.)
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import grpc

from fastproxy.hosting.refusal import HostRole
from fastproxy.pipeline.metadata import Metadata
from fastproxy.pipeline.reasons import FastProxyError
from fastproxy.telemetry.logs import audit_would_deny
from proxy_svc.plan import CallPlan

if TYPE_CHECKING:
    # OpenTelemetry (API and, for sampling, SDK) is imported only once telemetry is on: a
    # proxy without any OTEL_* setting never loads it (issue 15, memory).
    from opentelemetry.trace import Span

    from fastproxy.telemetry.metrics import ProxyMetrics
    from fastproxy.telemetry.sampling import SamplingShortcut
    from fastproxy.telemetry.tracing import CallSpans

_CODE_NAMES = {code: code.name for code in grpc.StatusCode}


class CallRecord:
    """One call through the proxy, as telemetry sees it."""

    __slots__ = ("callee", "caller", "code", "detail", "forward_metadata", "opened_s",
                 "reason", "received", "sealed_s", "sent", "span", "started", "trace_id",
                 "would_deny")

    def __init__(self, span: Span | None, forward_metadata: Metadata | None,
                 trace_id: str | None = None) -> None:
        self.span = span
        self.forward_metadata = forward_metadata
        # The trace of a call no span was started for (the sampling shortcut's).
        self.trace_id = trace_id
        self.started = time.perf_counter()
        self.caller = ""
        self.callee = ""
        self.code: grpc.StatusCode | None = None
        self.reason: str | None = None
        self.detail = ""
        self.received = 0
        self.sent = 0
        self.sealed_s = 0.0
        self.opened_s = 0.0
        self.would_deny = ""

    def refused(self, err: FastProxyError, code: grpc.StatusCode) -> None:
        self.code = code
        self.reason = err.reason.value
        self.detail = err.detail
        if err.caller:
            self.caller = err.caller
        if err.callee and not self.callee:
            self.callee = err.callee

    def trace_id_now(self) -> str | None:
        """The call's trace id, for its audit line."""
        if self.span is None:
            return self.trace_id
        from fastproxy.telemetry.tracing import trace_id_of

        return trace_id_of(self.span)


def timed(plan: CallPlan, record: CallRecord, seals_requests: bool) -> CallPlan:
    """`plan` with transforms that count bytes and the time spent in them. `seals_requests`:
    the out-proxy seals requests and opens responses; the in-proxy the reverse."""
    def account(message: bytes, out: bytes | None, started: float, sealing: bool) -> None:
        spent = time.perf_counter() - started
        if sealing:
            record.sealed_s += spent
        else:
            record.opened_s += spent
        record.received += len(message)
        record.sent += len(out) if out is not None else 0

    def request(message: bytes) -> bytes | None:
        started = time.perf_counter()
        out = plan.request(message)
        account(message, out, started, seals_requests)
        return out

    def response(message: bytes) -> bytes:
        started = time.perf_counter()
        out = plan.response(message)
        account(message, out, started, not seals_requests)
        return out

    return dataclasses.replace(plan, request=request, response=response)


class CallObserver:
    """Per proxy process. `revision` reads the policy revision in force. `spans` and
    `metrics` are None when off; `active` says whether either is on (checked once per call
    by the handler, which otherwise skips everything here)."""

    def __init__(self, role: HostRole, service: str, revision: Callable[[], int] = lambda: 0,
                 spans: CallSpans | None = None, metrics: ProxyMetrics | None = None) -> None:
        self.role = role
        self.service = service
        self.revision = revision
        self.spans = spans
        self.metrics = metrics
        self.active = spans is not None or metrics is not None

    @classmethod
    def with_tracer(cls, role: HostRole, service: str, revision: Callable[[], int],
                    tracer: Any | None, metrics: ProxyMetrics | None,
                    shortcut: SamplingShortcut | None = None) -> CallObserver:
        spans = None
        if tracer is not None:
            from opentelemetry.trace import SpanKind

            from fastproxy.telemetry.tracing import CallSpans

            spans = CallSpans(tracer, role.value, SpanKind.SERVER, service, shortcut)
        return cls(role, service, revision, spans, metrics)

    # --- per call, only when active ---------------------------------------------------

    def begin(self, method: str, metadata: Metadata, peer: str | None) -> CallRecord:
        if self.metrics is not None:
            self.metrics.active += 1
        if self.spans is None:
            record = CallRecord(None, None)
        else:
            from fastproxy.telemetry.tracing import (
                Unsampled,
                trace_metadata_of,
                without_trace_context,
            )

            started = self.spans.start_from(method, metadata, peer)
            if isinstance(started, Unsampled):
                record = CallRecord(None, started.forward, started.trace_id)
            else:
                # The next hop's parent is this span: replace the incoming trace context.
                record = CallRecord(started, without_trace_context(metadata)
                                    + trace_metadata_of(started))
        # This host's own side of every call it sees, refused before admission or not: the
        # callee of an in-proxy, the caller of an out-proxy.
        if self.role.guards:
            record.callee = self.service
        else:
            record.caller = self.service
        return record

    def would_deny(self, record: CallRecord | None, plan: CallPlan, method: str,
                   peer: str | None) -> None:
        """A call that passed only in audit mode: its audit line (telemetry on or off), and
        when on, the metric and the mark on its span (at its end)."""
        audit_would_deny(proxy=self.role.value, caller=plan.caller, callee=plan.callee,
                         method=method, revision=self.revision(), audit=plan.would_deny,
                         peer=peer or "",
                         trace_id=record.trace_id_now() if record is not None else None)
        if record is not None:
            record.would_deny = plan.would_deny
            if self.metrics is not None:
                self.metrics.would_deny(plan.caller, method)

    def admitted(self, record: CallRecord, plan: CallPlan) -> CallPlan:
        record.caller, record.callee = plan.caller, plan.callee
        if self.metrics is None:
            return plan
        return timed(plan, record, seals_requests=self.role is HostRole.OUT)

    def end(self, record: CallRecord, method: str) -> None:
        code = record.code or grpc.StatusCode.CANCELLED
        span = record.span
        guards = self.role.guards
        if span is not None and span.is_recording():
            # The span started with this host's own service (callee of an in-proxy, caller of
            # an out-proxy): it learns the other party here. Nothing is built for a span the
            # sampler dropped.
            from fastproxy.telemetry.tracing import end_call_span

            known = bool(self.service)
            end_call_span(span, code,
                          caller=record.caller if guards or not known else "",
                          callee=record.callee if not guards or not known else "",
                          reason=record.reason, revision=self.revision(), detail=record.detail,
                          would_deny=record.would_deny)
        metrics = self.metrics
        if metrics is not None:
            metrics.active -= 1
            metrics.record_call(record.caller, record.callee, method, _CODE_NAMES[code],
                                time.perf_counter() - record.started, record.reason)
            metrics.received_bytes += record.received
            metrics.sent_bytes += record.sent
            metrics.sealed_s += record.sealed_s
            metrics.opened_s += record.opened_s
