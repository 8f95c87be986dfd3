"""One call is one trace: the SDK's CLIENT span, the out-proxy's, the in-proxy's and the
server's SERVER spans, each the parent of the next, received by a real OTLP receiver from
real processes, through sealed calls.

The processes run FastProxy's default sampler (no `OTEL_TRACES_SAMPLER`: parent-based, 1% of
root calls): the test's client samples its calls, and every hop follows it; a call the
client does not sample is traced nowhere, and its trace context still travels, flagged not
sampled."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from support.telemetry_stack import CALLEE, CALLER, ReceivedSpan, TelemetryStack, telemetry_stack

import fastproxy
from fastproxy.v1 import demo_pb2, demo_pb2_grpc

pytestmark = pytest.mark.timeout(90)

HOPS = ("test-client", "test-out-proxy", "test-in-proxy", "test-server")
SPAN_KIND_SERVER = 2
SPAN_KIND_CLIENT = 3


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TelemetryStack]:
    with telemetry_stack(tmp_path_factory.mktemp("telemetry-traces"), relay=True) as running:
        yield running


@pytest.fixture(scope="module")
def provider(stack: TelemetryStack) -> Iterator[TracerProvider]:
    made = TracerProvider(resource=Resource.create({"service.name": "test-client"}))
    made.add_span_processor(SimpleSpanProcessor(
        OTLPSpanExporter(endpoint=f"127.0.0.1:{stack.receiver.port}", insecure=True)))
    yield made
    made.shutdown()


@pytest.fixture
def echo(stack: TelemetryStack, provider: TracerProvider) -> Iterator[demo_pb2_grpc.EchoStub]:
    interceptors = fastproxy.client_interceptors(service=CALLER, tracer_provider=provider)
    channel = grpc.intercept_channel(grpc.insecure_channel(stack.outproxy.address),
                                     *interceptors)
    yield demo_pb2_grpc.EchoStub(channel)
    channel.close()
    interceptors.close()


def _chain(spans: list[ReceivedSpan], root_id: str) -> list[ReceivedSpan]:
    """The spans from the test's root down, following parent links, one per hop."""
    by_parent = {span.parent_id: span for span in spans}
    chain = []
    parent = root_id
    while parent in by_parent:
        child = by_parent[parent]
        chain.append(child)
        parent = child.span_id
    return chain


def _assert_one_trace(stack: TelemetryStack, provider: TracerProvider, trace_id: str,
                      root_id: str, method: str) -> None:
    spans = stack.receiver.wait_trace(trace_id, set(HOPS[1:]))
    provider.force_flush()
    spans = stack.receiver.wait_trace(trace_id, set(HOPS))
    chain = _chain(spans, root_id)
    assert [span.service for span in chain] == list(HOPS), \
        [(s.service, s.span.name, s.span_id, s.parent_id) for s in spans]
    client, out_proxy, in_proxy, server = chain
    assert client.span.kind == SPAN_KIND_CLIENT
    assert all(span.span.kind == SPAN_KIND_SERVER for span in (out_proxy, in_proxy, server))
    service, name = method.lstrip("/").split("/")
    for span in (client, out_proxy, in_proxy):
        assert span.attribute("rpc.system") == "grpc"
        assert span.attribute("rpc.service") == service
        assert span.attribute("rpc.method") == name
        assert span.attribute("rpc.grpc.status_code") == 0
    assert client.attribute("fastproxy.proxy") == "client"
    assert out_proxy.attribute("fastproxy.proxy") == "out"
    assert in_proxy.attribute("fastproxy.proxy") == "in"
    for span in (out_proxy, in_proxy):
        assert span.attribute("fastproxy.caller") == CALLER
        assert span.attribute("fastproxy.callee") == CALLEE
        assert span.attribute("fastproxy.policy.revision") == 1
        assert span.attribute("network.peer.address") == "127.0.0.1"


def test_a_unary_call_through_both_proxies_is_one_trace(
        stack: TelemetryStack, provider: TracerProvider,
        echo: demo_pb2_grpc.EchoStub) -> None:
    tracer = provider.get_tracer("test")
    with tracer.start_as_current_span("test-root") as root:
        reply = echo.Unary(demo_pb2.EchoRequest(text="traced"), timeout=10)
    assert reply.text == "traced"
    context = root.get_span_context()
    _assert_one_trace(stack, provider, format(context.trace_id, "032x"),
                      format(context.span_id, "016x"), "/demo.v1.Echo/Unary")


def test_a_streaming_call_through_both_proxies_is_one_trace(
        stack: TelemetryStack, provider: TracerProvider,
        echo: demo_pb2_grpc.EchoStub) -> None:
    tracer = provider.get_tracer("test")
    requests = [demo_pb2.EchoRequest(text=f"m{i}", repeat=2) for i in range(3)]
    with tracer.start_as_current_span("test-root") as root:
        replies = list(echo.Bidi(iter(requests), timeout=10))
    assert len(replies) == 6
    context = root.get_span_context()
    _assert_one_trace(stack, provider, format(context.trace_id, "032x"),
                      format(context.span_id, "016x"), "/demo.v1.Echo/Bidi")


def test_a_refused_call_has_its_reason_on_the_in_proxy_span(
        stack: TelemetryStack, provider: TracerProvider,
        echo: demo_pb2_grpc.EchoStub) -> None:
    catalog = demo_pb2_grpc.CatalogStub(grpc.intercept_channel(
        grpc.insecure_channel(stack.outproxy.address),
        *fastproxy.client_interceptors(service=CALLER, tracer_provider=provider)))
    tracer = provider.get_tracer("test")
    with tracer.start_as_current_span("test-root") as root, \
            pytest.raises(grpc.RpcError) as refused:
        catalog.GetItem(demo_pb2.GetItemRequest(id="x"), timeout=10)
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    trace_id = format(root.get_span_context().trace_id, "032x")
    spans = stack.receiver.wait_trace(trace_id, {"test-in-proxy", "test-out-proxy"})
    in_proxy = next(span for span in spans if span.service == "test-in-proxy")
    assert in_proxy.attribute("fastproxy.reason") == "denied"
    assert in_proxy.attribute("fastproxy.caller") == CALLER
    assert in_proxy.attribute("rpc.grpc.status_code") == grpc.StatusCode.PERMISSION_DENIED.value[0]
    assert in_proxy.span.status.code == 2  # ERROR


def test_a_call_its_client_does_not_sample_is_traced_at_no_hop_but_carries_its_context(
        stack: TelemetryStack, provider: TracerProvider,
        echo: demo_pb2_grpc.EchoStub) -> None:
    dropping = TracerProvider(sampler=ALWAYS_OFF)
    interceptors = fastproxy.client_interceptors(service=CALLER, tracer_provider=dropping)
    channel = grpc.intercept_channel(grpc.insecure_channel(stack.outproxy.address),
                                     *interceptors)
    assert stack.relay is not None
    relayed = len(stack.relay.calls)
    with dropping.get_tracer("test").start_as_current_span("test-root") as root:
        reply = demo_pb2_grpc.EchoStub(channel).Unary(demo_pb2.EchoRequest(text="quiet"),
                                                      timeout=10)
    channel.close()
    interceptors.close()
    assert reply.text == "quiet"
    assert not root.is_recording()
    dropped_trace = format(root.get_span_context().trace_id, "032x")

    # What the out-proxy forwarded to the in-proxy: the same trace, flagged not sampled
    # (bit 0 clear; the SDK also sets the W3C level-2 "random trace id" bit, 02), with the
    # SDK client's (unrecorded) span as the parent: a hop that records nothing forwards
    # the context as it came.
    forwarded = dict(stack.relay.calls[relayed].metadata)
    version, trace_id, parent_id, flags = str(forwarded["traceparent"]).split("-")
    assert (version, trace_id) == ("00", dropped_trace)
    assert int(flags, 16) & 0x01 == 0, flags
    assert parent_id != format(root.get_span_context().span_id, "016x")

    # A sampled call after it: once its spans are in from every hop, so would be any of the
    # earlier call's (each process exports its spans in the order they end).
    tracer = provider.get_tracer("test")
    with tracer.start_as_current_span("test-root") as sampled:
        echo.Unary(demo_pb2.EchoRequest(text="traced"), timeout=10)
    stack.receiver.wait_trace(format(sampled.get_span_context().trace_id, "032x"),
                              set(HOPS[1:]))
    assert stack.receiver.trace(dropped_trace) == []


def test_calls_with_no_trace_context_are_sampled_once_at_the_out_proxy_and_followed(
        stack: TelemetryStack, provider: TracerProvider,
        echo: demo_pb2_grpc.EchoStub) -> None:
    """A client with no telemetry: the out-proxy starts each trace (1% sampled), and the
    in-proxy follows its decision. Whatever the ratio picked, a trace the out-proxy flagged
    sampled is received from both proxies, and one flagged not sampled from neither."""
    relay = stack.relay
    assert relay is not None
    unary = "/demo.v1.Echo/Unary"
    before = {metadata.get("traceparent") for metadata in relay.forwarded_metadata(unary)}
    with grpc.insecure_channel(stack.outproxy.address) as channel:
        plain = demo_pb2_grpc.EchoStub(channel)
        for index in range(20):
            plain.Unary(demo_pb2.EchoRequest(text=f"root {index}"), timeout=10)
    forwarded = [metadata for metadata in relay.forwarded_metadata(unary)
                 if metadata.get("traceparent") not in before]
    assert len(forwarded) == 20, forwarded
    started = {}
    for metadata in forwarded:
        version, trace_id, parent_id, flags = metadata["traceparent"].split("-")
        assert version == "00" and len(trace_id) == 32 and len(parent_id) == 16
        assert int(flags, 16) & 0x02, flags  # random trace id, as the SDK draws them
        started[trace_id] = bool(int(flags, 16) & 0x01)
    assert len(started) == 20  # one trace each

    # Every earlier span is exported once this later, sampled call's are in.
    with provider.get_tracer("test").start_as_current_span("test-root") as sampled:
        echo.Unary(demo_pb2.EchoRequest(text="traced"), timeout=10)
    stack.receiver.wait_trace(format(sampled.get_span_context().trace_id, "032x"),
                              set(HOPS[1:]))
    for trace_id, was_sampled in started.items():
        services = {span.service for span in stack.receiver.trace(trace_id)}
        if was_sampled:
            assert {"test-out-proxy", "test-in-proxy"} <= services, trace_id
        else:
            assert services == set(), trace_id
