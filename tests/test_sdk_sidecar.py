"""The client SDK through a real out-proxy (the default mode): the app's channel points at
`python -m proxy_svc --role out`, which seals towards a real in-proxy in front of an upstream
in the test process. The SDK adds a default deadline, W3C trace context, and the retries the
destination's `retry` policy allows (UNAVAILABLE only, before any response, bounded)."""

from __future__ import annotations

import asyncio
import base64
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry.sdk.trace import TracerProvider
from support.dataplane import Proxies, free_address
from support.sdk_stack import (
    CALLEE,
    CALLER,
    FLAKY_SERVER_STREAM,
    FLAKY_UNARY,
    LONELY,
    OPTIONS,
    UpstreamServer,
    sdk_policy_yaml,
)

import fastproxy
from fastproxy.sdk import InterceptorSet
from fastproxy.v1 import center_pb2
from fastproxy.v1 import policy_pb2 as pb

pytestmark = pytest.mark.timeout(60)
MAX_ATTEMPTS = 3


@dataclass
class Stack:
    out_address: str
    policy: Path
    upstream: UpstreamServer
    lonely_out_address: str  # the out-proxy of lonely_service (no rule names it)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    directory = tmp_path_factory.mktemp("sdk-sidecar")
    upstream = UpstreamServer().start()
    in_address, out_address = free_address(), free_address()
    policy = directory / "policy.yaml"
    policy.write_text(sdk_policy_yaml(in_address, timeout_ms=20000,
                                      max_attempts=MAX_ATTEMPTS))
    proxies = Proxies(directory)
    try:
        inproxy = proxies.start("in", CALLEE, in_address, policy=policy,
                                upstream=upstream.address, wait=False)
        outproxy = proxies.start("out", CALLER, out_address, policy=policy, wait=False)
        lonely = proxies.start("out", LONELY, free_address(), policy=policy, wait=False)
        for proxy in (inproxy, outproxy, lonely):
            proxy.wait_status(1)  # SERVING
        yield Stack(out_address, policy, upstream, lonely.address)
    finally:
        proxies.stop_all()
        upstream.stop()


@pytest.fixture
def interceptors(stack: Stack) -> Iterator[InterceptorSet]:
    """Sidecar mode, the policy read as a client node (timeouts and retry policies)."""
    with fastproxy.client_interceptors(service=CALLER, policy_file=str(stack.policy)) as made:
        assert made.wait_for_policy(5)
        yield made


@pytest.fixture
def channel(stack: Stack, interceptors: InterceptorSet) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(stack.out_address, options=OPTIONS) as plain:
        yield grpc.intercept_channel(plain, *interceptors)


def call_id() -> str:
    return uuid.uuid4().hex


def test_a_call_without_deadline_gets_the_destination_timeout(
        stack: Stack, channel: grpc.Channel) -> None:
    ident = call_id()
    future = channel.unary_unary(FLAKY_UNARY).future(b"hi", metadata=(("x-call-id", ident),))
    remaining = future.time_remaining()
    assert future.result(10) == b"hi"
    assert remaining is not None and 15 < remaining <= 20  # timeout_ms: 20000
    seen = stack.upstream.flaky.records[ident].time_remaining
    assert seen is not None and seen <= 20.2


def test_a_caller_no_rule_names_is_denied_by_its_out_proxy_through_the_sdk(
        stack: Stack) -> None:
    with fastproxy.client_interceptors(service=LONELY, policy_file=str(stack.policy)) as made, \
            grpc.insecure_channel(stack.lonely_out_address) as plain:
        assert made.wait_for_policy(5)
        channel = grpc.intercept_channel(plain, *made)
        with pytest.raises(grpc.RpcError) as caught:
            channel.unary_unary(FLAKY_UNARY)(b"may I?", timeout=5)
    trailers = dict(caught.value.trailing_metadata() or ())
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert (trailers["fastproxy-error"], trailers["fastproxy-proxy"],
            trailers["fastproxy-rule"]) == ("denied", "out", "none")
    assert f"{LONELY!r} call {FLAKY_UNARY}" in (caught.value.details() or "")


def test_from_a_center_the_sdk_watches_as_an_app_node_and_is_sent_no_key(
        stack: Stack, start_center: Any) -> None:
    center = start_center("--policy", str(stack.policy))
    with fastproxy.client_interceptors(service=CALLER, center=center.address) as made, \
            grpc.insecure_channel(stack.out_address, options=OPTIONS) as plain:
        assert made.wait_for_policy(10)
        channel = grpc.intercept_channel(plain, *made)
        future = channel.unary_unary(FLAKY_UNARY).future(b"hi")
        remaining = future.time_remaining()
        assert future.result(10) == b"hi"
        assert remaining is not None and 15 < remaining <= 20  # the Center's timeout_ms
        nodes = center.stub().ListNodes(center_pb2.ListNodesRequest(), timeout=5).nodes
        assert [(n.role, n.service) for n in nodes] == [(pb.ROLE_APP, CALLER)]
    # what such a node is sent, byte for byte: routes, timeouts, retry; no key material
    watch = center.watch().hello("probe", pb.ROLE_APP, CALLER)
    signed = watch.next_snapshot()
    snapshot = pb.PolicySnapshot.FromString(signed.snapshot)
    assert list(snapshot.keys) == []
    assert [s.name for s in snapshot.services] == [CALLEE]
    for secret in re.findall(r'base64:([A-Za-z0-9+/=]+)', stack.policy.read_text()):
        assert base64.b64decode(secret) not in signed.SerializeToString()
    watch.close()


def test_the_sdk_timeout_applies_where_the_policy_gives_none(stack: Stack) -> None:
    ident = call_id()
    with fastproxy.client_interceptors(timeout_ms=1500) as made, \
            grpc.insecure_channel(stack.out_address) as plain:
        channel = grpc.intercept_channel(plain, *made)
        assert channel.unary_unary(FLAKY_UNARY)(b"x", metadata=(("x-call-id", ident),)) == b"x"
    seen = stack.upstream.flaky.records[ident].time_remaining
    assert seen is not None and 0 < seen <= 1.6  # not the proxies' 20 s (grpc-timeout rounds up)


def test_an_app_deadline_is_kept(stack: Stack, channel: grpc.Channel) -> None:
    ident = call_id()
    channel.unary_unary(FLAKY_UNARY)(b"x", timeout=3, metadata=(("x-call-id", ident),))
    seen = stack.upstream.flaky.records[ident].time_remaining
    assert seen is not None and seen <= 3.1


def test_trace_context_of_the_active_span_reaches_the_upstream(
        stack: Stack, channel: grpc.Channel) -> None:
    tracer = TracerProvider().get_tracer("sdk-test")
    ident = call_id()
    with tracer.start_as_current_span("client-call") as span:
        channel.unary_unary(FLAKY_UNARY)(b"x", timeout=5, metadata=(("x-call-id", ident),))
        trace_id = format(span.get_span_context().trace_id, "032x")
    traceparent = dict(stack.upstream.flaky.records[ident].metadata)["traceparent"]
    assert traceparent.split("-")[1] == trace_id


def test_no_trace_context_without_an_active_span(stack: Stack, channel: grpc.Channel) -> None:
    ident = call_id()
    channel.unary_unary(FLAKY_UNARY)(b"x", timeout=5, metadata=(("x-call-id", ident),))
    assert "traceparent" not in dict(stack.upstream.flaky.records[ident].metadata)


def test_unavailable_before_any_response_is_retried_then_succeeds(
        stack: Stack, channel: grpc.Channel) -> None:
    ident = call_id()
    reply = channel.unary_unary(FLAKY_UNARY)(
        b"again", timeout=10, metadata=(("x-call-id", ident), ("x-fail-first", "2")))
    assert reply == b"again"
    assert stack.upstream.flaky.records[ident].attempts == 3


def test_a_server_stream_is_retried_before_its_first_message(
        stack: Stack, channel: grpc.Channel) -> None:
    ident = call_id()
    call = channel.unary_stream(FLAKY_SERVER_STREAM)(
        b"s", timeout=10, metadata=(("x-call-id", ident), ("x-fail-first", "1")))
    assert list(call) == [b"s", b"s"]
    assert call.code() == grpc.StatusCode.OK
    assert stack.upstream.flaky.records[ident].attempts == 2


def test_retries_stop_at_max_attempts(stack: Stack, channel: grpc.Channel) -> None:
    ident = call_id()
    with pytest.raises(grpc.RpcError) as caught:
        channel.unary_unary(FLAKY_UNARY)(
            b"x", timeout=10, metadata=(("x-call-id", ident), ("x-fail-first", "99")))
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert stack.upstream.flaky.records[ident].attempts == MAX_ATTEMPTS


def test_no_retry_after_a_response_message_arrived(
        stack: Stack, channel: grpc.Channel) -> None:
    ident = call_id()
    call = channel.unary_stream(FLAKY_SERVER_STREAM)(
        b"s", timeout=10, metadata=(("x-call-id", ident), ("x-fail-first", "1"),
                                    ("x-fail-after-response", "1")))
    assert next(call) == b"s"
    with pytest.raises(grpc.RpcError):
        next(call)
    assert call.code() == grpc.StatusCode.UNAVAILABLE
    assert stack.upstream.flaky.records[ident].attempts == 1


def test_no_retry_on_other_codes(stack: Stack, channel: grpc.Channel) -> None:
    ident = call_id()
    with pytest.raises(grpc.RpcError) as caught:
        channel.unary_unary(FLAKY_UNARY)(
            b"x", timeout=10, metadata=(("x-call-id", ident), ("x-fail-first", "1"),
                                        ("x-fail-code", "INTERNAL")))
    assert caught.value.code() == grpc.StatusCode.INTERNAL
    assert stack.upstream.flaky.records[ident].attempts == 1


def test_no_retry_of_a_refusal_other_than_unavailable(
        stack: Stack, channel: grpc.Channel) -> None:
    # the out-proxy knows no route: UNIMPLEMENTED with fastproxy-error no_route, once
    with pytest.raises(grpc.RpcError) as caught:
        channel.unary_unary("/other.v1.Nowhere/Call")(b"x", timeout=5)
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert dict(caught.value.trailing_metadata())["fastproxy-proxy"] == "out"


def test_without_a_retry_policy_nothing_is_retried(stack: Stack) -> None:
    ident = call_id()
    with fastproxy.client_interceptors() as made, \
            grpc.insecure_channel(stack.out_address) as plain:
        channel = grpc.intercept_channel(plain, *made)
        with pytest.raises(grpc.RpcError):
            channel.unary_unary(FLAKY_UNARY)(
                b"x", timeout=5, metadata=(("x-call-id", ident), ("x-fail-first", "1")))
    assert stack.upstream.flaky.records[ident].attempts == 1


def test_aio_retry_deadline_and_stream_interface(stack: Stack) -> None:
    unary_id, stream_id = call_id(), call_id()

    async def scenario() -> None:
        made = fastproxy.aio_client_interceptors(service=CALLER, policy_file=str(stack.policy))
        try:
            assert made.wait_for_policy(5)
            async with grpc.aio.insecure_channel(stack.out_address,
                                                 interceptors=made) as channel:
                call = channel.unary_unary(FLAKY_UNARY)(
                    b"a", metadata=(("x-call-id", unary_id), ("x-fail-first", "2")))
                assert await call == b"a"
                assert await call.code() == grpc.StatusCode.OK
                stream = channel.unary_stream(FLAKY_SERVER_STREAM)(
                    b"s", metadata=(("x-call-id", stream_id), ("x-fail-first", "1")))
                assert [m async for m in stream] == [b"s", b"s"]
                assert await stream.code() == grpc.StatusCode.OK
                await stream.initial_metadata()
        finally:
            made.close()

    asyncio.run(scenario())
    records = stack.upstream.flaky.records
    assert records[unary_id].attempts == 3
    assert records[stream_id].attempts == 2
    seen = records[unary_id].time_remaining
    assert seen is not None and seen <= 20.2
