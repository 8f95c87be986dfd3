"""End to end through the data plane: client -> out-proxy -> in-proxy -> upstream, all real
processes on loopback, every message sealed (AES-256-GCM, HMAC-SHA256 requests, Ed25519
responses, gzip above 1 KiB). The proxies run from one `--policy` file (no Center)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from support.dataplane import (
    CALLER,
    KINDS,
    DataplanePolicy,
    FileStack,
    MiB,
    Proxies,
    call_kind,
    channel,
    random_payload,
    reason_of,
    start_file_stack,
)
from support.upstream_app import SERVER_STREAM, UpstreamProcess

# Large payloads get a generous service timeout (the box may be busy); the deadline tests
# run through a second pair of proxies whose service timeout is short.
LONG_TIMEOUT_MS = 60_000
TIMEOUT_MS = 1500


@pytest.fixture(scope="module")
def upstream() -> Iterator[UpstreamProcess]:
    with UpstreamProcess(name="song") as process:
        yield process


@pytest.fixture(scope="module")
def proxies(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxies]:
    proxies = Proxies(tmp_path_factory.mktemp("forwarding"))
    try:
        yield proxies
    finally:
        proxies.stop_all()


def stack_with_timeout(proxies: Proxies, upstream: UpstreamProcess, timeout_ms: int,
                       name: str) -> FileStack:
    directory: Path = proxies.log_dir / name
    directory.mkdir()
    return start_file_stack(proxies, upstream.address, directory,
                            policy=DataplanePolicy(timeout_ms=timeout_ms))


@pytest.fixture(scope="module")
def out_address(proxies: Proxies, upstream: UpstreamProcess) -> str:
    """The out-proxy of chat_service; song_service's timeout is long."""
    stack = stack_with_timeout(proxies, upstream, LONG_TIMEOUT_MS, "long")
    return stack.outproxies[CALLER].address


@pytest.fixture(scope="module")
def short_out_address(proxies: Proxies, upstream: UpstreamProcess) -> str:
    """The out-proxy of chat_service; song_service's timeout is TIMEOUT_MS."""
    stack = stack_with_timeout(proxies, upstream, TIMEOUT_MS, "short")
    return stack.outproxies[CALLER].address


def new_id() -> str:
    return uuid.uuid4().hex


@pytest.mark.parametrize("size", [0, 1024, MiB, 8 * MiB], ids=["0B", "1KiB", "1MiB", "8MiB"])
@pytest.mark.parametrize("kind", KINDS)
def test_payload_arrives_byte_for_byte(out_address: str, upstream: UpstreamProcess,
                                       kind: str, size: int) -> None:
    payload = random_payload(size, seed=size)
    call_id = new_id()
    with channel(out_address) as ch:
        responses, call = call_kind(ch, kind, payload, (("x-test-id", call_id),), timeout=60)
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


def test_metadata_text_and_binary_pass_both_ways(out_address: str,
                                                 upstream: UpstreamProcess) -> None:
    call_id = new_id()
    sent = (("x-test-id", call_id), ("x-test-echo", "1"), ("x-echo-note", "hello there"),
            ("x-echo-blob-bin", bytes(range(256))))
    with channel(out_address) as ch:
        responses, call = call_kind(ch, "bidi", b"m", sent)
    assert responses == [b"m", b"m"]
    initial = tuple(call.initial_metadata())
    trailers = tuple(call.trailing_metadata())
    for entries in (initial, trailers):
        assert ("x-echo-note", "hello there") in entries
        assert ("x-echo-blob-bin", bytes(range(256))) in entries
        assert not [key for key, _ in entries if key.startswith("fastproxy-")]
    seen = upstream.record(call_id)["metadata"]
    assert ("x-echo-note", "hello there") in seen
    assert ("x-echo-blob-bin", bytes(range(256))) in seen
    assert not [key for key, _ in seen if key.startswith("fastproxy-")]


def test_upstream_error_with_details_arrives_unchanged_without_our_trailers(
        out_address: str) -> None:
    status_bin = b"\x08\x05\x12\x0bnot here \xff\x00"
    metadata = (("x-test-fail-code", "NOT_FOUND"), ("x-test-fail-details", "no such song"),
                ("x-test-fail-status-bin", status_bin), ("x-test-echo", "1"),
                ("x-echo-why-bin", b"\x00\x01"))
    for kind in KINDS:
        with channel(out_address) as ch, pytest.raises(grpc.RpcError) as raised:
            call_kind(ch, kind, b"payload", metadata)
        error = raised.value
        assert error.code() == grpc.StatusCode.NOT_FOUND, kind
        assert error.details() == "no such song", kind
        trailers = tuple(error.trailing_metadata())
        assert ("grpc-status-details-bin", status_bin) in trailers, kind
        assert ("x-echo-why-bin", b"\x00\x01") in trailers, kind
        assert not [key for key, _ in trailers if key.startswith("fastproxy-")], kind


def at_most(limit_s: float) -> float:
    """`limit_s` plus grpc's own rounding: the grpc-timeout header is coarse and rounded up
    (measured: a direct grpc call with timeout 1.5 s reaches the server with 1.509 s left,
    10 s with 10.099 s), and the call crosses two hops."""
    return limit_s * 1.02 + 0.02


def test_upstream_sees_a_deadline_within_the_clients_and_the_services(
        short_out_address: str, upstream: UpstreamProcess) -> None:
    long_id, short_id, unset_id = new_id(), new_id(), new_id()
    with channel(short_out_address) as ch:
        call_kind(ch, "unary", b"x", (("x-test-id", long_id),), timeout=60)
        call_kind(ch, "unary", b"x", (("x-test-id", short_id),), timeout=1.0)
        call_kind(ch, "unary", b"x", (("x-test-id", unset_id),), timeout=None)
    for call_id, limit_s in ((long_id, TIMEOUT_MS / 1000), (short_id, 1.0),
                             (unset_id, TIMEOUT_MS / 1000)):
        remaining = upstream.record(call_id)["deadline_remaining_s"]
        assert remaining is not None and 0 < remaining <= at_most(limit_s), (limit_s, remaining)


def test_slow_upstream_gives_deadline_exceeded_with_reason_deadline(
        short_out_address: str) -> None:
    with channel(short_out_address) as ch, pytest.raises(grpc.RpcError) as raised:
        call_kind(ch, "unary", b"x", (("x-test-stall-ms", str(TIMEOUT_MS + 3000)),),
                  timeout=None)
    assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert reason_of(raised.value) == "deadline"


def test_client_cancel_reaches_the_upstream(out_address: str,
                                            upstream: UpstreamProcess) -> None:
    call_id = new_id()
    with channel(out_address) as ch:
        stream = ch.unary_stream(SERVER_STREAM)(
            b"tick", timeout=30, metadata=(("x-test-id", call_id), ("x-test-repeat", "100"),
                                          ("x-test-stall-each-ms", "100")))
        assert next(stream) == b"tick"
        stream.cancel()
    record = upstream.wait_record(call_id, "cancelled", timeout_s=5)
    assert record["cancelled"] is True


def test_an_upstream_answering_before_reading_the_request_keeps_its_status(
        out_address: str) -> None:
    """The upstream lacks the method: it answers UNIMPLEMENTED at once, while the proxies
    may still be writing the request (grpc.aio used to turn that into INTERNAL)."""
    payload = b"x" * 10
    with channel(out_address) as ch:
        method = ch.unary_unary("/test.v1.Echo/Missing")
        futures = [method.future(payload, timeout=10) for _ in range(100)]
        for future in futures:
            with pytest.raises(grpc.RpcError) as raised:
                future.result()
            assert raised.value.code() == grpc.StatusCode.UNIMPLEMENTED
            assert reason_of(raised.value) is None
