"""The tunnel's limits (issue 13, point 4): what one `Tunnel/Carry` stream may hold at the
in-proxy, enforced frame by frame, so that a peer that breaks them loses its stream and the
process keeps its memory.

Anyone who reaches an in-proxy may open a Carry stream (every call it carries is a sealed call
in a session, checked as a call of its own; docs/security.md, "Hardening"), so these tests
attack a real in-proxy process from a peer without any session: one stream message packed
with more frames or calls than a stream may hold, frames whose metadata exceeds gRPC's own
header limit, a message larger than any out-proxy sends. The in-proxy's resident memory is
read from /proc while it happens.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from support.dataplane import (
    FileStack,
    Proxies,
    channel,
    new_call,
    out_node,
    poll,
    start_file_stack,
)
from support.upstream_app import CONTROL_ID, CONTROL_STALL_MS, UpstreamProcess

from fastproxy.v1 import tunnel_pb2 as tpb
from proxy_svc.tunnel import (
    CARRY_METHOD,
    MAX_CALL_FRAME_BYTES,
    MAX_FRAMES_PER_MESSAGE,
    MAX_MESSAGE_BYTES,
    MAX_METADATA_BYTES,
    MAX_PENDING,
    Outbox,
    TunnelLink,
    TunnelViolation,
    encoded_frame,
    frame_count,
    frames_of,
    metadata_entries,
)

MiB = 1024 * 1024
FLOOD_FRAMES = 50_000  # what the issue saw: 50,000 frames in one 383 KB message


@pytest.fixture(scope="module")
def upstream() -> Iterator[UpstreamProcess]:
    with UpstreamProcess(name="song") as process:
        yield process


@pytest.fixture(scope="module")
def stack(upstream: UpstreamProcess, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[FileStack]:
    directory = tmp_path_factory.mktemp("tunnel-limits")
    proxies = Proxies(directory)
    try:
        yield start_file_stack(proxies, upstream.address, directory, callers=())
    finally:
        proxies.stop_all()


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS (resident now) and VmHWM (the peak resident so far) of a process, in KiB."""
    fields: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0])
    return fields


def in_pid(stack: FileStack) -> int:
    assert stack.inproxy.proc is not None
    return stack.inproxy.proc.pid


def bare_call(call_id: int) -> tpb.TunnelFrame:
    """A carried call as small as it gets: no method, no CALL record, no message."""
    return tpb.TunnelFrame(id=call_id, call=tpb.TunnelCall())


def carry_raw(address: str, messages: list[bytes], timeout_s: float = 30.0
              ) -> tuple[int, grpc.RpcError | None]:
    """One Carry stream: sends `messages` and half-closes; (replies received, the error the
    stream ended with, or None)."""
    replies = 0
    with channel(address) as ch:
        stream = ch.stream_stream(CARRY_METHOD, response_deserializer=tpb.TunnelFrames.FromString)
        try:
            for batch in stream(iter(messages), timeout=timeout_s):
                replies += sum(frame.HasField("reply") for frame in batch.frames)
        except grpc.RpcError as error:
            return replies, error
    return replies, None


def test_a_flood_of_carried_calls_in_one_message_costs_the_peer_its_stream_not_our_memory(
        stack: FileStack) -> None:
    address, pid = stack.inproxy.address, in_pid(stack)
    # Warm up: the in-proxy has served a stream (the code paths are loaded).
    assert carry_raw(address, [tpb.TunnelFrames(frames=[bare_call(1)]).SerializeToString()]
                     ) == (1, None)
    before = memory_kib(pid)
    flood = tpb.TunnelFrames(frames=[bare_call(i) for i in range(1, FLOOD_FRAMES + 1)])
    message = flood.SerializeToString()
    assert len(message) < 512 * 1024
    started = time.monotonic()
    replies, error = carry_raw(address, [message])
    after = memory_kib(pid)
    grown_mib = (after["VmHWM"] - before["VmHWM"]) / 1024
    assert error is not None, (f"the stream served {replies} calls of the flood; peak "
                               f"resident memory grew by {grown_mib:.1f} MiB")
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "frames" in (error.details() or "")
    assert time.monotonic() - started < 10
    assert grown_mib < 8, f"peak resident memory grew by {grown_mib:.1f} MiB"
    # The process goes on: another stream is served.
    assert carry_raw(address, [tpb.TunnelFrames(frames=[bare_call(1)]).SerializeToString()]
                     ) == (1, None)


def stream_ends(stack: FileStack, frames: list[tpb.TunnelFrame]) -> grpc.RpcError:
    """The error a stream carrying `frames` in one message ended with (it must end with one)."""
    replies, error = carry_raw(stack.inproxy.address,
                               [tpb.TunnelFrames(frames=frames).SerializeToString()])
    assert error is not None, f"the stream served {replies} calls"
    return error


def test_more_calls_in_flight_than_a_stream_may_hold_cost_the_peer_its_stream(
        stack: FileStack) -> None:
    error = stream_ends(stack, [bare_call(i) for i in range(1, MAX_PENDING + 2)])
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert f"more than {MAX_PENDING} carried calls in flight" in (error.details() or "")


def test_a_carried_call_with_more_metadata_than_grpc_allows_costs_the_peer_its_stream(
        stack: FileStack) -> None:
    """gRPC refuses a call of its own whose headers exceed 16 KiB; a carried call's metadata
    is held to the same limit, counted the same way."""
    within = tpb.TunnelFrame(id=1, call=tpb.TunnelCall(method="/a.B/C", metadata=[
        tpb.MetadataEntry(key="x-big", value=b"v" * (MAX_METADATA_BYTES - 200))]))
    assert carry_raw(stack.inproxy.address,
                     [tpb.TunnelFrames(frames=[within]).SerializeToString()]) == (1, None)
    over = tpb.TunnelFrame(id=1, call=tpb.TunnelCall(method="/a.B/C", metadata=[
        tpb.MetadataEntry(key=f"x-{i}", value=b"v" * 100) for i in range(130)]))
    error = stream_ends(stack, [over])
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "metadata" in (error.details() or "")


def test_a_message_larger_than_any_out_proxy_sends_costs_the_peer_its_stream(
        stack: FileStack) -> None:
    big = tpb.TunnelFrame(id=1, call=tpb.TunnelCall(method="/a.B/C",
                                                    message=b"m" * MAX_MESSAGE_BYTES))
    error = stream_ends(stack, [big])
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "exceeds the limit" in (error.details() or "")
    alone = tpb.TunnelFrame(id=1, call=tpb.TunnelCall(method="/a.B/C",
                                                      message=b"m" * MAX_CALL_FRAME_BYTES))
    error = stream_ends(stack, [alone])
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_a_peer_that_breaks_a_limit_loses_its_calls_in_flight_with_its_stream(
        stack: FileStack, upstream: UpstreamProcess) -> None:
    """A sealed call stalled at the upstream, then a frame reusing its id: the stream ends
    (INVALID_ARGUMENT) and the upstream call is cancelled."""
    chat = out_node(stack.policy.yaml_text())
    call_id = uuid.uuid4().hex
    call = new_call(chat, stack.inproxy.address,
                    metadata=((CONTROL_ID, call_id), (CONTROL_STALL_MS, "20000")))
    frame = tpb.TunnelFrame(id=5, call=tpb.TunnelCall(
        method=call.method, metadata=metadata_entries(call.metadata), timeout_us=30_000_000,
        message=call.seal_request(b"x", final=True)))

    def messages() -> Iterator[bytes]:
        yield tpb.TunnelFrames(frames=[frame]).SerializeToString()
        poll(lambda: bool(upstream.record(call_id)), 5, "the call reaching the upstream")
        yield tpb.TunnelFrames(frames=[bare_call(5)]).SerializeToString()

    with channel(stack.inproxy.address) as ch, pytest.raises(grpc.RpcError) as raised:
        stream = ch.stream_stream(CARRY_METHOD, response_deserializer=tpb.TunnelFrames.FromString)
        list(stream(messages(), timeout=10))
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "reused" in (raised.value.details() or "")
    assert upstream.wait_record(call_id, "cancelled", timeout_s=5)["cancelled"] is True
    assert "tunnel from" in stack.inproxy.log()


# --- the out-proxy keeps to the limits --------------------------------------------------


def open_link() -> TunnelLink:
    """A link in the state of an open stream, with nothing behind it (only its outbox is
    looked at)."""
    link = TunnelLink("127.0.0.1:1", lambda: None)  # type: ignore[arg-type, return-value]
    link.state = "open"
    return link


def test_an_out_proxy_sends_a_call_the_tunnel_may_not_carry_on_a_stream_of_its_own() -> None:
    async def scenario() -> tuple[bool, bool, bool]:
        link = open_link()
        small = link.call("/a.B/C", b"m", 5.0, (("x-small", "v"),))
        big_metadata = link.call("/a.B/C", b"m", 5.0,
                                 tuple((f"x-{i}", "v" * 100) for i in range(130)))
        big_frame = link.call("/a.B/C", b"m" * MAX_CALL_FRAME_BYTES, 5.0, ())
        for carried in (small, big_metadata, big_frame):
            if carried is not None:
                carried.cancel()
        return small is not None, big_metadata is None, big_frame is None

    assert asyncio.run(scenario()) == (True, True, True)


def test_an_out_proxy_puts_no_more_frames_in_one_message_than_the_limit() -> None:
    async def batches() -> list[int]:
        outbox = Outbox()
        for index in range(1, MAX_FRAMES_PER_MESSAGE * 2 + 2):
            outbox.put(encoded_frame(tpb.TunnelFrame(id=index, cancel=True)))
        outbox.close()
        counts = []
        while (batch := await outbox.next_batch()) is not None:
            counts.append(len(tpb.TunnelFrames.FromString(batch).frames))
        return counts

    assert asyncio.run(batches()) == [MAX_FRAMES_PER_MESSAGE, MAX_FRAMES_PER_MESSAGE, 1]


def test_the_frames_of_a_message_are_counted_as_protobuf_parses_them() -> None:
    frames = [bare_call(1), tpb.TunnelFrame(id=2, cancel=True), tpb.TunnelFrame(goaway=True)]
    message = tpb.TunnelFrames(frames=frames).SerializeToString()
    assert frame_count(message) == 3
    assert frame_count(b"") == 0
    assert frames_of(message) == frames
    with pytest.raises(TunnelViolation) as raised:
        frames_of(b"\xff\xff\xff not a frame")
    assert raised.value.code == grpc.StatusCode.INVALID_ARGUMENT
