"""The transparent forwarding layer of proxy_svc, with a pass-through transform.

Real processes on loopback: the test upstream (`tests/support/upstream_app.py`) runs as a
subprocess, the forwarding server (`tests/support/transport.py`) runs on its own event loop in
a thread of the test process, and clients are plain synchronous grpc channels, so three
different grpc stacks meet on the wire.
"""

from __future__ import annotations

import dataclasses
import random
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import grpc
import pytest
from support.dataplane import call_kind
from support.transport import (
    KINDS,
    MiB,
    PassThroughRole,
    ProxyThread,
    channel,
    failure_of,
    free_port_nobody_listens_on,
    new_id,
    pass_through_plan,
    trailers_of,
)
from support.upstream_app import (
    BIDI,
    SERVER_STREAM,
    UNARY,
    UpstreamProcess,
)

from fastproxy.hosting.refusal import HostRole
from fastproxy.node.holder import PolicyHolder
from fastproxy.pipeline.metadata import Metadata, forwarded_request_metadata
from fastproxy.pipeline.reasons import FastProxyError, Reason
from proxy_svc.forward import call_timeout
from proxy_svc.plan import CallPlan, OutboundRole, Role
from proxy_svc.sessions import SessionBook
from proxy_svc.upstream import EjectionRule, EndpointHealth, UpstreamPool


@pytest.fixture(scope="module")
def upstream() -> Iterator[UpstreamProcess]:
    with UpstreamProcess(name="a") as process:
        yield process


@pytest.fixture(scope="module")
def upstream_b() -> Iterator[UpstreamProcess]:
    with UpstreamProcess(name="b") as process:
        yield process


@pytest.fixture
def start_proxy() -> Iterator[Any]:
    started: list[ProxyThread] = []

    def start(role: Role, **kwargs: Any) -> ProxyThread:
        proxy = ProxyThread(role, **kwargs).start()
        started.append(proxy)
        return proxy

    yield start
    for proxy in started:
        proxy.stop()


@pytest.fixture
def proxy(upstream: UpstreamProcess, start_proxy: Any) -> ProxyThread:
    proxy: ProxyThread = start_proxy(PassThroughRole("out", [upstream.address]))
    return proxy


def test_upstream_timeout_is_the_client_remaining_time_capped_by_the_service() -> None:
    assert call_timeout(None, None) is None
    assert call_timeout(None, 2000) == 2.0
    assert call_timeout(5.0, 2000) == 2.0
    assert call_timeout(0.5, 2000) == 0.5
    assert call_timeout(0.5, None) == 0.5
    assert call_timeout(9.2e18, 1500) == 1.5  # the sync server's "no deadline"
    assert call_timeout(-1.0, None) == 0.0


def test_request_metadata_drops_transport_and_our_own_entries_only() -> None:
    incoming = (
        (":authority", "x"), ("user-agent", "ua"), ("content-length", "5"), ("te", "trailers"),
        ("fastproxy-call", "forged"), ("x-app", "v"), ("x-app-bin", b"\x00\xff"),
        ("traceparent", "00-abc-def-01"),
    )
    added = (("fastproxy-envelope-bin", b"\x01"),)
    assert forwarded_request_metadata(incoming, added) == (
        ("x-app", "v"), ("x-app-bin", b"\x00\xff"), ("traceparent", "00-abc-def-01"),
        ("fastproxy-envelope-bin", b"\x01"),
    )


def test_no_endpoint_to_pick_is_unavailable() -> None:
    with pytest.raises(FastProxyError) as refused:
        EndpointHealth().pick((), now=0.0)
    assert refused.value.reason is Reason.UNAVAILABLE


def test_round_robin_alternates_between_endpoints() -> None:
    health = EndpointHealth()
    picks = [health.pick(("a", "b"), now=0.0) for _ in range(6)]
    assert picks == ["a", "b", "a", "b", "a", "b"]


def test_an_endpoint_failing_in_a_row_is_left_out_then_tried_again() -> None:
    health = EndpointHealth(EjectionRule(failures=3, ejection_s=10.0))
    for _ in range(3):
        health.record_transport_failure("a", now=100.0)
    assert {health.pick(("a", "b"), now=105.0) for _ in range(4)} == {"b"}
    assert "a" in {health.pick(("a", "b"), now=110.5) for _ in range(4)}
    health.record_success("a")
    health.record_transport_failure("a", now=111.0)
    assert not health.is_ejected("a", now=111.0)


def test_when_every_endpoint_is_ejected_all_are_used() -> None:
    health = EndpointHealth(EjectionRule(failures=1, ejection_s=10.0))
    health.record_transport_failure("a", now=0.0)
    health.record_transport_failure("b", now=0.0)
    assert {health.pick(("a", "b"), now=1.0) for _ in range(4)} == {"a", "b"}


def test_no_endpoint_is_unavailable() -> None:
    with pytest.raises(FastProxyError) as raised:
        EndpointHealth().pick((), now=0.0)
    assert raised.value.reason is Reason.UNAVAILABLE


# --- payloads -------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1024, MiB, 8 * MiB], ids=["0B", "1KiB", "1MiB", "8MiB"])
@pytest.mark.parametrize("kind", KINDS)
def test_payload_arrives_byte_for_byte(proxy: ProxyThread, upstream: UpstreamProcess,
                                       kind: str, size: int) -> None:
    payload = random.Random(size).randbytes(size)
    call_id = new_id()
    with channel(proxy.address) as ch:
        responses, call = call_kind(ch, kind, payload, (("x-test-id", call_id),))
    expected = {
        "unary": [payload],
        "client_stream": [payload + payload],
        "server_stream": [payload, payload],
        "bidi": [payload, payload],
    }[kind]
    assert responses == expected
    assert call.code() == grpc.StatusCode.OK
    record = upstream.wait_record(call_id, "done")
    sent = 1 if kind in ("unary", "server_stream") else 2
    assert (record["messages_received"], record["bytes_received"]) == (sent, sent * size)


def test_message_larger_than_the_configured_limit_is_refused(
        upstream: UpstreamProcess, start_proxy: Any) -> None:
    small = start_proxy(PassThroughRole("out", [upstream.address]), max_message_bytes=MiB)
    with channel(small.address) as ch, pytest.raises(grpc.RpcError) as raised:
        call_kind(ch, "unary", b"x" * (2 * MiB))
    assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


# --- metadata -------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_metadata_passes_both_ways_text_and_binary(proxy: ProxyThread, upstream: UpstreamProcess,
                                                   kind: str) -> None:
    sent = (("x-echo-text", "hello world"), ("x-echo-data-bin", bytes(range(256))),
            ("x-echo-text", "second"))
    seen = []
    for address in (upstream.address, proxy.address):
        call_id = new_id()
        _, call = call_kind(channel(address), kind, b"m",
                            (("x-test-id", call_id), ("x-test-echo", "1"), *sent))
        received = upstream.wait_record(call_id, "done")["metadata"]
        seen.append((tuple(call.initial_metadata()), tuple(call.trailing_metadata()),
                     [entry for entry in received if entry[0].startswith("x-echo-")]))
    direct, proxied = seen
    assert [by_key(metadata) for metadata in proxied] == [by_key(metadata) for metadata in direct]
    # Each grpc hop may group repeated keys together, but keeps their values in order.
    assert all(by_key(metadata) == by_key(sent) for metadata in proxied)


def by_key(metadata: Sequence[tuple[str, Any]]) -> dict[str, list[Any]]:
    grouped: dict[str, list[Any]] = {}
    for key, value in metadata:
        grouped.setdefault(key, []).append(value)
    return grouped


def test_our_own_metadata_from_a_client_does_not_reach_the_upstream(
        proxy: ProxyThread, upstream: UpstreamProcess) -> None:
    call_id = new_id()
    call_kind(channel(proxy.address), "unary", b"m",
              (("x-test-id", call_id), ("fastproxy-caller", "forged")))
    keys = [key for key, _ in upstream.wait_record(call_id, "done")["metadata"]]
    assert "fastproxy-caller" not in keys
    assert "x-test-id" in keys


# --- errors from the upstream pass unchanged ------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_upstream_error_arrives_unchanged(proxy: ProxyThread, upstream: UpstreamProcess,
                                          kind: str) -> None:
    failing = (("x-test-echo", "1"), ("x-echo-why", "because"), ("x-echo-why-bin", b"\x00\x01"),
               ("x-test-fail-code", "FAILED_PRECONDITION"),
               ("x-test-fail-details", "the app says no"),
               ("x-test-fail-status-bin", b"\x08\x09\x12\x0fthe app says no"))
    direct = failure_of(channel(upstream.address), kind, failing)
    proxied = failure_of(channel(proxy.address), kind, failing)
    for error in (direct, proxied):
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert error.details() == "the app says no"
    assert tuple(proxied.trailing_metadata()) == tuple(direct.trailing_metadata())
    # The upstream's headers of an error arrive unchanged, or (said, not hidden) not at all:
    # grpc.aio 1.78 sometimes loses them on the proxy's upstream call (both the error and the
    # call object then have none; about one proxied error in ten on this machine, already so
    # before the work of 2026-12-07; the direct sync call always has them). Never other ones.
    assert tuple(proxied.initial_metadata()) in (tuple(direct.initial_metadata()), ())
    assert trailers_of(proxied)["grpc-status-details-bin"] == b"\x08\x09\x12\x0fthe app says no"
    assert "fastproxy-error" not in trailers_of(proxied)


def test_unavailable_from_the_upstream_app_is_the_apps_answer(
        proxy: ProxyThread, upstream: UpstreamProcess) -> None:
    error = failure_of(channel(proxy.address), "unary",
                       (("x-test-fail-code", "UNAVAILABLE"), ("x-test-fail-details", "busy")))
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert error.details() == "busy"
    assert "fastproxy-error" not in trailers_of(error)


# --- deadlines ------------------------------------------------------------------------


@pytest.mark.parametrize(("client_timeout", "cap_ms", "longest"), [
    (5.0, 1500, 1.5), (0.8, 1500, 0.8), (None, 1500, 1.5), (3.0, None, 3.0),
])
def test_upstream_sees_a_deadline_no_longer_than_the_clients_and_the_cap(
        upstream: UpstreamProcess, start_proxy: Any, client_timeout: float | None,
        cap_ms: int | None, longest: float) -> None:
    capped = start_proxy(PassThroughRole("out", [upstream.address], cap_ms))
    call_id = new_id()
    call_kind(channel(capped.address), "unary", b"m", (("x-test-id", call_id),),
              timeout=client_timeout)
    remaining = upstream.wait_record(call_id, "done")["deadline_remaining_s"]
    assert remaining is not None
    # grpc rounds the `grpc-timeout` header up (a direct client's 10 s arrives as ~10.1 s).
    assert longest - 0.3 < remaining <= longest * 1.01 + 0.01


def test_without_deadline_or_cap_the_upstream_sees_none(proxy: ProxyThread,
                                                        upstream: UpstreamProcess) -> None:
    call_id = new_id()
    call_kind(channel(proxy.address), "unary", b"m", (("x-test-id", call_id),), timeout=None)
    assert upstream.wait_record(call_id, "done")["deadline_remaining_s"] is None


@pytest.mark.parametrize("kind", ["unary", "bidi"])
def test_slow_upstream_gives_deadline_exceeded_with_our_reason(
        upstream: UpstreamProcess, start_proxy: Any, kind: str) -> None:
    capped = start_proxy(PassThroughRole("in", [upstream.address], 300))
    started = time.monotonic()
    error = failure_of(channel(capped.address), kind, (("x-test-stall-ms", "3000"),))
    assert time.monotonic() - started < 2.0
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert trailers_of(error) == {"fastproxy-error": "deadline", "fastproxy-proxy": "in"}


# --- cancellation ---------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["server_stream", "bidi"])
def test_client_cancel_reaches_the_upstream_in_a_stream(
        proxy: ProxyThread, upstream: UpstreamProcess, kind: str) -> None:
    call_id = new_id()
    metadata = (("x-test-id", call_id), ("x-test-stall-each-ms", "200"), ("x-test-repeat", "50"))
    release = threading.Event()

    def requests() -> Iterator[bytes]:
        yield b"first"
        release.wait(10)

    with channel(proxy.address) as ch:
        if kind == "bidi":
            stream = ch.stream_stream(BIDI)(requests(), metadata=metadata, timeout=10)
        else:
            stream = ch.unary_stream(SERVER_STREAM)(b"first", metadata=metadata, timeout=10)
        assert next(stream) == b"first"
        stream.cancel()
        release.set()
    assert upstream.wait_record(call_id, "cancelled")["cancelled"] is True


def test_client_cancel_reaches_the_upstream_in_a_unary_call(proxy: ProxyThread,
                                                            upstream: UpstreamProcess) -> None:
    call_id = new_id()
    with channel(proxy.address) as ch:
        future = ch.unary_unary(UNARY).future(
            b"m", metadata=(("x-test-id", call_id), ("x-test-stall-ms", "5000")), timeout=10)
        deadline = time.monotonic() + 5
        while not upstream.record(call_id) and time.monotonic() < deadline:
            time.sleep(0.02)
        future.cancel()
    assert upstream.wait_record(call_id, "cancelled")["cancelled"] is True


# --- unreachable upstreams, round robin, ejection -------------------------------------


def test_dead_upstream_is_unavailable_with_our_reason(start_proxy: Any) -> None:
    dead = start_proxy(PassThroughRole("out", [free_port_nobody_listens_on()]))
    error = failure_of(channel(dead.address), "unary", ())
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert trailers_of(error) == {"fastproxy-error": "unavailable", "fastproxy-proxy": "out"}


def test_calls_go_round_robin_across_endpoints(upstream: UpstreamProcess,
                                               upstream_b: UpstreamProcess,
                                               start_proxy: Any) -> None:
    both = start_proxy(PassThroughRole("out", [upstream.address, upstream_b.address]))
    before = (upstream.calls(), upstream_b.calls())
    with channel(both.address) as ch:
        for _ in range(10):
            call_kind(ch, "unary", b"m")
    assert (upstream.calls() - before[0], upstream_b.calls() - before[1]) == (5, 5)


def test_an_endpoint_failing_in_a_row_is_ejected_then_retried(
        upstream: UpstreamProcess, start_proxy: Any) -> None:
    dead = free_port_nobody_listens_on()
    proxy = start_proxy(PassThroughRole("out", [dead, upstream.address]),
                        rule=EjectionRule(failures=3, ejection_s=1.0))

    def failures(calls: int) -> int:
        failed = 0
        with channel(proxy.address) as ch:
            for _ in range(calls):
                try:
                    call_kind(ch, "unary", b"m")
                except grpc.RpcError:
                    failed += 1
        return failed

    assert failures(20) == 3
    assert proxy.pool.health.is_ejected(dead, time.monotonic())
    time.sleep(1.1)
    # Tried again after the ejection: one more failure ejects it again at once.
    assert failures(10) == 1


# --- the pipeline's errors ------------------------------------------------------------


class RefusingRole:
    """A transform that refuses at a chosen point, as the security pipeline would."""

    role = HostRole.IN

    def __init__(self, endpoints: Sequence[str], at: str) -> None:
        self._endpoints = tuple(endpoints)
        self._at = at

    async def begin(self, method: str, metadata: Metadata, now: float, *, single: bool,
                    carry: bool, remaining_s: float | None) -> CallPlan:
        if self._at == "begin":
            raise FastProxyError(Reason.DENIED, "no rule for this caller")
        plan = pass_through_plan(self._endpoints[0], None, metadata)
        return dataclasses.replace(plan, request=self._request, response=self._response)

    def _request(self, message: bytes) -> bytes:
        if self._at == "request" and message == b"bad":
            raise FastProxyError(Reason.UNAUTHENTICATED, "signature does not verify")
        return message

    def _response(self, message: bytes) -> bytes:
        if self._at == "response":
            raise FastProxyError(Reason.MALFORMED, "sealed message cannot be parsed")
        return message


@pytest.mark.parametrize(("at", "code", "reason"), [
    ("begin", grpc.StatusCode.PERMISSION_DENIED, "denied"),
    ("request", grpc.StatusCode.UNAUTHENTICATED, "unauthenticated"),
    ("response", grpc.StatusCode.INVALID_ARGUMENT, "malformed"),
])
def test_a_pipeline_refusal_becomes_its_status_and_our_trailers(
        upstream: UpstreamProcess, start_proxy: Any, at: str, code: grpc.StatusCode,
        reason: str) -> None:
    refusing = start_proxy(RefusingRole([upstream.address], at))
    with channel(refusing.address) as ch, pytest.raises(grpc.RpcError) as raised:
        list(ch.stream_stream(BIDI)(iter([b"good", b"bad"]), timeout=10))
    assert raised.value.code() == code
    assert trailers_of(raised.value) == {"fastproxy-error": reason, "fastproxy-proxy": "in"}


def test_no_policy_loaded_yet_is_unavailable(start_proxy: Any) -> None:
    waiting = start_proxy(OutboundRole(PolicyHolder(), "", UpstreamPool(), SessionBook()))
    error = failure_of(channel(waiting.address), "unary", ())
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert trailers_of(error) == {"fastproxy-error": "unavailable", "fastproxy-proxy": "out"}
