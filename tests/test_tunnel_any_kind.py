"""No reflection, no penalty (issue 15): calls to an upstream that serves no server reflection,
whose method kinds no proxy knows, through real proxies.

1. Every RPC kind works through the chain. A call whose client sent one request and
   half-closed (unary, server-streaming, and client-streaming or bidi with one request) rides
   the tunnel as an `any_kind` call: no HTTP/2 stream of its own between the proxies; its
   responses come back one at a time (a `response` frame, then the out-proxy's `ack`), or
   in the reply when the end follows at once. A method seen streaming (two requests, two
   responses) takes a stream of its own from then on. Metadata, an app's error with its
   details, the client's deadline and its cancel pass as on any other path.
2. The chain, with `--tunnel on` and `off` on the out-proxy: every kind, metadata both ways,
   errors, deadlines (the forwarding contract through real processes).
3. The tunnel's rule for `any_kind` responses: an in-proxy that sends a second response before
   the first was taken and acked fails that call, rather than make the out-proxy hold more.
4. Crafted `any_kind` frames straight to the in-proxy are checked as any call: tampered,
   replayed, moved to another method, or a request not sealed as the only one (a stream cut
   short): `unauthenticated`, and the upstream never sees them.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import grpc
import pytest
from support.dataplane import (
    CALLER,
    FileStack,
    Proxies,
    RecordingRelay,
    call_kind,
    channel,
    new_call,
    open_session,
    out_node,
    poll,
    relayed_file_stack,
    start_file_stack,
)
from support.transport import KINDS
from support.upstream_app import (
    BIDI,
    CLIENT_STREAM,
    CONTROL_ECHO,
    CONTROL_FAIL_CODE,
    CONTROL_FAIL_DETAILS,
    CONTROL_ID,
    CONTROL_REPEAT,
    CONTROL_STALL_EACH_MS,
    CONTROL_STALL_MS,
    SERVER_STREAM,
    UNARY,
    UpstreamProcess,
)
from test_tunnel import call_frame, reply_reason

from fastproxy.pipeline.stages import OutboundCall
from fastproxy.v1 import tunnel_pb2 as tpb
from proxy_svc.tunnel import CARRY_METHOD, TunnelCall, metadata_of


@pytest.fixture(scope="module")
def upstream() -> Iterator[UpstreamProcess]:
    # The test upstream serves no reflection: no kind is known to any proxy.
    with UpstreamProcess(name="no-reflection") as process:
        yield process


@pytest.fixture(scope="module")
def relay_and_stack(upstream: UpstreamProcess, tmp_path_factory: pytest.TempPathFactory
                    ) -> Iterator[tuple[RecordingRelay, FileStack]]:
    with relayed_file_stack(upstream.address, tmp_path_factory.mktemp("any-kind"),
                            (CALLER,)) as relay_and_stack:
        yield relay_and_stack


def new_id() -> str:
    return uuid.uuid4().hex


def frames(messages: list[bytes]) -> list[tpb.TunnelFrame]:
    return [frame for message in messages
            for frame in tpb.TunnelFrames.FromString(message).frames]


def open_tunnel(stack: FileStack, relay: RecordingRelay) -> None:
    out = stack.outproxies[CALLER]
    with channel(out.address) as ch:
        def opened() -> bool:
            assert ch.unary_unary(UNARY)(b"warm up", timeout=10) == b"warm up"
            return f"tunnel to {relay.address} open" in out.log()

        poll(opened, 15, "the out-proxy opening its tunnel", interval=0.1)
        assert ch.unary_unary(UNARY)(b"on the tunnel", timeout=10) == b"on the tunnel"


def carry_call(relay: RecordingRelay) -> object:
    carry = [call for call in relay.calls if call.method == CARRY_METHOD]
    assert len(carry) == 1
    return carry[0]


# --- 1. every kind, single-request calls on the tunnel -----------------------------------


def test_single_request_calls_of_any_kind_ride_the_tunnel_without_reflection(
        relay_and_stack: tuple[RecordingRelay, FileStack], upstream: UpstreamProcess) -> None:
    relay, stack = relay_and_stack
    out = stack.outproxies[CALLER]
    open_tunnel(stack, relay)
    before = len(relay.calls)
    ids = {kind: new_id() for kind in ("unary", "server", "client_one", "bidi_one")}
    with channel(out.address) as ch:
        for _ in range(5):
            assert ch.unary_unary(UNARY)(b"u", timeout=10) == b"u"
        assert ch.unary_unary(UNARY)(b"u", timeout=10,
                                     metadata=((CONTROL_ID, ids["unary"]),)) == b"u"
        # a server stream whose messages come with a pause: one response frame at a time
        assert list(ch.unary_stream(SERVER_STREAM)(
            b"s", timeout=10, metadata=((CONTROL_ID, ids["server"]), (CONTROL_REPEAT, "3"),
                                        (CONTROL_STALL_EACH_MS, "20")))) == [b"s"] * 3
        # client-streaming and bidi methods called with one request: carried too
        assert ch.stream_unary(CLIENT_STREAM)(
            iter([b"c"]), timeout=10, metadata=((CONTROL_ID, ids["client_one"]),)) == b"c"
        assert list(ch.stream_stream(BIDI)(
            iter([b"b"]), timeout=10, metadata=((CONTROL_ID, ids["bidi_one"]),))) == [b"b"]
        # an error after a response: the (sealed, counted) response arrives, then the error
        stream = ch.stream_stream(BIDI)(iter([b"e"]), timeout=10, metadata=(
            (CONTROL_FAIL_CODE, "ABORTED"), (CONTROL_FAIL_DETAILS, "after one")))
        got = []
        with pytest.raises(grpc.RpcError) as after:
            for message in stream:
                got.append(message)
        assert got == [b"e"]
        assert (after.value.code(), after.value.details()) == (grpc.StatusCode.ABORTED,
                                                               "after one")
    # None of them opened a stream of its own between the proxies.
    assert not relay.calls[before:]
    carry = carry_call(relay)
    sent = frames(carry.requests)  # type: ignore[attr-defined]
    calls = {frame.id: frame.call for frame in sent if frame.HasField("call")}
    carried = {call.method for call in calls.values() if call.any_kind}
    assert {UNARY, SERVER_STREAM, CLIENT_STREAM, BIDI} <= carried
    # The server stream's three responses, 20 ms apart: each in a frame of its own (the
    # end did not follow at once), each acked before the next came (the last one's ack may
    # cross the reply), then the reply with the status.
    server_id = next(i for i, call in calls.items() if call.method == SERVER_STREAM)
    back = [frame for frame in frames(carry.responses)  # type: ignore[attr-defined]
            if frame.id == server_id]
    bodies = [frame.WhichOneof("body") for frame in back]
    responses = bodies.count("response")
    assert bodies == ["response"] * responses + ["reply"] and responses >= 2
    assert responses + back[-1].reply.HasField("message") == 3
    acks = [frame for frame in sent if frame.id == server_id and frame.ack]
    assert responses - 1 <= len(acks) <= responses
    # A unary answer is one reply frame.
    unary_ids = [i for i, call in calls.items() if call.method == UNARY]
    unary_back = [frame for frame in frames(carry.responses)  # type: ignore[attr-defined]
                  if frame.id in unary_ids]
    assert {frame.WhichOneof("body") for frame in unary_back} == {"reply"}
    assert all(frame.reply.HasField("message") for frame in unary_back)
    for key, method in (("unary", UNARY), ("server", SERVER_STREAM),
                        ("client_one", CLIENT_STREAM), ("bidi_one", BIDI)):
        record = upstream.record(ids[key])
        assert (record["method"], record["messages_received"]) == (method, 1)
        assert 0 < record["deadline_remaining_s"] <= 10.5
    # Answering three times shows the method streams: the out-proxy knows it (certain).
    assert f"method {SERVER_STREAM} streams" in out.log()


def test_a_streamed_method_then_takes_a_stream_of_its_own(
        relay_and_stack: tuple[RecordingRelay, FileStack]) -> None:
    relay, stack = relay_and_stack
    out = stack.outproxies[CALLER]
    open_tunnel(stack, relay)
    with channel(out.address) as ch:
        # two requests: a call of its own, and the method is known to stream requests
        assert ch.stream_unary(CLIENT_STREAM)(iter([b"a", b"b"]), timeout=10) == b"ab"
        poll(lambda: f"method {CLIENT_STREAM} streams" in out.log(), 5,
             "the out-proxy learning that ClientStream streams")
        before = len(relay.calls)
        assert ch.stream_unary(CLIENT_STREAM)(iter([b"c"]), timeout=10) == b"c"
        assert list(ch.stream_stream(BIDI)(iter([b"x", b"y"]), timeout=10)) == [b"x", b"y"]
    own = [call.method for call in relay.calls[before:]]
    assert CLIENT_STREAM in own and BIDI in own


def test_an_apps_error_metadata_deadline_and_cancel_on_the_any_kind_path(
        relay_and_stack: tuple[RecordingRelay, FileStack], upstream: UpstreamProcess) -> None:
    relay, stack = relay_and_stack
    out = stack.outproxies[CALLER]
    open_tunnel(stack, relay)
    before = len(relay.calls)
    with channel(out.address) as ch:
        response, call = ch.unary_unary(UNARY).with_call(
            b"m", timeout=10, metadata=((CONTROL_ECHO, "1"), ("x-echo-text", "a b"),
                                        ("x-echo-raw-bin", b"\x00\xff")))
        assert response == b"m"
        for seen in (dict(call.initial_metadata()), dict(call.trailing_metadata())):
            assert seen["x-echo-text"] == "a b" and seen["x-echo-raw-bin"] == b"\x00\xff"
            assert not [key for key in seen if key.startswith("fastproxy-")]
        with pytest.raises(grpc.RpcError) as failed:
            ch.unary_unary(UNARY)(b"x", timeout=10, metadata=(
                (CONTROL_FAIL_CODE, "NOT_FOUND"), (CONTROL_FAIL_DETAILS, "no such song")))
        assert failed.value.code() == grpc.StatusCode.NOT_FOUND
        assert failed.value.details() == "no such song"
        with pytest.raises(grpc.RpcError) as late:
            ch.unary_unary(UNARY)(b"x", timeout=0.5, metadata=((CONTROL_STALL_MS, "3000"),))
        assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        call_id = new_id()
        future = ch.unary_unary(UNARY).future(
            b"x", timeout=30, metadata=((CONTROL_ID, call_id), (CONTROL_STALL_MS, "20000")))
        poll(lambda: bool(upstream.record(call_id)), 5, "the call reaching the upstream")
        future.cancel()
    assert upstream.wait_record(call_id, "cancelled", timeout_s=5)["cancelled"] is True
    assert not relay.calls[before:]  # all of them carried


# --- 2. the chain with the tunnel on and off -------------------------------------------------


@pytest.fixture(scope="module", params=["on", "off"])
def chain(request: pytest.FixtureRequest, upstream: UpstreamProcess,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[FileStack]:
    directory = tmp_path_factory.mktemp(f"tunnel-{request.param}")
    proxies = Proxies(directory)
    try:
        yield start_file_stack(proxies, upstream.address, directory,
                               extra=("--tunnel", request.param))
    finally:
        proxies.stop_all()


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_through_the_chain_with_the_tunnel_on_and_off(
        chain: FileStack, kind: str) -> None:
    out = chain.outproxies[CALLER]
    with channel(out.address) as ch:
        for _ in range(3):
            responses, call = call_kind(ch, kind, b"p", metadata=((CONTROL_ECHO, "1"),
                                                                  ("x-echo-a", "b")))
            assert responses and all(r in (b"p", b"pp") for r in responses)
            trailers = dict(call.trailing_metadata() or ())
            assert trailers["x-echo-a"] == "b"
            assert not [key for key in trailers if key.startswith("fastproxy-")]
        with pytest.raises(grpc.RpcError) as failed:
            call_kind(ch, kind, b"p", metadata=((CONTROL_FAIL_CODE, "FAILED_PRECONDITION"),
                                                (CONTROL_FAIL_DETAILS, "nope")))
        assert (failed.value.code(), failed.value.details()) == (
            grpc.StatusCode.FAILED_PRECONDITION, "nope")
        with pytest.raises(grpc.RpcError) as late:
            call_kind(ch, kind, b"p", metadata=((CONTROL_STALL_MS, "3000"),), timeout=0.5)
        assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


# --- 3. one response at a time ---------------------------------------------------------------


class _Link:
    """What a `TunnelCall` needs of its link, recording what it sends."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, int]] = []
        self.pending: set[int] = {7}

    def forget(self, call_id: int) -> object | None:
        if call_id not in self.pending:
            return None
        self.pending.discard(call_id)
        return self

    def send_cancel(self, call_id: int) -> None:
        self.sent.append(("cancel", call_id))

    def send_ack(self, call_id: int) -> None:
        self.sent.append(("ack", call_id))


def test_a_second_response_before_the_first_was_acked_fails_the_call() -> None:
    async def scenario() -> tuple[list[tuple[str, int]], grpc.StatusCode, bytes]:
        link = _Link()
        call = TunnelCall(link, 7, None, asyncio.get_running_loop(),  # type: ignore[arg-type]
                          any_kind=True)
        call.deliver(tpb.TunnelResponse(message=b"one"))
        first = await call.read()
        call.deliver(tpb.TunnelResponse(message=b"two"))  # not acked yet: too many
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await call.read()
        return link.sent, failed.value.code(), first

    sent, code, first = asyncio.run(scenario())
    assert first == b"one"
    assert code == grpc.StatusCode.UNAVAILABLE
    assert sent == [("cancel", 7)]  # the in-proxy is told to stop, and nothing was acked


def test_responses_are_acked_one_by_one_and_the_reply_ends_the_stream() -> None:
    async def scenario() -> tuple[list[bytes], list[tuple[str, int]]]:
        link = _Link()
        call = TunnelCall(link, 7, None, asyncio.get_running_loop(),  # type: ignore[arg-type]
                          any_kind=True)
        got = []
        call.deliver(tpb.TunnelResponse(message=b"one"))
        got.append(await call.read())
        reader = asyncio.ensure_future(call.read())  # acks "one", then waits
        await asyncio.sleep(0)
        call.deliver(tpb.TunnelResponse(message=b"two"))
        got.append(await reader)
        call.resolve(tpb.TunnelReply(code=0, message=b"three"))
        got.append(await call.read())  # the reply is in: no ack for "two"
        got.append(await call.read())
        return got, link.sent

    got, sent = asyncio.run(scenario())
    assert got == [b"one", b"two", b"three", grpc.aio.EOF]
    assert sent == [("ack", 7)]


# --- 4. crafted any_kind frames ----------------------------------------------------------------


def carry_any(address: str, frames: list[tpb.TunnelFrame]
              ) -> dict[int, tuple[list[bytes], tpb.TunnelReply]]:
    """One Carry stream: `frames` as `any_kind` calls; per call, its response frames' messages
    and its reply (a single response each here: no ack is needed)."""
    for frame in frames:
        frame.call.any_kind = True
    with channel(address) as ch:
        stream = ch.stream_stream(CARRY_METHOD, response_deserializer=tpb.TunnelFrames.FromString)
        answers: dict[int, tuple[list[bytes], tpb.TunnelReply]] = {}
        responses: dict[int, list[bytes]] = {}
        for batch in stream(iter([tpb.TunnelFrames(frames=frames).SerializeToString()]),
                            timeout=10):
            for frame in batch.frames:
                if frame.HasField("response"):
                    responses.setdefault(frame.id, []).append(frame.response.message)
                elif frame.HasField("reply"):
                    answers[frame.id] = (responses.get(frame.id, []), frame.reply)
        return answers


def test_crafted_any_kind_calls_are_checked_as_any_call(
        relay_and_stack: tuple[RecordingRelay, FileStack], upstream: UpstreamProcess) -> None:
    _, stack = relay_and_stack
    address = stack.inproxy.address
    chat = out_node(stack.policy.yaml_text())
    session = open_session(chat, address)
    ids = [new_id() for _ in range(6)]

    def in_session(call_id: str, method: str = UNARY) -> OutboundCall:
        return new_call(chat, address, method, metadata=((CONTROL_ID, call_id),),
                        session=session)

    good = in_session(ids[0])
    flipped_call = in_session(ids[1])
    flipped = bytearray(flipped_call.seal_request(b"tampered " * 20, final=True))
    flipped[len(flipped) // 2] ^= 0x01
    replayed_call = in_session(ids[2])
    replayed = call_frame(3, UNARY, replayed_call.metadata,
                          replayed_call.seal_request(b"once", final=True))
    again = tpb.TunnelFrame()
    again.CopyFrom(replayed)
    again.id = 4
    moved = in_session(ids[3])
    # a request not sealed as the only one: more may follow
    cut_short = in_session(ids[4], CLIENT_STREAM)
    frames = [
        call_frame(1, UNARY, good.metadata, good.seal_request(b"crafted", final=True)),
        call_frame(2, UNARY, flipped_call.metadata, bytes(flipped)),
        replayed, again,
        call_frame(5, SERVER_STREAM, moved.metadata, moved.seal_request(b"m", final=True)),
        call_frame(6, CLIENT_STREAM, cut_short.metadata, cut_short.seal_request(b"c")),
    ]
    answers = carry_any(address, frames)
    messages, reply = answers[1]
    assert reply.code == grpc.StatusCode.OK.value[0]
    good.open_head(metadata_of(reply.initial_metadata))
    bodies = [*messages, *([reply.message] if reply.HasField("message") else [])]
    assert [good.open_response(body) for body in bodies] == [b"crafted"]
    good.open_end(reply.code, reply.details, metadata_of(reply.trailing_metadata))
    assert answers[3][1].code == grpc.StatusCode.OK.value[0]
    for call_id in (2, 4, 5, 6):
        messages, reply = answers[call_id]
        assert not messages
        assert reply.code == grpc.StatusCode.UNAUTHENTICATED.value[0], call_id
        assert reply_reason(reply) == "unauthenticated", call_id
    assert "replayed" in answers[4][1].details
    assert "cut short" in answers[6][1].details
    for refused in (ids[1], ids[3], ids[4]):
        assert upstream.record(refused) == {}
