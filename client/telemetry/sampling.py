"""Deciding a proxy's unsampled calls without the OpenTelemetry SDK.

Under the default sampler (parent-based, a ratio of root calls: `configure_telemetry`), 99
calls in 100 record no span, yet through the SDK each of them cost a proxy ~14 us: the W3C
extract, `start_span` for a `NonRecordingSpan`, and the inject of the next hop's context
(`bench/telemetry_micro.py`). Where the SDK's answer is certain, `SamplingShortcut` gives it
for a few string operations:
- a call whose `traceparent` says the caller did not sample it: no span (the parent-based
  sampler follows the caller), and the call's metadata goes on as it came, so every later
  hop sees the same unsampled trace (a hop that records nothing need not appear in it);
- a call with no trace context (a root): a trace id drawn as the SDK draws it, and the
  ratio sampler's own rule applied to it (`TraceIdRatioBased`: its low 64 bits under the
  rate's bound). Not sampled: no span, and a `traceparent` flagged not sampled (and, as the
  SDK flags the ids it draws, W3C's random-trace-id bit) is added for the next hops.
  Sampled: the id is handed to the SDK (`PresetTraceIds`), whose sampler then takes the
  same decision on the same id and records the span.
Everything else (a sampled caller, a `traceparent` this code does not parse) goes to the
SDK as before.

It is built only when the answer is certain: FastProxy's default sampler
(`OTEL_TRACES_SAMPLER` unset) and W3C propagation (`OTEL_PROPAGATORS` unset, or `tracecontext`
with or without `baggage`), since it reads and writes `traceparent` itself.
"""

from __future__ import annotations

import random
import re
import threading

from opentelemetry import propagate
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.sdk.trace.sampling import TraceIdRatioBased

from fastproxy.pipeline.metadata import Metadata
from fastproxy.telemetry.tracing import TRACE_KEYS, Unsampled

# Version 00 exactly, as the W3C header's version 00 defines it (no trailing fields).
_TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16


class PresetTraceIds(RandomIdGenerator):
    """The SDK's random ids, except that the next trace id on a thread can be handed in."""

    def __init__(self) -> None:
        self._next = threading.local()

    def preset(self, trace_id: int) -> None:
        self._next.trace_id = trace_id

    def clear(self) -> None:
        self._next.trace_id = 0

    def generate_trace_id(self) -> int:
        trace_id: int = getattr(self._next, "trace_id", 0)
        if trace_id:
            self._next.trace_id = 0
            return trace_id
        return super().generate_trace_id()


def w3c_propagation() -> bool:
    """Whether the process propagates trace context as W3C `traceparent` (and `tracestate`,
    `baggage`) only, as OpenTelemetry does with `OTEL_PROPAGATORS` unset."""
    fields = set(propagate.get_global_textmap().fields)
    return "traceparent" in fields and fields <= TRACE_KEYS


class SamplingShortcut:
    """See the module doc. `ratio`: the default sampler's share of root calls; `ids`: the
    id generator of the TracerProvider whose sampler that is."""

    __slots__ = ("_bound", "_ids")

    def __init__(self, ratio: float, ids: PresetTraceIds) -> None:
        self._bound = TraceIdRatioBased.get_bound_for_rate(ratio)
        self._ids = ids

    def decide(self, metadata: Metadata) -> Unsampled | None:
        """Unsampled when no span will be recorded for this call; None when the SDK is to
        start its span (for a sampled root, right after this, on this thread: the trace id
        is preset; `clear()` once the span is started)."""
        parent = None
        for key, value in metadata:
            if key == "traceparent":
                parent = value  # the last one, as the SDK's extract takes it
        if parent is None:
            trace_id = random.getrandbits(128)
            if not trace_id:
                return None
            if trace_id & TraceIdRatioBased.TRACE_ID_LIMIT < self._bound:
                self._ids.preset(trace_id)
                return None
            span_id = random.getrandbits(64) or 1
            header = f"00-{trace_id:032x}-{span_id:016x}-02"
            return Unsampled((*metadata, ("traceparent", header)), f"{trace_id:032x}")
        if not isinstance(parent, str):
            return None
        found = _TRACEPARENT.fullmatch(parent)
        if (found is None or int(found[3], 16) & 1 or found[1] == _ZERO_TRACE
                or found[2] == _ZERO_SPAN):
            return None
        return Unsampled(None, found[1])

    def clear(self) -> None:
        self._ids.clear()
