"""The tunnel between the proxies: fast-path unary calls ride one long-lived `Tunnel/Carry`
stream from the out-proxy to the in-proxy, with every contract and security property of a
call of their own.

1. Real processes: the out-proxy and in-proxy of `test_transport_fast_path` (an upstream serving
   reflection, so `Unary` is learned unary), with a `RecordingRelay` at song_service's endpoint
   that shows what travels between the proxies: one Carry stream, sealed frames only. Payloads,
   metadata, errors with details, deadlines, cancellation and rate limits as without it.
2. Crafted frames straight to the in-proxy, sealed here by the sans-IO core from chat_service's
   own snapshot in sessions opened here (protocol version 2; a session lives in the in-proxy
   process that accepted it, whatever connection or stream its calls then take): a carried
   call is checked exactly as a call of its own (tampered, replayed in the same session or on
   another stream, moved to another method or call, without a CALL record, in a session the
   in-proxy never opened: `unauthenticated`; outside its rule: `denied`; refusals after the
   call opened are sealed), with an audit line; Carry traffic captured between the proxies
   and replayed never reaches the upstream.
3. Lifecycle: an in-proxy killed under calls (`unavailable`, then a new tunnel once it is
   back), a draining in-proxy finishing its carried calls, `--tunnel off` on either side.
4. The framing itself: batches are plain joins of frames, capped in size.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from pathlib import Path

import grpc
import pytest
from support.dataplane import (
    CALLEE,
    CALLER,
    METERED,
    NARROW,
    FileStack,
    Proxies,
    ProxyProcess,
    RecordingRelay,
    channel,
    free_address,
    made_up_session,
    make_pki,
    new_call,
    open_session,
    out_node,
    poll,
    reason_of,
    relayed_file_stack,
    start_file_stack,
    start_tls_pair,
)
from support.upstream_app import (
    CONTROL_ECHO,
    CONTROL_FAIL_CODE,
    CONTROL_FAIL_DETAILS,
    CONTROL_FAIL_STATUS_BIN,
    CONTROL_ID,
    CONTROL_STALL_MS,
    UNARY,
    UpstreamProcess,
)
from test_transport_fast_path import ReflectingFront

import proxy_svc.tunnel as tunnel_module
from fastproxy.pipeline.metadata import CALL_KEY, SESSION_KEY
from fastproxy.pipeline.node_policy import NodePolicy
from fastproxy.pipeline.stages import OutboundCall
from fastproxy.v1 import tunnel_pb2 as tpb
from proxy_svc.tunnel import (
    CARRY_METHOD,
    MAX_BATCH_BYTES,
    CarriedCallContext,
    Outbox,
    TunnelService,
    encoded_frame,
    metadata_entries,
    metadata_of,
)

MARKER = b"PLAINTEXT-MARKER-5c1d"
OTHER_METHOD = "/test.v1.Echo/ClientStream"


@pytest.fixture(scope="module")
def upstream() -> Iterator[UpstreamProcess]:
    with UpstreamProcess(name="song") as process:
        yield process


@pytest.fixture(scope="module")
def front(upstream: UpstreamProcess) -> Iterator[ReflectingFront]:
    with ReflectingFront(upstream.address) as reflecting:
        yield reflecting


@pytest.fixture(scope="module")
def relay_and_stack(front: ReflectingFront, tmp_path_factory: pytest.TempPathFactory
                    ) -> Iterator[tuple[RecordingRelay, FileStack]]:
    with relayed_file_stack(front.address, tmp_path_factory.mktemp("tunnel"),
                            (CALLER, METERED, NARROW)) as relay_and_stack:
        yield relay_and_stack


@pytest.fixture(scope="module")
def relay(relay_and_stack: tuple[RecordingRelay, FileStack]) -> RecordingRelay:
    return relay_and_stack[0]


@pytest.fixture(scope="module")
def stack(relay_and_stack: tuple[RecordingRelay, FileStack]) -> FileStack:
    return relay_and_stack[1]


def tunnel_open(out: ProxyProcess, endpoint: str) -> None:
    """Calls `Unary` through `out` until the out-proxy has learned it and opened its tunnel
    to `endpoint` (the first calls take a stream of their own while that happens), then
    once more on the tunnel (which opens its session on the tunnel's connection)."""
    ch = channel(out.address)
    method = ch.unary_unary(UNARY)

    def opened() -> bool:
        assert method(b"warm up", timeout=10) == b"warm up"
        return f"tunnel to {endpoint} open" in out.log()

    poll(opened, 15, f"the out-proxy opening its tunnel to {endpoint}", interval=0.1)
    assert method(b"on the tunnel", timeout=10) == b"on the tunnel"
    ch.close()


def carried_frames(relayed: bytes) -> list[tpb.TunnelFrame]:
    return list(tpb.TunnelFrames.FromString(relayed).frames)


def new_id() -> str:
    return uuid.uuid4().hex


# --- 1. through real proxies ----------------------------------------------------------


def credentials(call_id: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {MARKER.decode()}-{call_id}"),
            ("cookie", f"sid={MARKER.decode()}"))


def test_unary_calls_ride_one_sealed_stream_between_the_proxies(
        stack: FileStack, relay: RecordingRelay, upstream: UpstreamProcess) -> None:
    """Payloads and credential metadata (`authorization`, `cookie`) travel sealed in the
    frames; the upstream gets the credentials back."""
    out = stack.outproxies[CALLER]
    tunnel_open(out, relay.address)
    before = len(relay.calls)
    ids = [new_id() for _ in range(40)]
    with channel(out.address) as ch:
        method = ch.unary_unary(UNARY)
        # one at a time, then all at once (frames then share stream messages)
        for call_id in ids[:10]:
            assert method(MARKER + call_id.encode(),
                          metadata=((CONTROL_ID, call_id), *credentials(call_id)),
                          timeout=10) == MARKER + call_id.encode()
        futures = [method.future(MARKER + call_id.encode(),
                                 metadata=((CONTROL_ID, call_id), *credentials(call_id)),
                                 timeout=10) for call_id in ids[10:]]
        assert [future.result() for future in futures] == [
            MARKER + call_id.encode() for call_id in ids[10:]]
    # No call of its own went between the proxies: all rode the Carry stream opened before.
    assert not relay.calls[before:]
    carry = [call for call in relay.calls if call.method == CARRY_METHOD]
    assert len(carry) == 1
    frames = [frame for message in carry[0].requests for frame in carried_frames(message)]
    calls = [frame.call for frame in frames if frame.HasField("call")]
    assert {call.method for call in calls} == {UNARY}
    assert len(calls) >= len(ids)
    for call in calls:
        assert any(entry.key == CALL_KEY for entry in call.metadata)
        assert not {entry.key for entry in call.metadata} & {"authorization", "cookie"}
    # Sealed: no plaintext in what travelled, either way (frame metadata included).
    for message in (*carry[0].requests, *carry[0].responses):
        assert MARKER not in message
    for _, value in (*carry[0].metadata, *carry[0].initial, *carry[0].trailers):
        assert MARKER not in (value if isinstance(value, bytes) else value.encode())
    # The upstream got each call once, whole, with a deadline and its credentials.
    for call_id in ids:
        record = upstream.record(call_id)
        assert (record["method"], record["messages_received"]) == (UNARY, 1)
        assert 0 < record["deadline_remaining_s"] <= 10.5
        for entry in credentials(call_id):
            assert entry in record["metadata"]


def test_metadata_and_an_apps_error_with_details_pass_unchanged(
        stack: FileStack, relay: RecordingRelay) -> None:
    out = stack.outproxies[CALLER]
    tunnel_open(out, relay.address)
    before = len(relay.calls)
    status_bin = b"\x08\x05\x12\x0cno such song"
    with channel(out.address) as ch:
        response, call = ch.unary_unary(UNARY).with_call(
            b"hello", timeout=10, metadata=((CONTROL_ECHO, "1"), ("x-echo-text", "a b"),
                                            ("x-echo-raw-bin", b"\x00\xff\x01")))
        assert response == b"hello"
        initial = dict(call.initial_metadata())
        trailers = dict(call.trailing_metadata())
        with pytest.raises(grpc.RpcError) as raised:
            ch.unary_unary(UNARY)(b"x", timeout=10, metadata=(
                (CONTROL_FAIL_CODE, "NOT_FOUND"), (CONTROL_FAIL_DETAILS, "no such song"),
                (CONTROL_FAIL_STATUS_BIN, status_bin), (CONTROL_ECHO, "1"),
                ("x-echo-why-bin", b"\x00\x01")))
    assert not relay.calls[before:]  # both carried
    for seen in (initial, trailers):
        assert seen["x-echo-text"] == "a b"
        assert seen["x-echo-raw-bin"] == b"\x00\xff\x01"
        assert not [key for key in seen if key.startswith("fastproxy-")]
    error = raised.value
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert error.details() == "no such song"
    error_trailers = tuple(error.trailing_metadata())
    assert ("grpc-status-details-bin", status_bin) in error_trailers
    assert ("x-echo-why-bin", b"\x00\x01") in error_trailers
    assert not [key for key, _ in error_trailers if key.startswith("fastproxy-")]


def test_a_carried_call_keeps_the_clients_deadline(
        stack: FileStack, relay: RecordingRelay, upstream: UpstreamProcess) -> None:
    """(A deadline of the service's `timeout_ms` ending a carried call with our `deadline`
    reason: `test_a_carried_calls_timeout_caps_the_upstream_deadline` below.)"""
    out = stack.outproxies[CALLER]
    tunnel_open(out, relay.address)
    before = len(relay.calls)
    short_id = new_id()
    with channel(out.address) as ch:
        ch.unary_unary(UNARY)(b"x", timeout=1.0, metadata=((CONTROL_ID, short_id),))
        with pytest.raises(grpc.RpcError) as raised:
            ch.unary_unary(UNARY)(b"x", timeout=0.5, metadata=((CONTROL_STALL_MS, "3000"),))
    assert not relay.calls[before:]
    remaining = upstream.record(short_id)["deadline_remaining_s"]
    assert 0 < remaining <= 1.05
    assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


def test_a_client_cancel_reaches_the_upstream_through_the_tunnel(
        stack: FileStack, relay: RecordingRelay, upstream: UpstreamProcess) -> None:
    out = stack.outproxies[CALLER]
    tunnel_open(out, relay.address)
    call_id = new_id()
    with channel(out.address) as ch:
        future = ch.unary_unary(UNARY).future(
            b"x", timeout=30, metadata=((CONTROL_ID, call_id), (CONTROL_STALL_MS, "20000")))
        poll(lambda: bool(upstream.record(call_id)), 5, "the call reaching the upstream")
        future.cancel()
    record = upstream.wait_record(call_id, "cancelled", timeout_s=5)
    assert record["cancelled"] is True


def test_rate_limit_holds_for_carried_calls(stack: FileStack, relay: RecordingRelay) -> None:
    """metered_service: 10 rps, burst 5 (the same check as without the tunnel)."""
    out = stack.outproxies[METERED]
    time.sleep(1.0)  # let the bucket refill after the warm-up below
    tunnel_open(out, relay.address)
    time.sleep(1.0)
    before = len(relay.calls)
    calls = 30
    with channel(out.address) as ch:
        method = ch.unary_unary(UNARY)
        start = time.monotonic()
        futures: list[Future[bytes]] = []
        for index in range(calls):
            time.sleep(max(0.0, start + index / 60 - time.monotonic()))
            futures.append(method.future(b"x", timeout=10))
        outcomes = []
        for future in futures:
            try:
                future.result()
                outcomes.append("ok")
            except grpc.RpcError as err:
                assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                outcomes.append(str(reason_of(err)))
    assert not relay.calls[before:]
    passed = outcomes.count("ok")
    assert 5 <= passed <= 15, outcomes
    assert outcomes.count("rate_limited") == calls - passed


# --- 2. crafted frames straight to the in-proxy ----------------------------------------


@pytest.fixture(scope="module")
def chat(stack: FileStack) -> NodePolicy:
    return out_node(stack.policy.yaml_text())


def call_frame(call_id: int, method: str, metadata: Sequence[tuple[str, str | bytes]],
               message: bytes, timeout_s: float = 5.0) -> tpb.TunnelFrame:
    return tpb.TunnelFrame(id=call_id, call=tpb.TunnelCall(
        method=method, metadata=metadata_entries(metadata),
        timeout_us=int(timeout_s * 1e6), message=message))


def sealed_frame(call_id: int, call: OutboundCall, message: bytes, *, method: str | None = None,
                 timeout_s: float = 5.0) -> tpb.TunnelFrame:
    """`call` carried as the out-proxy carries it: its metadata (the CALL record in it) and
    its one request, flagged final (`method`: sent as another method than it was sealed for)."""
    return call_frame(call_id, method or call.method, call.metadata,
                      call.seal_request(message, final=True), timeout_s)


def carry(address: str, messages: Sequence[tpb.TunnelFrames | bytes],
          timeout_s: float = 10.0) -> dict[int, tpb.TunnelReply]:
    """One Carry stream to `address`: sends `messages`, half-closes, returns the replies."""
    with channel(address) as ch:
        stream = ch.stream_stream(CARRY_METHOD, response_deserializer=tpb.TunnelFrames.FromString)
        requests = iter([m if isinstance(m, bytes) else m.SerializeToString() for m in messages])
        return {frame.id: frame.reply for batch in stream(requests, timeout=timeout_s)
                for frame in batch.frames if frame.HasField("reply")}


def reply_reason(reply: tpb.TunnelReply) -> str | None:
    trailers = dict(metadata_of(reply.trailing_metadata))
    reason = trailers.get("fastproxy-error")
    return None if reason is None else str(reason)


def opened_reply(call: OutboundCall, reply: tpb.TunnelReply) -> bytes:
    """The response of a carried call, its head and end checked as the out-proxy checks them."""
    call.open_head(metadata_of(reply.initial_metadata))
    opened = call.open_response(reply.message)
    call.open_end(reply.code, reply.details, metadata_of(reply.trailing_metadata))
    return opened


def sealed_refusal(call: OutboundCall, reply: tpb.TunnelReply) -> None:
    """The refusal of a call that opened carries a STATUS record sealed for that call."""
    call.open_head(metadata_of(reply.initial_metadata))
    call.open_end(reply.code, reply.details, metadata_of(reply.trailing_metadata))


def test_a_correctly_sealed_carried_call_is_answered(stack: FileStack, chat: NodePolicy) -> None:
    call = new_call(chat, stack.inproxy.address)
    replies = carry(stack.inproxy.address, [tpb.TunnelFrames(frames=[
        sealed_frame(7, call, b"crafted")])])
    assert list(replies) == [7]
    assert replies[7].code == grpc.StatusCode.OK.value[0]
    assert opened_reply(call, replies[7]) == b"crafted"


def test_tampered_replayed_moved_or_unsigned_carried_calls_are_unauthenticated(
        stack: FileStack, chat: NodePolicy, upstream: UpstreamProcess) -> None:
    address = stack.inproxy.address
    session = open_session(chat, address)

    def in_session(**metadata: str) -> OutboundCall:
        return new_call(chat, address, metadata=tuple(metadata.items()), session=session)

    flipped_call = in_session()
    sealed = bytearray(flipped_call.seal_request(b"tampered " * 50, final=True))
    sealed[len(sealed) // 2] ^= 0x01
    replayed_call = in_session()
    replayed = sealed_frame(2, replayed_call, b"once")
    replayed_again = tpb.TunnelFrame()
    replayed_again.CopyFrom(replayed)
    replayed_again.id = 3
    moved_call, unsigned_call = in_session(), in_session()
    sealed_elsewhere, target = in_session(), in_session()
    unknown_id = new_id()
    unknown_session_call = new_call(chat, address, metadata=((CONTROL_ID, unknown_id),),
                                    session=made_up_session(chat))
    frames = [
        call_frame(1, UNARY, flipped_call.metadata, bytes(sealed)),
        replayed, replayed_again,
        sealed_frame(4, moved_call, b"m", method=OTHER_METHOD),
        call_frame(5, UNARY, (), unsigned_call.seal_request(b"m", final=True)),
        call_frame(6, UNARY, target.metadata, sealed_elsewhere.seal_request(b"m", final=True)),
        sealed_frame(7, unknown_session_call, b"m"),
    ]
    replies = carry(address, [tpb.TunnelFrames(frames=frames)])
    assert replies[2].code == grpc.StatusCode.OK.value[0]
    assert opened_reply(replayed_call, replies[2]) == b"once"
    for call_id in (1, 3, 4, 5, 6, 7):
        assert replies[call_id].code == grpc.StatusCode.UNAUTHENTICATED.value[0], call_id
        assert reply_reason(replies[call_id]) == "unauthenticated", call_id
        assert dict(metadata_of(replies[call_id].trailing_metadata))["fastproxy-proxy"] == "in"
    assert "replayed" in replies[3].details
    # Refusals of calls that opened are sealed for them (the in-proxy's own answers).
    sealed_refusal(flipped_call, replies[1])
    sealed_refusal(moved_call, replies[4])
    sealed_refusal(target, replies[6])
    # A session the in-proxy never opened: the caller is told to open one.
    assert (SESSION_KEY, "unknown") in metadata_of(replies[7].trailing_metadata)
    assert upstream.record(unknown_id) == {}
    # The same frame on another stream is a replay too.
    again = carry(address, [tpb.TunnelFrames(frames=[replayed])])
    assert reply_reason(again[2]) == "unauthenticated"
    assert "replayed" in again[2].details


def test_carried_calls_captured_between_the_proxies_and_replayed_are_unauthenticated(
        stack: FileStack, relay: RecordingRelay, upstream: UpstreamProcess) -> None:
    """What the relay captured of the Carry stream, sent again on a stream of the
    attacker's own to the same in-proxy: every call in it is refused, none reaches the
    upstream."""
    out = stack.outproxies[CALLER]
    tunnel_open(out, relay.address)
    streams = [call for call in relay.calls if call.method == CARRY_METHOD]
    already = [len(stream.requests) for stream in streams]
    ids = [new_id() for _ in range(5)]
    with channel(out.address) as ch:
        for call_id in ids:
            assert ch.unary_unary(UNARY)(b"captured", metadata=((CONTROL_ID, call_id),),
                                         timeout=10) == b"captured"
    captured = [message for stream, seen in zip(streams, already, strict=True)
                for message in stream.requests[seen:]]
    frames = [frame for message in captured for frame in carried_frames(message)
              if frame.HasField("call")]
    assert len(frames) == len(ids)
    originals = {call_id: upstream.wait_record(call_id, "done") for call_id in ids}
    calls_before = upstream.calls()
    replies = carry(stack.inproxy.address, captured)
    assert sorted(replies) == sorted(frame.id for frame in frames)
    for reply in replies.values():
        assert reply.code == grpc.StatusCode.UNAUTHENTICATED.value[0]
        assert reply_reason(reply) == "unauthenticated"
        assert "replayed" in reply.details
    assert upstream.calls() == calls_before
    assert {call_id: upstream.record(call_id) for call_id in ids} == originals


def test_a_carried_call_outside_its_rule_is_denied(stack: FileStack) -> None:
    """narrow_service may call Unary only; its out-proxy routes by service, so a call to
    another method of song_service is sealed in its session, and the in-proxy denies it."""
    narrow = out_node(stack.policy.yaml_text(), NARROW)
    session = open_session(narrow, stack.inproxy.address)
    allowed = new_call(narrow, "", UNARY, session=session)
    other = new_call(narrow, "", OTHER_METHOD, session=session)
    replies = carry(stack.inproxy.address, [tpb.TunnelFrames(frames=[
        sealed_frame(1, allowed, b"ok"), sealed_frame(2, other, b"no")])])
    assert replies[1].code == grpc.StatusCode.OK.value[0]
    assert opened_reply(allowed, replies[1]) == b"ok"
    assert replies[2].code == grpc.StatusCode.PERMISSION_DENIED.value[0]
    assert reply_reason(replies[2]) == "denied"
    sealed_refusal(other, replies[2])


def test_a_refused_carried_call_is_one_audit_line_naming_the_tunnels_peer(
        stack: FileStack, chat: NodePolicy) -> None:
    call = new_call(chat, stack.inproxy.address)
    marker_method = f"/test.v1.Echo/Audited{uuid.uuid4().hex[:8]}"
    carry(stack.inproxy.address, [tpb.TunnelFrames(frames=[
        sealed_frame(1, call, b"m", method=marker_method)])])
    poll(lambda: marker_method in stack.inproxy.log(), 5, "the audit line")
    lines = [line for line in stack.inproxy.log().splitlines() if marker_method in line]
    assert len(lines) == 1
    assert "call refused" in lines[0]
    assert "unauthenticated" in lines[0]
    assert "127.0.0.1" in lines[0]


def test_a_cancel_frame_ends_the_upstream_call_and_gets_no_reply(
        stack: FileStack, chat: NodePolicy, upstream: UpstreamProcess) -> None:
    call_id = new_id()
    call = new_call(chat, stack.inproxy.address,
                    metadata=((CONTROL_ID, call_id), (CONTROL_STALL_MS, "20000")))
    frame = sealed_frame(9, call, b"x", timeout_s=30)
    sent = threading.Event()

    def messages() -> Iterator[bytes]:
        yield tpb.TunnelFrames(frames=[frame]).SerializeToString()
        poll(lambda: bool(upstream.record(call_id)), 5, "the call reaching the upstream")
        yield tpb.TunnelFrames(frames=[tpb.TunnelFrame(id=9, cancel=True)]).SerializeToString()
        sent.set()

    with channel(stack.inproxy.address) as ch:
        stream = ch.stream_stream(CARRY_METHOD, response_deserializer=tpb.TunnelFrames.FromString)
        replies = list(stream(messages(), timeout=10))
    assert sent.is_set()
    assert not [frame for batch in replies for frame in batch.frames if frame.HasField("reply")]
    assert upstream.wait_record(call_id, "cancelled", timeout_s=5)["cancelled"] is True


def test_a_carried_calls_timeout_caps_the_upstream_deadline(
        stack: FileStack, chat: NodePolicy, upstream: UpstreamProcess) -> None:
    call_id = new_id()
    session = open_session(chat, stack.inproxy.address)
    call = new_call(chat, "", metadata=((CONTROL_ID, call_id),), session=session)
    slow = new_call(chat, "", metadata=((CONTROL_STALL_MS, "3000"),), session=session)
    replies = carry(stack.inproxy.address, [tpb.TunnelFrames(frames=[
        sealed_frame(1, call, b"x", timeout_s=0.8),
        sealed_frame(2, slow, b"x", timeout_s=0.3),
    ])])
    assert replies[1].code == grpc.StatusCode.OK.value[0]
    assert opened_reply(call, replies[1]) == b"x"
    assert 0 < upstream.record(call_id)["deadline_remaining_s"] <= 0.85
    assert replies[2].code == grpc.StatusCode.DEADLINE_EXCEEDED.value[0]
    assert reply_reason(replies[2]) == "deadline"
    sealed_refusal(slow, replies[2])
    # A slow app is not a changed kind: the in-proxy keeps Unary on its fast path.
    assert f"method {UNARY} left the fast path" not in stack.inproxy.log()


def test_garbage_on_a_carry_stream_ends_that_stream_only(stack: FileStack,
                                                        chat: NodePolicy) -> None:
    with pytest.raises(grpc.RpcError):
        carry(stack.inproxy.address, [b"\xff\xff\xff not a frame"])
    test_a_correctly_sealed_carried_call_is_answered(stack, chat)


# --- 3. lifecycle ---------------------------------------------------------------------


@pytest.fixture
def direct_stack(front: ReflectingFront, tmp_path: Path) -> Iterator[tuple[Proxies, FileStack]]:
    proxies = Proxies(tmp_path)
    try:
        yield proxies, start_file_stack(proxies, front.address, tmp_path)
    finally:
        for proxy in proxies.started:
            proxy.kill()


def test_an_in_proxy_killed_under_carried_calls_gives_unavailable_then_a_new_tunnel(
        direct_stack: tuple[Proxies, FileStack], front: ReflectingFront) -> None:
    proxies, stack = direct_stack
    out, inproxy = stack.outproxies[CALLER], stack.inproxy
    tunnel_open(out, inproxy.address)
    with channel(out.address) as ch:
        method = ch.unary_unary(UNARY)
        in_flight = [method.future(b"x", timeout=10, metadata=((CONTROL_STALL_MS, "5000"),))
                     for _ in range(5)]
        time.sleep(0.5)
        inproxy.kill()
        for future in in_flight:
            with pytest.raises(grpc.RpcError) as raised:
                future.result()
            assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
            assert reason_of(raised.value) == "unavailable"
            assert dict(raised.value.trailing_metadata())["fastproxy-proxy"] == "out"
        assert "closed" in out.log()
        # Each refusal is one audit line naming both parties (no telemetry needed for that).
        audit = [line for line in out.log().splitlines()
                 if "call refused" in line and "reason=unavailable" in line]
        assert len(audit) == len(in_flight)
        assert all("caller=chat_service" in line and "callee=song_service" in line
                   for line in audit), audit
        # Back on the same address: calls work again, on a new tunnel.
        restarted = proxies.start("in", "song_service", inproxy.address,
                                  policy=stack.policy_path, upstream=front.address)

        def answered() -> bool:
            try:
                return bool(method(b"back", timeout=5) == b"back")
            except grpc.RpcError:
                return False

        poll(answered, 15, "calls answered again after the in-proxy restarted")
        poll(lambda: method(b"again", timeout=5) == b"again"
             and out.log().count(f"tunnel to {inproxy.address} open") >= 2, 15,
             "a second tunnel")
        assert restarted.running()


def test_a_draining_in_proxy_finishes_its_carried_calls(
        direct_stack: tuple[Proxies, FileStack]) -> None:
    _, stack = direct_stack
    out, inproxy = stack.outproxies[CALLER], stack.inproxy
    tunnel_open(out, inproxy.address)
    with channel(out.address) as ch:
        method = ch.unary_unary(UNARY)
        slow = [method.future(b"slow", timeout=20, metadata=((CONTROL_STALL_MS, "1500"),))
                for _ in range(3)]
        time.sleep(0.3)
        assert inproxy.terminate() == 0
        assert [future.result() for future in slow] == [b"slow"] * 3
    assert "tunnel to" in out.log()


def test_the_tunnel_runs_over_mutual_tls_between_the_proxies(
        front: ReflectingFront, tmp_path: Path) -> None:
    pki = make_pki(tmp_path, (CALLEE, CALLER, "chat_app"))
    proxies = Proxies(tmp_path)
    try:
        inproxy, out, app = start_tls_pair(proxies, pki, front.address, tmp_path)
        in_address = inproxy.address
        with channel(out.address, app) as ch:
            method = ch.unary_unary(UNARY)

            def opened() -> bool:
                assert method(b"over mTLS", timeout=10) == b"over mTLS"
                return f"tunnel to {in_address} open" in out.log()

            poll(opened, 15, "the tunnel over mTLS", interval=0.1)
            assert [method(b"carried", timeout=10) for _ in range(5)] == [b"carried"] * 5
        # Without a client certificate no stream, tunnel or not, reaches the in-proxy.
        with channel(in_address, pki.client_credentials(None)) as ch, \
                pytest.raises(grpc.RpcError) as raised:
            list(ch.stream_stream(CARRY_METHOD)(iter([b""]), timeout=5))
        assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        for proxy in proxies.started:
            proxy.kill()


@pytest.mark.parametrize("side", ["out", "in"])
def test_tunnel_off_on_either_side_sends_calls_one_stream_each(
        front: ReflectingFront, tmp_path: Path, side: str) -> None:
    in_address = free_address()
    relay = RecordingRelay(in_address).start()
    proxies = Proxies(tmp_path)
    try:
        path = tmp_path / "policy.yaml"
        stack = start_file_stack(proxies, front.address, tmp_path, endpoint=relay.address,
                                 in_address=in_address)
        stack.outproxies[CALLER].kill()
        stack.inproxy.kill()
        inproxy = proxies.start("in", "song_service", in_address, policy=path,
                                upstream=front.address,
                                extra=("--tunnel", "off") if side == "in" else ())
        out = proxies.start("out", CALLER, free_address(), policy=path,
                            extra=("--tunnel", "off") if side == "out" else ())
        with channel(out.address) as ch:
            method = ch.unary_unary(UNARY)
            for _ in range(20):
                assert method(b"x", timeout=10) == b"x"
                time.sleep(0.05)
        assert "is unary (from the in-proxy's sealed end)" in out.log()
        assert "tunnel to" not in out.log().replace("offers no tunnel", "")
        assert sum(call.method == UNARY for call in relay.calls) == 20
        if side == "in":
            poll(lambda: "offers no tunnel (UNIMPLEMENTED)" in out.log(), 5, "the fallback")
            assert "call refused" not in inproxy.log()
    finally:
        for proxy in proxies.started:
            proxy.kill()
        relay.stop()


# --- 4. the framing -------------------------------------------------------------------


def test_metadata_entries_round_trip_text_and_binary() -> None:
    metadata = (("x-text", "a b"), ("x-raw-bin", b"\x00\xff"), ("traceparent", "00-ab-cd-01"))
    assert metadata_of(metadata_entries(metadata)) == metadata


def test_a_batch_is_the_frames_joined_in_order_and_capped_in_size() -> None:
    async def batches() -> list[bytes]:
        outbox = Outbox()
        for index in range(1, 6):
            outbox.put(encoded_frame(tpb.TunnelFrame(id=index, cancel=True)))
        big = encoded_frame(tpb.TunnelFrame(id=6, reply=tpb.TunnelReply(
            message=b"b" * MAX_BATCH_BYTES)))
        assert outbox.size == 5 * len(encoded_frame(tpb.TunnelFrame(id=1, cancel=True)))
        first = await outbox.next_batch()
        assert outbox.size == 0
        outbox.put(big)
        outbox.put(encoded_frame(tpb.TunnelFrame(id=7, goaway=True)))
        outbox.close()
        rest = [await outbox.next_batch(), await outbox.next_batch(), await outbox.next_batch()]
        assert first is not None
        return [first, *[batch for batch in rest if batch is not None]] + (
            [b"<end>"] if rest[-1] is None else [])

    first, big, last, end = asyncio.run(batches())
    assert [frame.id for frame in carried_frames(first)] == [1, 2, 3, 4, 5]
    assert [frame.id for frame in carried_frames(big)] == [6]  # alone: over the cap
    assert [frame.id for frame in carried_frames(last)] == [7]
    assert end == b"<end>"


def test_an_in_proxy_starts_no_more_carried_calls_than_its_limit_at_once(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A peer sending calls faster than they end is held back: the in-proxy stops reading
    its stream at MAX_PENDING running calls (8 here) and goes on as they end."""
    monkeypatch.setattr(tunnel_module, "MAX_PENDING", 8)
    sent_calls = 20

    async def scenario() -> tuple[int, int, int]:
        running = started = 0
        most = 0
        release = asyncio.Event()

        async def serve(method: str, message: bytes, context: CarriedCallContext) -> bytes:
            nonlocal running, started, most
            started += 1
            running += 1
            most = max(most, running)
            await release.wait()
            running -= 1
            return message

        server = grpc.aio.server()
        server.add_generic_rpc_handlers((TunnelService(serve),))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
                stream = ch.stream_stream(CARRY_METHOD, None, tpb.TunnelFrames.FromString)()
                assert not (await stream.read()).frames  # the in-proxy's first, empty message
                for call_id in range(1, sent_calls + 1):
                    await stream.write(encoded_frame(call_frame(call_id, UNARY, (), b"m")))
                await asyncio.sleep(0.5)
                started_before_release = started
                release.set()
                await stream.done_writing()
                replies = 0
                while (batch := await stream.read()) is not grpc.aio.EOF:
                    replies += sum(frame.HasField("reply") for frame in batch.frames)
                return started_before_release, most, replies
        finally:
            await server.stop(0)

    started_before_release, most, replies = asyncio.run(scenario())
    assert started_before_release == 8
    assert most == 8
    assert replies == sent_calls
