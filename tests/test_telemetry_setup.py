"""Telemetry configuration and log lines, in process: with no exporter nothing traces."""

from __future__ import annotations

import dataclasses
import io
import json
import logging
from typing import cast

import grpc
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider, sampling
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    Decision,
    ParentBased,
    Sampler,
    TraceIdRatioBased,
)
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, set_span_in_context
from support.transport import (
    PassThroughRole,
    pass_through_plan,
)

import fastproxy
from fastproxy.hosting.refusal import STATUS_OF_REASON, HostRole
from fastproxy.pipeline.reasons import FastProxyError, Reason
from fastproxy.telemetry.logs import JsonFormatter, TextFormatter, log_event
from fastproxy.telemetry.setup import (
    DEFAULT_TRACE_SAMPLE_RATIO,
    TelemetryConfigError,
    configure_telemetry,
    exporter_name,
    otlp_protocol,
)
from proxy_svc.forward import ForwardingHandler
from proxy_svc.observe import CallObserver
from proxy_svc.upstream import UpstreamPool


def test_with_no_exporter_configured_telemetry_is_off() -> None:
    telemetry = configure_telemetry("x", env={})
    assert not telemetry.tracing and not telemetry.metrics
    assert telemetry.tracer("fastproxy.proxy") is None


def test_an_otlp_endpoint_turns_traces_and_metrics_on_unless_an_exporter_is_none() -> None:
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317"}
    assert exporter_name("traces", env) == "otlp"
    assert exporter_name("traces", {**env, "OTEL_TRACES_EXPORTER": "none"}) == "none"
    assert exporter_name("metrics", {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "x"}) == "none"
    with pytest.raises(TelemetryConfigError, match="OTEL_TRACES_EXPORTER"):
        exporter_name("traces", {"OTEL_TRACES_EXPORTER": "zipkin"})


def test_the_otlp_protocol_is_grpc_or_http_protobuf() -> None:
    assert otlp_protocol("traces", {}) == "grpc"
    assert otlp_protocol("traces", {"OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}) \
        == "http/protobuf"
    assert otlp_protocol("metrics", {"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
                                     "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL": "http/protobuf"}) \
        == "http/protobuf"
    with pytest.raises(TelemetryConfigError):
        otlp_protocol("traces", {"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"})


def test_configured_traces_install_a_batched_tracer_provider() -> None:
    telemetry = configure_telemetry(
        "fastproxy-test", env={"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1",
                               "OTEL_METRICS_EXPORTER": "none"}, install_global=False)
    try:
        assert telemetry.tracing and not telemetry.metrics
        assert telemetry.tracer_provider is not None
        assert telemetry.tracer_provider.resource.attributes["service.name"] == "fastproxy-test"
    finally:
        telemetry.shutdown()


def test_a_proxy_without_telemetry_forwards_without_the_observed_path() -> None:
    handler = ForwardingHandler(PassThroughRole("in", ["127.0.0.1:1"]), UpstreamPool(1 << 20))
    assert handler._handle == handler._forward  # no span, no metric, no per-call record
    observed = ForwardingHandler(
        PassThroughRole("in", ["127.0.0.1:1"]), UpstreamPool(1 << 20),
        observer=CallObserver.with_tracer(HostRole.IN, "svc", lambda: 1,
                                          TracerProvider().get_tracer("t"), None))
    assert observed._handle == observed._forward_observed


def test_the_services_load_no_opentelemetry_sdk_until_telemetry_is_configured() -> None:
    """Telemetry off costs no memory either: the SDK, its exporters and prometheus_client
    (about 4 MiB of RSS in a proxy) are imported only by `configure_telemetry`."""
    import subprocess
    import sys

    code = ("import sys, proxy_svc.app, server_svc.app, center_svc.server; "
            "loaded = [m for m in ('opentelemetry.sdk', 'opentelemetry.exporter', "
            "'prometheus_client') if any(n == m or n.startswith(m + '.') for n in sys.modules)]; "
            "assert not loaded, loaded")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_the_sdk_adds_no_tracing_interceptor_without_a_tracer_provider() -> None:
    with fastproxy.client_interceptors(service="chat_service") as plain:
        assert len(plain) == 4
    with fastproxy.client_interceptors(service="chat_service",
                                       tracer_provider=TracerProvider()) as traced:
        assert len(traced) == 8


def _formatted(formatter: logging.Formatter, **fields: object) -> str:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    logger = logging.getLogger("fastproxy.test-logs")
    logger.handlers = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    log_event(logger, logging.WARNING, "call refused", **fields)
    return stream.getvalue().strip()


def test_json_lines_carry_the_fields_and_the_current_trace_id() -> None:
    tracer = TracerProvider().get_tracer("t")
    with tracer.start_as_current_span("s") as span:
        line = json.loads(_formatted(JsonFormatter(), caller="a", reason="denied"))
    assert line["message"] == "call refused" and line["level"] == "warning"
    assert line["caller"] == "a" and line["reason"] == "denied"
    assert line["trace_id"] == format(span.get_span_context().trace_id, "032x")
    assert "trace_id" not in json.loads(_formatted(JsonFormatter(), caller="a"))


def test_text_lines_put_fields_after_the_message() -> None:
    line = _formatted(TextFormatter(), caller="a", detail="no rule lets 'a' call")
    assert line.endswith("call refused caller=a detail=\"no rule lets 'a' call\"")


def test_a_refusal_after_authentication_names_the_caller() -> None:
    err = FastProxyError(Reason.DENIED, "no rule", caller="chat_service")
    assert err.caller == "chat_service"
    assert STATUS_OF_REASON[err.reason] == grpc.StatusCode.PERMISSION_DENIED


# --- the default sampler -------------------------------------------------------------------

def _sampler_of(env: dict[str, str]) -> Sampler:
    telemetry = configure_telemetry(
        "fastproxy-test", env={"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1",
                               "OTEL_METRICS_EXPORTER": "none", **env},
        install_global=False)
    try:
        assert telemetry.tracer_provider is not None
        return cast(Sampler, telemetry.tracer_provider.sampler)
    finally:
        telemetry.shutdown()


def _described(sampler: Sampler) -> str:
    return str(sampler.get_description())


def _decision(sampler: Sampler, parent_flags: int | None, trace_id: int) -> Decision:
    context = None
    if parent_flags is not None:
        context = set_span_in_context(NonRecordingSpan(SpanContext(
            trace_id, 0x1234, is_remote=True, trace_flags=TraceFlags(parent_flags))))
    return sampler.should_sample(context, trace_id, "s").decision


SAMPLE, DROP = Decision.RECORD_AND_SAMPLE, Decision.DROP


def test_without_otel_traces_sampler_one_root_call_in_a_hundred_is_traced_and_parents_rule(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_TRACES_SAMPLER", raising=False)
    sampler = _sampler_of({})
    assert DEFAULT_TRACE_SAMPLE_RATIO == 0.01
    assert isinstance(sampler, ParentBased)
    assert _described(sampler) == _described(ParentBased(TraceIdRatioBased(0.01)))
    # A root is sampled by its trace id: below the ratio's bound, yes; above it, no.
    bound = TraceIdRatioBased.get_bound_for_rate(0.01)
    assert _decision(sampler, None, bound - 1) is SAMPLE
    assert _decision(sampler, None, bound + 1) is DROP
    # A caller's decision is followed whatever the trace id.
    assert _decision(sampler, int(TraceFlags.SAMPLED), (1 << 127) + 5) is SAMPLE
    assert _decision(sampler, int(TraceFlags.DEFAULT), 5) is DROP


def test_otel_traces_sampler_arg_sets_the_default_samplers_ratio() -> None:
    sampler = _sampler_of({"OTEL_TRACES_SAMPLER_ARG": "0.25"})
    assert _described(sampler) == _described(ParentBased(TraceIdRatioBased(0.25)))
    assert "TraceIdRatioBased{0.0}" in _described(_sampler_of({"OTEL_TRACES_SAMPLER_ARG": "0"}))


@pytest.mark.parametrize("ratio", ["abc", "1.5", "-0.1", "nan"])
def test_a_ratio_that_is_not_a_share_is_refused_naming_the_variable(ratio: str) -> None:
    with pytest.raises(TelemetryConfigError, match=f"OTEL_TRACES_SAMPLER_ARG={ratio}"):
        _sampler_of({"OTEL_TRACES_SAMPLER_ARG": ratio})


def test_with_otel_traces_sampler_set_the_sdk_builds_the_sampler_it_names(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "parentbased_always_on")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "not read")
    assert _sampler_of({"OTEL_TRACES_SAMPLER": "parentbased_always_on"}) \
        is sampling.DEFAULT_ON
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_off")
    assert _sampler_of({"OTEL_TRACES_SAMPLER": "always_off"}) is sampling.ALWAYS_OFF


# --- the unsampled path ----------------------------------------------------------------------

def _unchanged(message: bytes, now: float) -> bytes:
    return message


def _observed_call(sampler: Sampler, metadata: tuple[tuple[str, str | bytes], ...],
                   proxy: str = "in") -> tuple[tuple[tuple[str, str | bytes], ...],
                                               list[ReadableSpan]]:
    """One call through a CallObserver whose spans are kept in memory: (the metadata it
    forwards, the spans it ended)."""
    kept = InMemorySpanExporter()
    provider = TracerProvider(sampler=sampler)
    provider.add_span_processor(SimpleSpanProcessor(kept))
    observer = CallObserver.with_tracer(HostRole(proxy), "song_service" if proxy == "in"
                                        else "chat_service", lambda: 3,
                                        provider.get_tracer("t"), None)
    record = observer.begin("/demo.v1.Echo/Unary", metadata, "ipv4:127.0.0.1:5555")
    observer.admitted(record, dataclasses.replace(pass_through_plan("", None, ()),
                                                  caller="chat_service",
                                                  callee="song_service"))
    record.code = grpc.StatusCode.OK
    observer.end(record, "/demo.v1.Echo/Unary")
    assert record.forward_metadata is not None
    return record.forward_metadata, list(kept.get_finished_spans())


TRACE = "0af7651916cd43dd8448eb211c80319c"
SAMPLED_BIT = 0x01


def _traceparent(forwarded: tuple[tuple[str, str | bytes], ...]) -> list[str]:
    values = [str(value) for key, value in forwarded if key == "traceparent"]
    assert len(values) == 1, forwarded
    return values[0].split("-")


def test_a_dropped_root_call_records_no_span_and_forwards_its_context_not_sampled() -> None:
    forwarded, spans = _observed_call(ALWAYS_OFF, (("x-app", "v"),))
    assert spans == []
    version, trace_id, _parent, flags = _traceparent(forwarded)
    # Not sampled (bit 0 clear); the SDK sets the W3C level-2 "random trace id" bit (02)
    # on the trace ids it makes.
    assert version == "00" and int(flags, 16) & SAMPLED_BIT == 0 and trace_id != "0" * 32
    assert ("x-app", "v") in forwarded


def test_a_caller_that_did_not_sample_is_followed_under_the_default_sampler() -> None:
    incoming = f"00-{TRACE}-b7ad6b7169203331-00"
    forwarded, spans = _observed_call(ParentBased(TraceIdRatioBased(1.0)),
                                      (("traceparent", incoming),))
    assert spans == []
    version, trace_id, parent, flags = _traceparent(forwarded)
    assert (version, trace_id, flags) == ("00", TRACE, "00")
    assert parent != "b7ad6b7169203331"  # this hop's (unrecorded) span


@pytest.mark.parametrize("proxy", ["in", "out"])
def test_a_sampled_call_gets_one_span_with_every_attribute_set_once(proxy: str) -> None:
    incoming = f"00-{TRACE}-b7ad6b7169203331-01"
    forwarded, spans = _observed_call(ParentBased(TraceIdRatioBased(0.0)),
                                      (("traceparent", incoming),), proxy)
    [span] = spans
    context = span.get_span_context()
    assert context is not None
    assert _traceparent(forwarded) == ["00", TRACE, format(context.span_id, "016x"), "01"]
    assert span.parent is not None and span.parent.span_id == 0xb7ad6b7169203331
    assert span.name == "demo.v1.Echo/Unary"
    assert dict(span.attributes or {}) == {
        "rpc.system": "grpc", "rpc.service": "demo.v1.Echo", "rpc.method": "Unary",
        "fastproxy.proxy": proxy, "fastproxy.caller": "chat_service",
        "fastproxy.callee": "song_service", "network.peer.address": "127.0.0.1",
        "network.peer.port": 5555, "rpc.grpc.status_code": 0,
        "fastproxy.policy.revision": 3}
