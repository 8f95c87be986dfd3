"""Security of the data plane, end to end: what travels between the proxies is sealed, a real
in-proxy refuses every tampered, replayed or misplaced message, and the allow rules and rate
limits hold.

The out-proxies (chat_service, metered_service, narrow_service, stranger_service) and the
in-proxy of song_service run from one `--policy` file; song_service's endpoint in the policy
is a `RecordingRelay` in the test process that records the raw bytes and relays them to the
real in-proxy. Crafted calls go straight to the in-proxy, with bytes the relay captured or
sealed here by the sans-IO core from chat_service's own snapshot.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from concurrent.futures import Future

import grpc
import pytest
from support.dataplane import (
    CALLER,
    KINDS,
    METERED,
    NARROW,
    STRANGER,
    FileStack,
    RecordingRelay,
    call_kind,
    channel,
    new_call,
    out_node,
    random_payload,
    reason_of,
    relayed_file_stack,
)
from support.upstream_app import BIDI, CLIENT_STREAM, UNARY, UpstreamProcess

from fastproxy.pipeline.node_policy import NodePolicy

MARKER = b"PLAINTEXT-MARKER-7f3a"


@pytest.fixture(scope="module")
def upstream() -> Iterator[UpstreamProcess]:
    with UpstreamProcess(name="song") as process:
        yield process


@pytest.fixture(scope="module")
def relay_and_stack(upstream: UpstreamProcess, tmp_path_factory: pytest.TempPathFactory
                    ) -> Iterator[tuple[RecordingRelay, FileStack]]:
    with relayed_file_stack(upstream.address, tmp_path_factory.mktemp("security"),
                            (CALLER, METERED, NARROW, STRANGER)) as relay_and_stack:
        yield relay_and_stack


@pytest.fixture(scope="module")
def relay(relay_and_stack: tuple[RecordingRelay, FileStack]) -> RecordingRelay:
    return relay_and_stack[0]


@pytest.fixture(scope="module")
def stack(relay_and_stack: tuple[RecordingRelay, FileStack]) -> FileStack:
    return relay_and_stack[1]


@pytest.fixture(scope="module")
def chat(stack: FileStack) -> NodePolicy:
    return out_node(stack.policy.yaml_text())


def crafted_call(in_address: str, method: str, metadata: tuple[tuple[str, bytes], ...],
                 messages: list[bytes]) -> list[bytes]:
    """Sends raw messages straight to the in-proxy (stream-stream works for every kind)."""
    with channel(in_address) as ch:
        return list(ch.stream_stream(method)(iter(messages), metadata=metadata, timeout=5))


def crafted_refusal(in_address: str, method: str, metadata: tuple[tuple[str, bytes], ...],
                    messages: list[bytes]) -> str | None:
    with pytest.raises(grpc.RpcError) as raised:
        crafted_call(in_address, method, metadata, messages)
    return reason_of(raised.value)


# --- what travels between the proxies -------------------------------------------------


def test_no_plaintext_marker_travels_between_the_proxies(stack: FileStack,
                                                         relay: RecordingRelay) -> None:
    small = b"hello " + MARKER
    large = MARKER * 200  # compressible: gzip runs before encryption
    before = len(relay.calls)
    with channel(stack.outproxies[CALLER].address) as ch:
        for kind in KINDS:
            for payload in (small, large):
                responses, _ = call_kind(ch, kind, payload)
                assert all(MARKER in response for response in responses)
    relayed = relay.calls[before:]
    assert len(relayed) == 8
    for call in relayed:
        assert call.requests and call.responses
        for message in (*call.requests, *call.responses):
            assert MARKER not in message
        for _, value in (*call.metadata, *call.trailers):
            raw = value if isinstance(value, bytes) else value.encode()
            assert MARKER not in raw


@pytest.mark.parametrize("direction", ["request", "response"])
def test_a_message_changed_between_the_proxies_is_unauthenticated(
        stack: FileStack, relay: RecordingRelay, upstream: UpstreamProcess,
        direction: str) -> None:
    """A man in the middle flips a byte: the in-proxy refuses a request, the out-proxy a
    response; either way the app gets `unauthenticated` naming the proxy that refused."""
    call_id = uuid.uuid4().hex
    setattr(relay, f"flip_{direction}s", True)
    try:
        with channel(stack.outproxies[CALLER].address) as ch, \
                pytest.raises(grpc.RpcError) as raised:
            call_kind(ch, "bidi", b"tampered with", (("x-test-id", call_id),))
    finally:
        setattr(relay, f"flip_{direction}s", False)
    assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert reason_of(raised.value) == "unauthenticated"
    trailers = dict(raised.value.trailing_metadata())
    assert trailers["fastproxy-proxy"] == ("in" if direction == "request" else "out")
    if direction == "request":  # no tampered message reached the app
        assert upstream.wait_record(call_id, "done").get("messages_received", 0) == 0


# --- crafted calls straight to the in-proxy -------------------------------------------


def test_a_correctly_sealed_crafted_call_is_answered(stack: FileStack, chat: NodePolicy) -> None:
    call = new_call(chat)
    replies = crafted_call(stack.inproxy.address, UNARY, call.request_metadata(),
                           [call.seal_request(b"crafted", time.time())])
    assert [call.open_response(reply, time.time()) for reply in replies] == [b"crafted"]


def test_one_flipped_byte_is_unauthenticated(stack: FileStack, chat: NodePolicy) -> None:
    for where in ("middle", "end"):
        call = new_call(chat)
        sealed = bytearray(call.seal_request(random_payload(2048, seed=7), time.time()))
        index = len(sealed) // 2 if where == "middle" else len(sealed) - 1
        sealed[index] ^= 0x01
        assert crafted_refusal(stack.inproxy.address, UNARY, call.request_metadata(),
                               [bytes(sealed)]) == "unauthenticated", where


def test_a_replayed_call_is_unauthenticated(stack: FileStack, relay: RecordingRelay) -> None:
    with channel(stack.outproxies[CALLER].address) as ch:
        call_kind(ch, "unary", b"to be replayed")
    captured = relay.calls[-1]
    header = tuple((k, v) for k, v in captured.metadata
                   if k.startswith("fastproxy-") and isinstance(v, bytes))
    assert header
    assert crafted_refusal(stack.inproxy.address, captured.method, header,
                           captured.requests) == "unauthenticated"


def test_a_replayed_message_within_a_call_is_unauthenticated(stack: FileStack,
                                                             chat: NodePolicy) -> None:
    call = new_call(chat, BIDI)
    first = call.seal_request(b"once", time.time())
    assert crafted_refusal(stack.inproxy.address, BIDI, call.request_metadata(),
                           [first, first]) == "unauthenticated"


def test_a_call_moved_to_another_method_is_unauthenticated(stack: FileStack,
                                                           chat: NodePolicy) -> None:
    call = new_call(chat, UNARY)
    assert crafted_refusal(stack.inproxy.address, CLIENT_STREAM, call.request_metadata(),
                           [call.seal_request(b"m", time.time())]) == "unauthenticated"


def test_a_message_moved_to_another_method_is_unauthenticated(stack: FileStack,
                                                              chat: NodePolicy) -> None:
    sealed_for_unary = new_call(chat, UNARY).seal_request(b"m", time.time())
    target = new_call(chat, CLIENT_STREAM)
    assert crafted_refusal(stack.inproxy.address, CLIENT_STREAM, target.request_metadata(),
                           [sealed_for_unary]) == "unauthenticated"


def test_a_message_moved_to_another_call_is_unauthenticated(stack: FileStack,
                                                            chat: NodePolicy) -> None:
    sealed_elsewhere = new_call(chat, UNARY).seal_request(b"m", time.time())
    target = new_call(chat, UNARY)
    assert crafted_refusal(stack.inproxy.address, UNARY, target.request_metadata(),
                           [sealed_elsewhere]) == "unauthenticated"


def test_a_message_moved_to_another_stream_position_is_unauthenticated(
        stack: FileStack, chat: NodePolicy) -> None:
    call = new_call(chat, BIDI)
    first = call.seal_request(b"first", time.time())
    second = call.seal_request(b"second", time.time())
    assert crafted_refusal(stack.inproxy.address, BIDI, call.request_metadata(),
                           [second, first]) == "unauthenticated"


def test_a_call_signed_with_an_unknown_key_is_unauthenticated(stack: FileStack) -> None:
    rogue = out_node(stack.policy.yaml_text().replace("chat-id", "chat-rogue"))
    call = new_call(rogue)
    assert crafted_refusal(stack.inproxy.address, UNARY, call.request_metadata(),
                           [call.seal_request(b"m", time.time())]) == "unauthenticated"


def test_garbage_instead_of_a_sealed_message_is_malformed(stack: FileStack,
                                                          chat: NodePolicy) -> None:
    call = new_call(chat)
    assert crafted_refusal(stack.inproxy.address, UNARY, call.request_metadata(),
                           [b"garbage\xff\x00 not sealed"]) == "malformed"


# --- allow rules and rate limits ------------------------------------------------------


def test_a_caller_outside_its_method_pattern_is_denied(stack: FileStack) -> None:
    with channel(stack.outproxies[NARROW].address) as ch:
        assert call_kind(ch, "unary", b"allowed")[0] == [b"allowed"]
        with pytest.raises(grpc.RpcError) as raised:
            call_kind(ch, "bidi", b"not allowed")
    assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert reason_of(raised.value) == "denied"


def test_a_caller_no_rule_names_gets_no_route_at_its_out_proxy(stack: FileStack) -> None:
    with channel(stack.outproxies[STRANGER].address) as ch, \
            pytest.raises(grpc.RpcError) as raised:
        call_kind(ch, "unary", b"hello?")
    assert raised.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert reason_of(raised.value) == "no_route"
    trailers = dict(raised.value.trailing_metadata())
    assert trailers.get("fastproxy-proxy") == "out"


def test_rate_limit_lets_at_most_burst_plus_rps_through_in_one_second(stack: FileStack) -> None:
    calls = 30
    with channel(stack.outproxies[METERED].address) as ch:
        method = ch.unary_unary(UNARY)
        start = time.monotonic()
        futures: list[Future[bytes]] = []
        for index in range(calls):  # spread over half a second
            time.sleep(max(0.0, start + index / 60 - time.monotonic()))
            futures.append(method.future(b"x", timeout=10))
        sending_took = time.monotonic() - start
        outcomes: list[str] = []
        for future in futures:
            try:
                future.result()
                outcomes.append("ok")
            except grpc.RpcError as err:
                assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                outcomes.append(str(reason_of(err)))
    assert sending_took < 1.0
    passed = outcomes.count("ok")
    assert 5 <= passed <= 15, outcomes
    assert outcomes.count("rate_limited") == calls - passed
