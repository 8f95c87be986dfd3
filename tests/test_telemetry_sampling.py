"""The sampling shortcut (`fastproxy.telemetry.sampling`): it answers for the SDK only where
the SDK's answer is certain, gives the same answer, and is built only under the default
sampler with W3C propagation. In process, against a real SDK TracerProvider."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import Any

import grpc
import pytest
from opentelemetry import propagate
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import (
    CarrierT,
    Getter,
    Setter,
    TextMapPropagator,
    default_getter,
    default_setter,
)
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import SpanKind, get_current_span

from fastproxy.hosting.refusal import HostRole, refuse
from fastproxy.pipeline.reasons import FastProxyError, Reason
from fastproxy.telemetry.sampling import PresetTraceIds, SamplingShortcut, Unsampled
from fastproxy.telemetry.setup import configure_telemetry
from fastproxy.telemetry.tracing import CallSpans, context_from_metadata
from proxy_svc.observe import CallObserver, CallRecord

Metadata = tuple[tuple[str, str | bytes], ...]
METHOD = "/demo.v1.Echo/Unary"
TRACE = "0af7651916cd43dd8448eb211c80319c"
SPAN = "b7ad6b7169203331"


class Tracing:
    """A TracerProvider as `configure_telemetry` builds it under the default sampler, with
    its spans kept in memory, and a proxy's CallSpans with the shortcut."""

    def __init__(self, ratio: float) -> None:
        self.ids = PresetTraceIds()
        self.kept = InMemorySpanExporter()
        self.provider = TracerProvider(sampler=ParentBased(TraceIdRatioBased(ratio)),
                                       id_generator=self.ids)
        self.provider.add_span_processor(SimpleSpanProcessor(self.kept))
        self.shortcut = SamplingShortcut(ratio, self.ids)
        self.spans = CallSpans(self.provider.get_tracer("t"), "in", SpanKind.SERVER,
                               "song_service", self.shortcut)

    def sdk_span(self, metadata: Metadata) -> Any:
        """What the SDK alone starts for `metadata` (no shortcut)."""
        return self.provider.get_tracer("sdk").start_span(
            "x", context=context_from_metadata(metadata))

    def finished(self) -> Sequence[ReadableSpan]:
        return self.kept.get_finished_spans()


@pytest.fixture
def half() -> Iterator[Tracing]:
    tracing = Tracing(0.5)
    yield tracing
    tracing.provider.shutdown()


@pytest.mark.parametrize("flags", ["00", "02", "fe"])
def test_a_caller_that_did_not_sample_is_answered_without_the_sdk_and_as_the_sdk_would(
        half: Tracing, flags: str) -> None:
    metadata: Metadata = (("x-app", "v"), ("traceparent", f"00-{TRACE}-{SPAN}-{flags}"),
                          ("tracestate", "vendor=1"))
    decided = half.shortcut.decide(metadata)
    assert decided == Unsampled(None, TRACE)  # forwarded as it came
    sdk = half.sdk_span(metadata)
    assert not sdk.is_recording()
    assert format(sdk.get_span_context().trace_id, "032x") == TRACE


@pytest.mark.parametrize("value", [
    f"00-{TRACE}-{SPAN}-01",                 # sampled: the SDK records it
    f"00-{TRACE}-{SPAN}-03",
    f"00-{TRACE.upper()}-{SPAN}-00",         # not W3C (upper-case hex)
    f"ff-{TRACE}-{SPAN}-00",                 # version ff is invalid
    f"01-{TRACE}-{SPAN}-00-extra",           # a later version: the SDK's to read
    f"00-{'0' * 32}-{SPAN}-00",              # invalid ids
    f"00-{TRACE}-{'0' * 16}-00",
    f"00-{TRACE}-{SPAN}-0",
    f" 00-{TRACE}-{SPAN}-00",                # leading space: the SDK strips it
])
def test_anything_else_with_a_traceparent_is_left_to_the_sdk(half: Tracing,
                                                             value: str) -> None:
    assert half.shortcut.decide((("traceparent", value),)) is None


def test_the_last_traceparent_counts_as_it_does_for_the_sdk(half: Tracing) -> None:
    metadata: Metadata = (("traceparent", f"00-{TRACE}-{SPAN}-00"),
                          ("traceparent", f"00-{TRACE}-{SPAN}-01"))
    assert half.shortcut.decide(metadata) is None
    assert half.sdk_span(metadata).is_recording()
    assert half.shortcut.decide(tuple(reversed(metadata))) == Unsampled(None, TRACE)
    assert not half.sdk_span(tuple(reversed(metadata))).is_recording()


def test_root_calls_are_sampled_at_the_ratio_once_not_twice(half: Tracing) -> None:
    """2,000 root calls at ratio 0.5: about half record a root span (were the ratio applied
    both by the shortcut and by the SDK on an id of its own, a quarter would), each sampled
    trace id passes the SDK's ratio rule, and each unsampled one forwards a traceparent the
    SDK reads as a valid, unsampled, random-id context."""
    bound = TraceIdRatioBased.get_bound_for_rate(0.5)
    unsampled = 0
    for _ in range(2000):
        started = half.spans.start_from(METHOD, (("x-app", "v"),), None)
        if isinstance(started, Unsampled):
            unsampled += 1
            assert started.forward is not None and started.forward[0] == ("x-app", "v")
            context = get_current_span(context_from_metadata(started.forward)
                                       ).get_span_context()
            assert context.is_valid and not context.trace_flags.sampled
            assert context.trace_flags.random_trace_id
            assert format(context.trace_id, "032x") == started.trace_id
            assert context.trace_id & TraceIdRatioBased.TRACE_ID_LIMIT >= bound
        else:
            assert started.is_recording()
            started.end()
    recorded = half.finished()
    assert len(recorded) + unsampled == 2000
    assert 800 <= len(recorded) <= 1200, len(recorded)
    for span in recorded:
        assert span.parent is None
        assert span.context.trace_id & TraceIdRatioBased.TRACE_ID_LIMIT < bound
    # Nothing is left preset: a span started by other code gets an id of its own.
    assert getattr(half.ids._next, "trace_id", 0) == 0


@pytest.mark.parametrize(("ratio", "recorded"), [(0.0, 0), (1.0, 200)])
def test_ratio_zero_and_one(ratio: float, recorded: int) -> None:
    tracing = Tracing(ratio)
    try:
        for _ in range(200):
            started = tracing.spans.start_from(METHOD, (), None)
            if not isinstance(started, Unsampled):
                started.end()
        assert len(tracing.finished()) == recorded
    finally:
        tracing.provider.shutdown()


def test_a_sampled_caller_still_gets_its_child_span(half: Tracing) -> None:
    started = half.spans.start_from(METHOD, (("traceparent", f"00-{TRACE}-{SPAN}-01"),),
                                    None)
    assert not isinstance(started, Unsampled) and started.is_recording()
    started.end()
    [span] = half.finished()
    assert span.parent is not None and format(span.parent.span_id, "016x") == SPAN


def test_an_unsampled_refusal_keeps_its_trace_id_on_the_audit_line(
        half: Tracing, caplog: pytest.LogCaptureFixture) -> None:
    observer = CallObserver.with_tracer(HostRole.IN, "song_service", lambda: 4,
                                        half.provider.get_tracer("t"), None, half.shortcut)
    record = observer.begin(METHOD, (("traceparent", f"00-{TRACE}-{SPAN}-00"),),
                            "ipv4:127.0.0.1:5000")
    assert isinstance(record, CallRecord) and record.span is None
    assert record.forward_metadata is None  # the call's metadata goes on as it came
    with caplog.at_level(logging.WARNING, logger="fastproxy.audit"):
        # what the forwarding handler does for a refused call
        refuse(FastProxyError(Reason.DENIED, "no rule", caller="chat_service"), HostRole.IN,
               service="song_service", other=record.caller, method=METHOD, revision=4,
               peer="ipv4:127.0.0.1:5000", trace_id=record.trace_id_now())
        record.code = grpc.StatusCode.PERMISSION_DENIED
        observer.end(record, METHOD)
    [line] = [entry for entry in caplog.records if entry.name == "fastproxy.audit"]
    assert line.fields["trace_id"] == TRACE  # type: ignore[attr-defined]
    assert half.finished() == ()


class _B3Like(TextMapPropagator):
    """A propagator with a field of its own: FastProxy cannot read its context itself."""

    def extract(self, carrier: CarrierT, context: Context | None = None,
                getter: Getter[CarrierT] = default_getter) -> Context:
        return context or Context()

    def inject(self, carrier: CarrierT, context: Context | None = None,
               setter: Setter[CarrierT] = default_setter) -> None:
        pass

    @property
    def fields(self) -> set[str]:
        return {"x-b3-traceid"}


def _configured(env: dict[str, str]) -> Any:
    telemetry = configure_telemetry("t", env={"OTEL_TRACES_EXPORTER": "console", **env},
                                    install_global=False)
    telemetry.shutdown()
    return telemetry.shortcut


def test_the_shortcut_is_built_only_under_the_default_sampler_and_w3c_propagation(
        monkeypatch: pytest.MonkeyPatch) -> None:
    assert isinstance(_configured({}), SamplingShortcut)
    assert isinstance(_configured({"OTEL_TRACES_SAMPLER_ARG": "0.2"}), SamplingShortcut)
    assert _configured({"OTEL_TRACES_SAMPLER": "parentbased_traceidratio"}) is None
    monkeypatch.setattr(propagate, "get_global_textmap", lambda: _B3Like())
    assert _configured({}) is None
