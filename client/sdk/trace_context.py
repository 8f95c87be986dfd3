"""W3C trace context (`traceparent`, `tracestate`) for the call's metadata, from the current
OpenTelemetry context, when a span is active."""

from __future__ import annotations

from opentelemetry import propagate, trace


def trace_metadata() -> tuple[tuple[str, str | bytes], ...]:
    if not trace.get_current_span().get_span_context().is_valid:
        return ()
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return tuple((key.lower(), value) for key, value in carrier.items())
