"""Telemetry configuration and log lines, in process: with no exporter nothing traces."""

from __future__ import annotations

import io
import json
import logging

import grpc
import pytest
from opentelemetry.sdk.trace import TracerProvider

import fastproxy
from fastproxy.errors import FastProxyError, Reason
from fastproxy.telemetry.logs import JsonFormatter, TextFormatter, log_event
from fastproxy.telemetry.setup import (
    TelemetryConfigError,
    configure_telemetry,
    exporter_name,
    otlp_protocol,
)
from proxy_svc.forward import ForwardingHandler, PassThroughRole
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
        assert telemetry.tracer_provider.resource.attributes["service.name"] == "fastproxy-test"
    finally:
        telemetry.shutdown()


def test_a_proxy_without_telemetry_forwards_without_the_observed_path() -> None:
    handler = ForwardingHandler(PassThroughRole("in", ["127.0.0.1:1"]), UpstreamPool(1 << 20))
    assert handler._handle == handler._forward  # no span, no metric, no per-call record
    observed = ForwardingHandler(
        PassThroughRole("in", ["127.0.0.1:1"]), UpstreamPool(1 << 20),
        observer=CallObserver.with_tracer("in", "svc", lambda: 1,
                                          TracerProvider().get_tracer("t"), None))
    assert observed._handle == observed._forward_observed


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
    assert err.status == grpc.StatusCode.PERMISSION_DENIED
