"""What a proxy records about each call: the audit line of a refusal (always), and, when
telemetry is on, one SERVER span and the call's metrics.

Why our own spans and not `opentelemetry-instrumentation-grpc`'s server interceptor: the
proxy serves every method with one generic raw-bytes handler, while that interceptor wraps
the per-method handler and its servicer context; it cannot add the caller, callee, refusal
reason and policy revision only the pipeline knows, it does not replace the `traceparent`
the proxy forwards (the next hop's parent must be this hop's span), and it would run (and
cost) on every call even with no exporter configured. Here, with no exporter and no metrics,
`ForwardingHandler` never reaches this module's per-call code.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import grpc
from opentelemetry.trace import Span, SpanKind

from fastproxy.pipeline.reasons import FastProxyError
from fastproxy.telemetry.logs import audit_refused_call
from fastproxy.telemetry.metrics import ProxyMetrics
from fastproxy.telemetry.tracing import (
    CallSpans,
    Unsampled,
    end_call_span,
    trace_id_of,
    trace_metadata_of,
    without_trace_context,
)

if TYPE_CHECKING:  # it loads the SDK: only once tracing is configured
    from fastproxy.telemetry.sampling import SamplingShortcut

Metadata = tuple[tuple[str, str | bytes], ...]


_CODE_NAMES = {code: code.name for code in grpc.StatusCode}


class CallRecord:
    """One call through the proxy, as telemetry sees it."""

    __slots__ = ("callee", "caller", "code", "detail", "forward_metadata", "opened_s",
                 "reason", "received", "sealed_s", "sent", "span", "started", "trace_id")

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

    def refused(self, err: FastProxyError) -> None:
        self.code = err.status
        self.reason = err.reason.value
        self.detail = err.detail
        if err.caller:
            self.caller = err.caller


class TimedPlan:
    """A `CallPlan` that counts bytes and the time spent in its message transforms.
    `seals_requests`: the out-proxy seals requests and opens responses; the in-proxy the
    reverse."""

    __slots__ = ("_plan", "_record", "_seals_requests")

    def __init__(self, plan: Any, record: CallRecord, seals_requests: bool) -> None:
        self._plan = plan
        self._record = record
        self._seals_requests = seals_requests

    @property
    def endpoints(self) -> tuple[str, ...]:
        return self._plan.endpoints  # type: ignore[no-any-return]

    @property
    def timeout_ms(self) -> int | None:
        return self._plan.timeout_ms  # type: ignore[no-any-return]

    @property
    def added_metadata(self) -> Metadata:
        return self._plan.added_metadata  # type: ignore[no-any-return]

    def request(self, message: bytes, now: float) -> bytes:
        started = time.perf_counter()
        return self._account(message, self._plan.request(message, now), started,
                             sealing=self._seals_requests)

    def response(self, message: bytes, now: float) -> bytes:
        started = time.perf_counter()
        return self._account(message, self._plan.response(message, now), started,
                             sealing=not self._seals_requests)

    def _account(self, message: bytes, out: bytes, started: float, *, sealing: bool) -> bytes:
        spent = time.perf_counter() - started
        record = self._record
        if sealing:
            record.sealed_s += spent
        else:
            record.opened_s += spent
        record.received += len(message)
        record.sent += len(out)
        return out


def _parties(plan: Any, proxy: str, service: str) -> tuple[str, str]:
    """(caller, callee) of an admitted call; the pipeline's calls name the other side."""
    call = getattr(plan, "call", None)
    if proxy == "in":
        return str(getattr(call, "caller", "")), service
    return service, str(getattr(call, "destination", ""))


class CallObserver:
    """Per proxy process. `revision` reads the policy revision in force. `spans` and
    `metrics` are None when off; `active` says whether either is on (checked once per call
    by the handler, which otherwise skips everything here but the audit line)."""

    def __init__(self, proxy: str, service: str, revision: Callable[[], int] = lambda: 0,
                 spans: CallSpans | None = None, metrics: ProxyMetrics | None = None) -> None:
        self.proxy = proxy
        self.service = service
        self.revision = revision
        self.spans = spans
        self.metrics = metrics
        self.active = spans is not None or metrics is not None

    @classmethod
    def with_tracer(cls, proxy: str, service: str, revision: Callable[[], int],
                    tracer: Any | None, metrics: ProxyMetrics | None,
                    shortcut: SamplingShortcut | None = None) -> CallObserver:
        spans = None if tracer is None else CallSpans(tracer, proxy, SpanKind.SERVER, service,
                                                      shortcut)
        return cls(proxy, service, revision, spans, metrics)

    # --- per call, only when active ---------------------------------------------------

    def begin(self, method: str, metadata: Metadata, peer: str | None) -> CallRecord:
        if self.metrics is not None:
            self.metrics.active += 1
        if self.spans is None:
            return CallRecord(None, None)
        started = self.spans.start_from(method, metadata, peer)
        if isinstance(started, Unsampled):
            return CallRecord(None, started.forward, started.trace_id)
        # The next hop's parent is this span: replace the incoming trace context.
        return CallRecord(started, without_trace_context(metadata) + trace_metadata_of(started))

    def admitted(self, record: CallRecord, plan: Any) -> Any:
        record.caller, record.callee = _parties(plan, self.proxy, self.service)
        if self.metrics is None:
            return plan
        return TimedPlan(plan, record, seals_requests=self.proxy == "out")

    def end(self, record: CallRecord, method: str) -> None:
        code = record.code or grpc.StatusCode.CANCELLED
        span = record.span
        if span is not None and span.is_recording():
            # The span started with this host's own service (callee of an in-proxy, caller of
            # an out-proxy): it learns the other party here. Nothing is built for a span the
            # sampler dropped.
            known = bool(self.service)
            end_call_span(span, code,
                          caller=record.caller if self.proxy == "in" or not known else "",
                          callee=record.callee if self.proxy != "in" or not known else "",
                          reason=record.reason, revision=self.revision(), detail=record.detail)
        metrics = self.metrics
        if metrics is not None:
            metrics.active -= 1
            metrics.record_call(record.caller, record.callee, method, _CODE_NAMES[code],
                                time.perf_counter() - record.started, record.reason)
            metrics.received_bytes += record.received
            metrics.sent_bytes += record.sent
            metrics.sealed_s += record.sealed_s
            metrics.opened_s += record.opened_s

    # --- refusals, always --------------------------------------------------------------

    def audit_refusal(self, method: str, err: FastProxyError, peer: str | None,
                      record: CallRecord | None, plan: Any = None) -> None:
        """One audit line per refused call: who called whom, what, why, under which
        revision, from where. The detail is the one the caller is told (no secrets).
        The parties come from `record` (telemetry on) or else from `plan` (the call was
        admitted before it was refused, e.g. its upstream was unreachable)."""
        if record is not None:
            known_caller, known_callee = record.caller, record.callee
        elif plan is not None:
            known_caller, known_callee = _parties(plan, self.proxy, self.service)
        else:
            known_caller, known_callee = "", ""
        if self.proxy == "in":
            caller, callee = err.caller or known_caller, self.service
        else:
            caller, callee = self.service, known_callee
        trace_id = None
        if record is not None:
            trace_id = record.trace_id
            if record.span is not None:
                trace_id = trace_id_of(record.span)
        audit_refused_call(proxy=self.proxy, caller=caller, callee=callee, method=method,
                           reason=err.reason.value, revision=self.revision(), peer=peer or "",
                           detail=err.detail, trace_id=trace_id)
