"""OTLP over HTTP/protobuf (`OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf`): a real HTTP receiver in
the test process (POST `/v1/traces` and `/v1/metrics`, bodies parsed as opentelemetry-proto's
`Export...ServiceRequest`) gets the spans of a call through both proxies to the server, one
trace with the parent links right, and the proxies' metrics."""

from __future__ import annotations

import time
from collections.abc import Iterator

import grpc
import pytest
from support.telemetry_stack import (
    CALLEE,
    CALLER,
    HttpOtlpReceiver,
    TelemetryStack,
    telemetry_stack,
)

from fastproxy.v1 import demo_pb2, demo_pb2_grpc

pytestmark = pytest.mark.timeout(90)

HOPS = ("test-out-proxy", "test-in-proxy", "test-server")
TRACE_ID = 0x5B8EFFF798038103D269B633813FC60C
ROOT_SPAN_ID = 0xEEE19B7EC3C1B174


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TelemetryStack]:
    with telemetry_stack(tmp_path_factory.mktemp("telemetry-otlp-http"),
                         HttpOtlpReceiver()) as running:
        yield running


def test_a_call_through_both_proxies_reaches_an_otlp_http_receiver_as_one_trace(
        stack: TelemetryStack) -> None:
    # The caller sampled the call (its traceparent is flagged sampled): the proxies' default
    # sampler follows it at every hop.
    traceparent = f"00-{TRACE_ID:032x}-{ROOT_SPAN_ID:016x}-01"
    with grpc.insecure_channel(stack.outproxy.address) as channel:
        reply = demo_pb2_grpc.EchoStub(channel).Unary(
            demo_pb2.EchoRequest(text="over http"), timeout=10,
            metadata=(("traceparent", traceparent),))
    assert reply.text == "over http"

    spans = stack.receiver.wait_trace(format(TRACE_ID, "032x"), set(HOPS))
    by_service = {span.service: span for span in spans}
    assert len(spans) == len(HOPS), [(s.service, s.span.name) for s in spans]
    out_proxy, in_proxy, server = (by_service[hop] for hop in HOPS)
    assert out_proxy.parent_id == format(ROOT_SPAN_ID, "016x")
    assert in_proxy.parent_id == out_proxy.span_id
    assert server.parent_id == in_proxy.span_id
    for span in (out_proxy, in_proxy):
        assert span.span.name == "demo.v1.Echo/Unary"
        assert span.attribute("rpc.system") == "grpc"
        assert span.attribute("rpc.method") == "Unary"
        assert span.attribute("rpc.grpc.status_code") == 0
        assert span.attribute("fastproxy.caller") == CALLER
        assert span.attribute("fastproxy.callee") == CALLEE
    assert isinstance(stack.receiver, HttpOtlpReceiver)
    assert stack.receiver.content_types == {"application/x-protobuf"}


def test_the_proxies_metrics_reach_the_otlp_http_receiver(stack: TelemetryStack) -> None:
    deadline = time.monotonic() + 10
    wanted = {"fastproxy.policy.revision", "fastproxy.active_streams"}
    while not all(wanted <= stack.receiver.metric_names.get(service, set())
                  for service in ("test-in-proxy", "test-out-proxy")):
        assert time.monotonic() < deadline, stack.receiver.metric_names
        time.sleep(0.05)
    assert isinstance(stack.receiver, HttpOtlpReceiver)
    assert set(stack.receiver.posts) <= {"/v1/traces", "/v1/metrics"}

