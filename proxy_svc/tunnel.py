"""The tunnel: unary calls from an out-proxy to an in-proxy carried over one long-lived stream.

Why: on the proxy-to-proxy leg, most of a unary call's cost is grpcio's per-call work (a new
HTTP/2 stream, its headers and trailers, the call objects and their completion queue
operations), not the message or our crypto. One message on an open stream costs much less.
Measured on the 2-core box (1 KiB, grpc.aio both sides, CPU per call, 32 in flight): a unary
call 0.16-0.19 ms on the client and 0.23-0.24 ms on the server; a frame each way on an open
stream 0.13-0.14 and 0.11-0.15 ms; several frames written as one stream message (what the
writer below does when calls pile up) a few microseconds each. With one call in flight the
round trip drops from 0.52-0.61 ms to 0.29-0.34 ms.

What is carried: calls whose request is at most `MAX_REQUEST_BYTES` (larger ones gain nothing
and would hold up the stream) and either
- served on the out-proxy's unary fast path (methods known unary, `proxy_svc.kinds`), or
- of a method whose kind the out-proxy does not know (an upstream without server reflection,
  the general case) when the client sent one request and half-closed (`any_kind`): unary and
  server-streaming calls, and the client-streaming and bidirectional calls that send one
  request. The in-proxy calls its upstream so that any number of responses may come back
  (`unary_stream`, whatever the method's kind), and sends them in `response` frames, one at a
  time: the next only once the out-proxy `ack`ed the one before (it acks once its client took
  it), so a response stream holds at most one message per call on either side and a slow
  reader holds back only its own upstream call. A response is held `RESPONSE_HOLD_S` in
  case the upstream's end follows at once (a unary method's answer and status arrive
  together): the reply then carries it, one frame for the whole answer. A method seen
  sending two requests or answering twice streams (certain): its calls take a stream of
  their own from then on, where HTTP/2 flow control is per call.
Calls that stream requests take a call of their own (HTTP/2 flow control per call matters
for them).

What does not change: each carried call has its own CALL record (`fastproxy-call-bin`,
in the frame's metadata) and sealed messages, and the in-proxy runs exactly the stages of a call
of its own (the same `ForwardingHandler._unary`, through `CarriedCallContext`): authentication,
authorization, rate limit, replay check, deadline cap, audit, spans and metrics. The stream
itself grants nothing: anyone may open one, as anyone may open a call, and a peer without a
session gets every carried call refused before any upstream work (as its calls of its own
would be). Opening a stream asks for nothing more (docs/security.md, "Hardening", says why);
the limits below bound what one stream can cost. mTLS between the proxies covers it as it
covers calls (same credentials).

Protocol (`protos/fastproxy/v1/tunnel.proto`): the out-proxy opens `Tunnel/Carry` to one
in-proxy endpoint, on a connection of its own (bigger message limits: a reply carries a
whole response), and uses it once the in-proxy's first, empty message arrives (a message,
not only headers: an intermediary may hold headers back until one comes). Frames: `call`
(out -> in, id chosen by the out-proxy), `reply` (in -> out: status, details, initial
metadata, trailers, sealed response), `cancel` (out -> in: the caller gave up, e.g. its
deadline), `goaway` (in -> out: draining; the out-proxy sends no new call there and
half-closes once its calls are answered), and for `any_kind` calls `response` (in -> out) and
`ack` (out -> in). A stream message that is not frames ends that
stream with INVALID_ARGUMENT.

Limits (what one stream may hold at the in-proxy; the out-proxy keeps to them): at most
`MAX_PENDING` carried calls in flight, `MAX_FRAMES_PER_MESSAGE` frames and
`MAX_MESSAGE_BYTES` bytes in one stream message, `MAX_CALL_FRAME_BYTES` in one call frame,
and a call's metadata within gRPC's own header limit (`MAX_METADATA_BYTES`, counted as gRPC
counts it). They are checked frame by frame as a message is read, before any call of it
starts: a peer that breaks one loses its stream (RESOURCE_EXHAUSTED, or INVALID_ARGUMENT for
a reused call id), and its calls in flight are cancelled. The out-proxy sends a call whose
metadata or frame would break them on a stream of its own, and puts no more frames in one
message than allowed, so a well-behaved peer never meets them.

Failures: a broken stream fails its calls in flight with UNAVAILABLE (`TunnelBroken`,
counted as a transport failure of the endpoint, like a broken connection). While no stream
is open (opening, reopening after `REOPEN_AFTER_S`, or an in-proxy without the tunnel, asked
again after `UNSUPPORTED_RETRY_S`), calls go one stream each, as before: the tunnel never
fails a call that could be made without it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Iterable
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from fastproxy.pipeline.handshake import CARRY_METHOD
from fastproxy.pipeline.metadata import Metadata
from fastproxy.v1 import tunnel_pb2 as tpb

_log = logging.getLogger("fastproxy.proxy")

# A request larger than this takes a call of its own.
MAX_REQUEST_BYTES = 256 * 1024
# The writer packs ready frames into one stream message up to this size (at least one frame).
MAX_BATCH_BYTES = 256 * 1024
# Calls in flight on one stream, at most: more take calls of their own at the out-proxy, and
# the in-proxy reads no further frame from a stream that has this many running (HTTP/2 flow
# control then holds the sender back, as it would for calls of their own).
MAX_PENDING = 1024
# Bytes waiting for a stream's writer, at most, on either side (the same two effects).
MAX_QUEUED_BYTES = 8 * 1024 * 1024
# gRPC's own limit on a call's headers (`grpc.absolute_max_metadata_size`, 16 KiB): a carried
# call's metadata may not exceed what a call of its own may send, counted as gRPC counts it
# (name, value and 32 bytes per entry, the method's `:path` included).
MAX_METADATA_BYTES = 16 * 1024
METADATA_ENTRY_OVERHEAD = 32
# The largest call frame an out-proxy sends: a request of MAX_REQUEST_BYTES sealed (record
# overhead, compression's worst case), its metadata, the frame's own fields.
MAX_CALL_FRAME_BYTES = MAX_REQUEST_BYTES + MAX_METADATA_BYTES + 4096
# The largest stream message an out-proxy sends: frames joined up to MAX_BATCH_BYTES, or one
# larger frame.
MAX_MESSAGE_BYTES = MAX_BATCH_BYTES + MAX_CALL_FRAME_BYTES
# Frames in one stream message, at most: a call and its cancel for every call in flight.
MAX_FRAMES_PER_MESSAGE = 2 * MAX_PENDING
# The tunnel connection's message limits exceed the proxy's by this: room for a reply's
# metadata and framing around a response of the largest allowed size.
FRAME_SLACK_BYTES = 1 << 20
# After a stream ended, the next is opened no sooner than this.
REOPEN_AFTER_S = 1.0
# An in-proxy that refused the stream (UNIMPLEMENTED with `--tunnel off`; a version without
# the tunnel takes it for an app's call and refuses it) is asked again after this.
UNSUPPORTED_RETRY_S = 60.0
# The in-proxy's first, empty message must arrive within this, or the stream is given up.
OPEN_TIMEOUT_S = 5.0
# An `any_kind` call's response waits this long for the upstream's end (then it rides in the
# reply) before it goes out in a frame of its own.
RESPONSE_HOLD_S = 0.005

_CODES: dict[int, grpc.StatusCode] = {code.value[0]: code for code in grpc.StatusCode}


def metadata_entries(metadata: Iterable[tuple[str, str | bytes]]) -> list[tpb.MetadataEntry]:
    return [tpb.MetadataEntry(key=key, value=value if isinstance(value, bytes)
                              else value.encode()) for key, value in metadata]


def metadata_of(entries: Iterable[tpb.MetadataEntry]) -> Metadata:
    """Back to grpc's form: `-bin` values as bytes, the rest as text."""
    return tuple((entry.key, entry.value if entry.key.endswith("-bin")
                  else entry.value.decode("utf-8", "replace")) for entry in entries)


def metadata_bytes(method: str, metadata: Iterable[tuple[str, str | bytes]]) -> int:
    """A call's header size as gRPC counts it against its limit: name, value and 32 bytes a
    entry, the `:path` that carries the method included."""
    size = len(":path") + len(method.encode()) + METADATA_ENTRY_OVERHEAD
    for key, value in metadata:
        size += len(key) + len(value if isinstance(value, bytes) else value.encode())
        size += METADATA_ENTRY_OVERHEAD
    return size


class TunnelViolation(Exception):
    """A stream message breaks the tunnel's framing or limits: the peer loses its stream,
    ended with `code` and `details`."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


def _too_much(details: str) -> TunnelViolation:
    return TunnelViolation(grpc.StatusCode.RESOURCE_EXHAUSTED, details)


def _malformed(details: str) -> TunnelViolation:
    return TunnelViolation(grpc.StatusCode.INVALID_ARGUMENT, f"malformed tunnel frame: {details}")


def _varint_at(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if at >= len(data) or shift > 63:
            raise _malformed("a field is cut short")
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, at


def frame_count(message: bytes) -> int:
    """The frames a serialized `TunnelFrames` holds, counted on the wire without parsing it
    (parsing 100,000 empty frames takes some 11 MiB); stops counting past the limit."""
    count = at = 0
    while at < len(message):
        tag, at = _varint_at(message, at)
        wire = tag & 0x07
        if wire == 0:
            _, at = _varint_at(message, at)
        elif wire == 1:
            at += 8
        elif wire == 2:
            length, at = _varint_at(message, at)
            at += length
        elif wire == 5:
            at += 4
        else:
            raise _malformed(f"wire type {wire}")
        if tag >> 3 == 1:
            count += 1
            if count > MAX_FRAMES_PER_MESSAGE:
                break
    return count


def frames_of(message: bytes) -> list[tpb.TunnelFrame]:
    """The frames of one stream message from an out-proxy, each within the tunnel's limits;
    `TunnelViolation` when the message is not frames or breaks a limit (the calls in flight
    are the reader's to count)."""
    if len(message) > MAX_MESSAGE_BYTES:
        raise _too_much(f"a tunnel message of {len(message)} bytes exceeds the limit of "
                        f"{MAX_MESSAGE_BYTES}")
    if frame_count(message) > MAX_FRAMES_PER_MESSAGE:
        raise _too_much(f"a tunnel message holds more than {MAX_FRAMES_PER_MESSAGE} frames")
    try:
        frames = list(tpb.TunnelFrames.FromString(message).frames)
    except DecodeError as exc:
        raise _malformed(str(exc)) from None
    for frame in frames:
        if frame.WhichOneof("body") != "call":
            continue
        if frame.ByteSize() > MAX_CALL_FRAME_BYTES:
            raise _too_much(f"a carried call of {frame.ByteSize()} bytes exceeds the limit "
                            f"of {MAX_CALL_FRAME_BYTES}")
        size = metadata_bytes(frame.call.method,
                              ((entry.key, entry.value) for entry in frame.call.metadata))
        if size > MAX_METADATA_BYTES:
            raise _too_much(f"a carried call's metadata of {size} bytes exceeds gRPC's limit "
                            f"of {MAX_METADATA_BYTES}")
    return frames


def encoded_frame(frame: tpb.TunnelFrame) -> bytes:
    """One frame as a serialized `TunnelFrames`: concatenated, such messages parse as one
    `TunnelFrames` holding all their frames (protobuf merges repeated fields), so a batch is
    a plain join of bytes."""
    encoded: bytes = tpb.TunnelFrames(frames=(frame,)).SerializeToString()
    return encoded


class Outbox:
    """Frames waiting for the stream's writer (one frame a chunk); `next_batch` joins every
    frame ready, up to MAX_BATCH_BYTES and MAX_FRAMES_PER_MESSAGE."""

    __slots__ = ("_chunks", "_closed", "_ready", "size")

    def __init__(self) -> None:
        self._chunks: list[bytes] = []
        self._ready = asyncio.Event()
        self._closed = False
        self.size = 0  # bytes waiting

    def put(self, chunk: bytes) -> None:
        self._chunks.append(chunk)
        self.size += len(chunk)
        self._ready.set()

    def close(self) -> None:
        """`next_batch` returns what is left, then None."""
        self._closed = True
        self._ready.set()

    async def next_batch(self) -> bytes | None:
        while not self._chunks:
            if self._closed:
                return None
            self._ready.clear()
            await self._ready.wait()
        chunks = self._chunks
        if len(chunks) == 1 or (self.size <= MAX_BATCH_BYTES
                                and len(chunks) <= MAX_FRAMES_PER_MESSAGE):
            self._chunks = []
            self.size = 0
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)
        size = taken = 0
        while taken < min(len(chunks), MAX_FRAMES_PER_MESSAGE) and (
                taken == 0 or size + len(chunks[taken]) <= MAX_BATCH_BYTES):
            size += len(chunks[taken])
            taken += 1
        self._chunks = chunks[taken:]
        self.size -= size
        return b"".join(chunks[:taken])


# --- in-proxy side --------------------------------------------------------------------


class CarriedCallEnded(Exception):
    """Raised by `CarriedCallContext.abort`, as grpc's `abort` raises: the status is set."""


class CarriedCallContext:
    """What `ForwardingHandler._unary` needs of a grpc.aio servicer context, for a call the
    tunnel carried: its metadata, deadline and peer (the tunnel's), and where its answer goes.
    An `any_kind` call's responses go through `write` (`response` frames) and `finish`."""

    __slots__ = ("_acked", "_deadline", "_held", "_id", "_metadata", "_outbox", "_peer",
                 "_sent", "_timer", "any_kind", "code", "details", "initial", "trailing")

    def __init__(self, call: tpb.TunnelCall, peer: str, arrived: float,
                 outbox: Outbox | None = None, call_id: int = 0) -> None:
        self._metadata = metadata_of(call.metadata)
        self._deadline = arrived + call.timeout_us / 1e6 if call.timeout_us else None
        self._peer = peer
        self.any_kind = call.any_kind
        self.code = grpc.StatusCode.OK
        self.details = ""
        self.initial: Metadata = ()
        self.trailing: Metadata = ()
        self._outbox = outbox
        self._id = call_id
        self._held: bytes | None = None  # a response not sent yet
        self._timer: asyncio.TimerHandle | None = None
        self._acked: asyncio.Future[None] | None = None  # the last response frame's ack
        self._sent = 0  # response frames sent

    def invocation_metadata(self) -> Metadata:
        return self._metadata

    def peer(self) -> str:
        return self._peer

    def time_remaining(self) -> float | None:
        if self._deadline is None:
            return None
        remaining: float = max(self._deadline - time.monotonic(), 0.0)
        return remaining

    async def send_initial_metadata(self, metadata: Metadata) -> None:
        self.initial = tuple(metadata)

    def set_trailing_metadata(self, metadata: Metadata) -> None:
        self.trailing = tuple(metadata)

    async def abort(self, code: grpc.StatusCode, details: str = "",
                    trailing_metadata: Metadata = ()) -> None:
        if self._held is not None:  # sealed and counted in the end: it goes first
            self._cancel_timer()
            if self._acked is not None:
                await self._acked
            self._flush()
        self.code = code
        self.details = details
        self.trailing = tuple(trailing_metadata)
        raise CarriedCallEnded

    async def write(self, message: bytes) -> None:
        """One response of an `any_kind` call: the one held before goes out in a frame of
        its own (after the out-proxy acked the frame before it), and this one is held for the
        reply, or sent alone after `RESPONSE_HOLD_S`."""
        if self._held is not None:
            self._cancel_timer()
            self._flush()
        if self._acked is not None:
            await self._acked
        self._held = message
        self._timer = asyncio.get_running_loop().call_later(RESPONSE_HOLD_S, self._flush)

    def _flush(self) -> None:
        """Sends the held response in a frame of its own (its ack then awaited)."""
        self._timer = None
        message, self._held = self._held, None
        if message is None or self._outbox is None:
            return
        response = tpb.TunnelResponse(message=message)
        if not self._sent:
            response.initial_metadata.extend(metadata_entries(self.initial))
        self._sent += 1
        self._acked = asyncio.get_running_loop().create_future()
        self._outbox.put(encoded_frame(tpb.TunnelFrame(id=self._id, response=response)))

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def acked(self) -> None:
        """The out-proxy's `ack` of the last response frame."""
        if self._acked is not None and not self._acked.done():
            self._acked.set_result(None)

    def finish(self) -> bytes | None:
        """The response the reply carries (the held one; None if all went in frames)."""
        self._cancel_timer()
        held, self._held = self._held, None
        return held

    def reply(self, call_id: int, response: bytes | None) -> bytes:
        reply = tpb.TunnelReply(
            code=self.code.value[0], details=self.details,
            trailing_metadata=metadata_entries(self.trailing))
        if not self._sent:
            reply.initial_metadata.extend(metadata_entries(self.initial))
        if response is not None and self.code == grpc.StatusCode.OK:
            reply.message = response
        return encoded_frame(tpb.TunnelFrame(id=call_id, reply=reply))


ServeCarried = Callable[[str, bytes, CarriedCallContext], Awaitable[bytes | None]]


class _Session:
    """One open Carry stream at the in-proxy: a task per carried call, replies as they end."""

    def __init__(self, serve: ServeCarried, peer: str) -> None:
        self._serve = serve
        self._peer = peer
        self.outbox = Outbox()
        self.calls: dict[int, asyncio.Task[None]] = {}
        self.contexts: dict[int, CarriedCallContext] = {}  # any_kind calls (their acks)
        self._reading = True
        self._room = asyncio.Event()  # set while the stream may start more calls
        self._room.set()
        self.violation: TunnelViolation | None = None

    async def read(self, requests: AsyncIterator[bytes]) -> None:
        try:
            await self._read(requests)
        except TunnelViolation as exc:
            # A peer that sends what is not frames, or more than a stream may hold, loses its
            # stream (and only it): its calls in flight are cancelled.
            _log.warning("tunnel from %s ended: %s", self._peer, exc.details)
            self.violation = exc
            self.stop()
        except (grpc.RpcError, asyncio.InvalidStateError) as exc:
            _log.debug("tunnel from %s: read ended: %s", self._peer, exc)
        finally:
            self._reading = False
            self._end_if_idle()

    async def _read(self, requests: AsyncIterator[bytes]) -> None:
        async for message in requests:
            for frame in frames_of(message):
                body = frame.WhichOneof("body")
                if body == "call":
                    if len(self.calls) >= MAX_PENDING:
                        raise _too_much(f"more than {MAX_PENDING} carried calls in flight "
                                        "on one stream")
                    self._start(frame.id, frame.call)
                elif body == "cancel":
                    task = self.calls.pop(frame.id, None)
                    if task is not None:
                        task.cancel()
                elif body == "ack":
                    context = self.contexts.get(frame.id)
                    if context is not None:
                        context.acked()
            self.check_room()
            await self._room.wait()

    def check_room(self) -> None:
        """Reading goes on only while fewer than MAX_PENDING calls run and fewer than
        MAX_QUEUED_BYTES of replies wait: a peer that sends faster than its calls end, or
        reads no reply, is held back by flow control instead of growing our memory."""
        if len(self.calls) < MAX_PENDING and self.outbox.size < MAX_QUEUED_BYTES:
            self._room.set()
        else:
            self._room.clear()

    def go_away(self) -> None:
        self.outbox.put(encoded_frame(tpb.TunnelFrame(goaway=True)))

    def _start(self, call_id: int, call: tpb.TunnelCall) -> None:
        if call_id in self.calls:
            raise TunnelViolation(grpc.StatusCode.INVALID_ARGUMENT,
                                  f"call id {call_id} reused while its call is in flight")
        context = CarriedCallContext(call, self._peer, time.monotonic(), self.outbox, call_id)
        if call.any_kind:
            self.contexts[call_id] = context
        self.calls[call_id] = asyncio.ensure_future(
            self._serve_one(call_id, call.method, call.message, context))

    async def _serve_one(self, call_id: int, method: str, message: bytes,
                         context: CarriedCallContext) -> None:
        response: bytes | None = None
        answered = True
        try:
            response = await self._serve(method, message, context)
        except CarriedCallEnded:
            pass
        except asyncio.CancelledError:
            answered = False  # the caller gave up (`cancel` frame) or the stream ended
        except Exception:
            _log.exception("tunnel from %s: carried call %s failed", self._peer, method)
            context.code, context.details = grpc.StatusCode.INTERNAL, "in-proxy error"
        if self.calls.get(call_id) is asyncio.current_task():
            del self.calls[call_id]
        if context.any_kind:
            if self.contexts.get(call_id) is context:
                del self.contexts[call_id]
            held = context.finish()
            response = held if response is None else response
        if answered:
            self.outbox.put(context.reply(call_id, response))
        self.check_room()
        self._end_if_idle()

    def _end_if_idle(self) -> None:
        if not self._reading and not self.calls:
            self.outbox.close()

    def stop(self) -> None:
        for task in self.calls.values():
            task.cancel()
        self.calls.clear()
        self.contexts.clear()


class TunnelService(grpc.GenericRpcHandler):
    """The in-proxy's end: serves `Tunnel/Carry`, each carried call through `serve` (the
    forwarding handler's unary path). Register it before the forwarding handler. With
    `accept=False` it answers UNIMPLEMENTED (the out-proxy then sends calls one stream each),
    so the method never reaches the forwarding handler as an app's call."""

    def __init__(self, serve: ServeCarried, accept: bool = True) -> None:
        self._serve = serve
        self._sessions: set[_Session] = set()
        self._draining = False
        self._handler = grpc.stream_stream_rpc_method_handler(
            self._carry if accept else self._refuse)

    def service(self, handler_call_details: grpc.HandlerCallDetails
                ) -> grpc.RpcMethodHandler | None:
        return self._handler if handler_call_details.method == CARRY_METHOD else None

    def go_away(self) -> None:
        """Draining: every open stream (and any opened from now on) is told to send no new
        call; the streams end once their calls are answered."""
        self._draining = True
        for session in self._sessions:
            session.go_away()

    async def _refuse(self, requests: AsyncIterator[bytes],
                      context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "tunnel turned off (--tunnel off)")
        yield b""  # pragma: no cover - abort raises; this makes it a generator

    async def _carry(self, requests: AsyncIterator[bytes],
                     context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        # A first, empty message at once: the out-proxy uses the stream only once it has it.
        # (A message, not just headers: an intermediary may hold headers until one comes.)
        yield b""
        session = _Session(self._serve, context.peer())
        self._sessions.add(session)
        if self._draining:
            session.go_away()
        reader = asyncio.ensure_future(session.read(requests))
        try:
            while (batch := await session.outbox.next_batch()) is not None:
                session.check_room()
                yield batch
            if session.violation is not None:
                await context.abort(session.violation.code, session.violation.details)
        finally:
            self._sessions.discard(session)
            reader.cancel()
            session.stop()


# --- out-proxy side -------------------------------------------------------------------


class TunnelBroken(grpc.aio.AioRpcError):
    """The stream carrying a call ended before its reply: a transport failure."""


class TunnelCall:
    """A call in flight on a tunnel, awaited like grpc.aio's unary-unary call object: the
    response bytes, or `grpc.aio.AioRpcError` with the in-proxy's status. An `any_kind` call
    is read like grpc.aio's unary-stream call instead (`read` until `grpc.aio.EOF`), which
    acks each response frame once the next is asked for."""

    __slots__ = ("_future", "_id", "_initial", "_link", "_responses", "_timer", "_trailing",
                 "_unacked", "_waiter", "any_kind", "responses_seen")

    def __init__(self, link: TunnelLink, call_id: int, timeout: float | None,
                 loop: asyncio.AbstractEventLoop, any_kind: bool = False) -> None:
        self._link = link
        self._id = call_id
        self._future: asyncio.Future[bytes | None] = loop.create_future()
        self._timer = None if timeout is None else loop.call_later(timeout, self._expire)
        self._initial: Metadata = ()
        self._trailing: Metadata = ()
        self.any_kind = any_kind
        self._responses: list[bytes] = []  # a response frame not read yet (one at most)
        self._waiter: asyncio.Future[None] | None = None
        self._unacked = False  # the last response read came in a frame and is not acked
        self.responses_seen = 0

    def __await__(self) -> Generator[Any, None, bytes | None]:
        return self._future.__await__()

    def deliver(self, response: tpb.TunnelResponse) -> None:
        """A `response` frame: kept until read. A second one before the first was read (and
        acked) breaks the tunnel's rule: the call fails rather than hold more."""
        if not self.any_kind or self._responses or self._unacked or self._future.done():
            if self._link.forget(self._id) is not None:
                self._link.send_cancel(self._id)
            self.fail("the in-proxy sent a response the tunnel may not carry")
            return
        if not self.responses_seen:
            self._initial = metadata_of(response.initial_metadata)
        self.responses_seen += 1
        self._responses.append(response.message)
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def read(self) -> bytes | Any:
        """The next response, `grpc.aio.EOF` after the last; raises the call's error."""
        if self._unacked:
            self._unacked = False
            if not self._future.done():
                self._link.send_ack(self._id)
        while True:
            if self._responses:
                self._unacked = True
                return self._responses.pop()
            if self._future.done():
                last = self._future.result()  # raises the call's error
                if last is None:
                    return grpc.aio.EOF
                self._future = asyncio.get_running_loop().create_future()
                self._future.set_result(None)
                return last
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter

    async def initial_metadata(self) -> Metadata:
        return self._initial

    async def trailing_metadata(self) -> Metadata:
        return self._trailing

    def done(self) -> bool:
        return self._future.done()

    def cancel(self) -> bool:
        """The caller gave up: the in-proxy is told, so its upstream call ends too."""
        if self._timer is not None:
            self._timer.cancel()
        if self._link.forget(self._id) is not None:
            self._link.send_cancel(self._id)
        return self._future.cancel()

    def resolve(self, reply: tpb.TunnelReply) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._future.done():
            return
        if not self.responses_seen:
            self._initial = metadata_of(reply.initial_metadata)
        self._trailing = metadata_of(reply.trailing_metadata)
        code = _CODES.get(reply.code, grpc.StatusCode.UNKNOWN)
        if code == grpc.StatusCode.OK:
            if reply.HasField("message"):
                self.responses_seen += 1
            self._future.set_result(reply.message if reply.HasField("message")
                                    or not self.any_kind else None)
        else:
            self._future.set_exception(grpc.aio.AioRpcError(
                code, self._initial, self._trailing, reply.details))
        self._wake()

    def fail(self, details: str) -> None:
        self._end(TunnelBroken(grpc.StatusCode.UNAVAILABLE, (), (), details))

    def _end(self, error: grpc.aio.AioRpcError) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if not self._future.done():
            self._future.set_exception(error)
        self._wake()

    def _expire(self) -> None:
        # As grpc's own deadline: the caller sees DEADLINE_EXCEEDED, the in-proxy a cancel.
        if self._link.forget(self._id) is not None:
            self._link.send_cancel(self._id)
        self._end(grpc.aio.AioRpcError(
            grpc.StatusCode.DEADLINE_EXCEEDED, (), (), "Deadline Exceeded"))


_IDLE, _OPENING, _OPEN, _DRAINING = "idle", "opening", "open", "draining"


class TunnelLink:
    """The out-proxy's stream to one in-proxy endpoint, opened on first use and reopened
    after it ends. `call` returns None whenever the call should go on a stream of its own."""

    def __init__(self, endpoint: str, channel: Callable[[], grpc.aio.Channel],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.endpoint = endpoint
        self._channel = channel
        self._clock = clock
        self.state = _IDLE
        self._retry_at = 0.0
        self._pending: dict[int, TunnelCall] = {}
        self._next_id = 1
        self._outbox = Outbox()
        self._task: asyncio.Task[None] | None = None

    @property
    def channel(self) -> grpc.aio.Channel:
        """The tunnel's connection (a call of its own on it reaches the same process)."""
        return self._channel()

    @property
    def opening(self) -> bool:
        return self.state == _OPENING

    def ready(self) -> bool:
        """Whether a call can ride the tunnel now; opens it when it is idle."""
        if self.state != _OPEN:
            if self.state == _IDLE and self._clock() >= self._retry_at:
                self.state = _OPENING
                self._task = asyncio.ensure_future(self._run())
            return False
        return len(self._pending) < MAX_PENDING and self._outbox.size < MAX_QUEUED_BYTES

    def call(self, method: str, message: bytes, timeout: float | None,
             metadata: Metadata, any_kind: bool = False) -> TunnelCall | None:
        if self.state != _OPEN:
            if self.state == _IDLE and self._clock() >= self._retry_at:
                self.state = _OPENING
                self._task = asyncio.ensure_future(self._run())
            return None
        if len(self._pending) >= MAX_PENDING or self._outbox.size >= MAX_QUEUED_BYTES:
            return None
        if metadata_bytes(method, metadata) > MAX_METADATA_BYTES:
            return None  # a call of its own, where gRPC's own limit decides
        frame = encoded_frame(tpb.TunnelFrame(id=self._next_id, call=tpb.TunnelCall(
            method=method, metadata=metadata_entries(metadata),
            timeout_us=0 if timeout is None else max(int(timeout * 1e6), 1),
            message=message, any_kind=any_kind)))
        if len(frame) > MAX_CALL_FRAME_BYTES:
            return None
        call_id = self._next_id
        self._next_id += 1
        carried = TunnelCall(self, call_id, timeout, asyncio.get_running_loop(), any_kind)
        self._pending[call_id] = carried
        self._outbox.put(frame)
        return carried

    def forget(self, call_id: int) -> TunnelCall | None:
        """Takes a call from those awaiting a reply (None if it was not there); a draining
        stream half-closes once none is left."""
        carried = self._pending.pop(call_id, None)
        if carried is not None and self.state == _DRAINING and not self._pending:
            self._outbox.close()
        return carried

    def send_cancel(self, call_id: int) -> None:
        if self.state in (_OPEN, _DRAINING):
            self._outbox.put(encoded_frame(tpb.TunnelFrame(id=call_id, cancel=True)))

    def send_ack(self, call_id: int) -> None:
        if self.state in (_OPEN, _DRAINING) and call_id in self._pending:
            self._outbox.put(encoded_frame(tpb.TunnelFrame(id=call_id, ack=True)))

    async def _run(self) -> None:
        stream = self._channel().stream_stream(
            CARRY_METHOD, None, tpb.TunnelFrames.FromString)()
        if not await self._opened(stream):
            self.state = _IDLE
            return
        self._outbox = outbox = Outbox()
        self.state = _OPEN
        _log.info("tunnel to %s open", self.endpoint)
        writer = asyncio.ensure_future(self._write(stream, outbox))
        why = "the in-proxy ended it"
        try:
            while (batch := await stream.read()) is not grpc.aio.EOF:
                self._receive(batch, outbox)
        except grpc.aio.AioRpcError as exc:
            why = f"{exc.code().name}: {exc.details()}"
        except asyncio.CancelledError:
            why = "the out-proxy is stopping"
            raise
        finally:
            _log.info("tunnel to %s closed (%s)", self.endpoint, why)
            self.state = _IDLE
            self._retry_at = self._clock() + REOPEN_AFTER_S
            writer.cancel()
            stream.cancel()
            pending, self._pending = self._pending, {}
            for carried in pending.values():
                carried.fail(f"tunnel to {self.endpoint} closed ({why})")

    async def _opened(self, stream: Any) -> bool:
        """Waits for the in-proxy's first, empty message; False (and when to try again
        set) when the stream did not open."""
        try:
            hello = await asyncio.wait_for(stream.read(), OPEN_TIMEOUT_S)
        except (TimeoutError, grpc.aio.AioRpcError) as exc:
            stream.cancel()
            code = (exc.code() if isinstance(exc, grpc.aio.AioRpcError)
                    else grpc.StatusCode.DEADLINE_EXCEEDED)
            _log.debug("tunnel to %s not opened: %s", self.endpoint, exc)
            if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                self._retry_at = self._clock() + REOPEN_AFTER_S
            else:
                # UNIMPLEMENTED from an in-proxy with the tunnel off; an in-proxy of a version
                # without it takes the method for an app's and refuses it (no call header).
                _log.info("in-proxy %s offers no tunnel (%s): unary calls go one stream each",
                          self.endpoint, code.name)
                self._retry_at = self._clock() + UNSUPPORTED_RETRY_S
            return False
        if hello is grpc.aio.EOF:
            self._retry_at = self._clock() + REOPEN_AFTER_S
            return False
        return True

    def _receive(self, batch: tpb.TunnelFrames, outbox: Outbox) -> None:
        for frame in batch.frames:
            body = frame.WhichOneof("body")
            if body == "reply":
                carried = self.forget(frame.id)
                if carried is not None:
                    carried.resolve(frame.reply)
            elif body == "response":
                carried = self._pending.get(frame.id)
                if carried is not None:
                    carried.deliver(frame.response)
            elif body == "goaway":
                self.state = _DRAINING
                if not self._pending:
                    outbox.close()

    async def _write(self, stream: Any, outbox: Outbox) -> None:
        try:
            while (batch := await outbox.next_batch()) is not None:
                await stream.write(batch)
            await stream.done_writing()
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError) as exc:
            _log.debug("tunnel to %s: write failed: %s", self.endpoint, exc)

    async def close(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


class Tunnels:
    """The out-proxy's links, one per in-proxy endpoint, each on a connection of its own
    (`channel(endpoint)`, with the limits `tunnel_channel_options` gives)."""

    def __init__(self, channel: Callable[[str], grpc.aio.Channel]) -> None:
        self._channel = channel
        self._links: dict[str, TunnelLink] = {}

    def link(self, endpoint: str) -> TunnelLink:
        link = self._links.get(endpoint)
        if link is None:
            link = self._links[endpoint] = TunnelLink(endpoint, lambda: self._channel(endpoint))
        return link

    async def close(self) -> None:
        links, self._links = self._links, {}
        for link in links.values():
            await link.close()


def tunnel_channel_options(max_message_bytes: int) -> tuple[tuple[str, int], ...]:
    limit = max_message_bytes + FRAME_SLACK_BYTES
    return (("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", limit))
