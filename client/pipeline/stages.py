"""The stages every call goes through, written once and shared by every host.

Two kinds of stages:

- call stages run once per call, before any message: on the caller side `Route`,
  `SignCallHeader`; on the callee side `AuthenticateCaller`, `RejectReplay`,
  `Authorize`, `SpendRateLimit`. Each takes the call's admission record and fills it in or
  raises `FastProxyError`.
- message stages run once per message: `Position` (sequence numbers, timestamps, binding to
  the call), `Compress`, `Encrypt`, `Sign` (which also writes the wire form). Sealing runs them in
  order, opening in reverse, so each stage undoes exactly what it did.

The out-proxy, the in-proxy, the embedded client SDK and the embedded server all get their
`OutboundCall` / `InboundCall` from a `NodePolicy` and never run a stage themselves. A new
stage is one new class added to the tuple that composes it.

One `OutboundCall` is one attempt: a retry asks the policy for a new one (new call id and
nonce; the callee refuses a call header it has already seen).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from fastproxy.pipeline.authz import AllowList, CompiledAllowRule
from fastproxy.pipeline.compression import Compressor, decompress
from fastproxy.pipeline.envelope import (
    CALL_ID_BYTES,
    CALL_METADATA_KEY,
    ENVELOPE_VERSION,
    NONCE_BYTES,
    AeadKey,
    CallHeaderFields,
    SigningKey,
    VerifyKey,
    aad_for,
    aad_prefix,
    claimed_caller,
    frame_envelope,
    message_method_prefix,
    message_signed_parts,
    parse_envelope,
    parse_message_header,
    pick_verify_key,
    read_signed_call_header,
    sign_call_header,
    verify_call_header,
)
from fastproxy.pipeline.metadata import grpc_service_of
from fastproxy.pipeline.reasons import FastProxyError, Reason
from fastproxy.policy.model import RetryPolicy
from fastproxy.v1 import envelope_pb2 as epb

if TYPE_CHECKING:
    from fastproxy.pipeline.node_policy import NodeState

DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
DEFAULT_CLOCK_WINDOW_S = 30.0


# --- per-call, per-direction state of the message stages ---------------------------------


class Stream:
    """One direction of one call: what binds its messages, and the next sequence number."""

    __slots__ = ("aad_prefix", "call_id", "callee", "caller", "direction", "header_prefix",
                 "max_bytes", "method_prefix", "next_sequence", "start_ms", "window_ms")

    def __init__(self, *, method: str, caller: str, callee: str, call_id: bytes,
                 direction: int, start_ms: int, window_s: float, max_bytes: int) -> None:
        self.caller = caller
        self.callee = callee
        self.call_id = call_id
        self.direction = direction
        self.start_ms = start_ms
        self.window_ms = int(window_s * 1000)
        self.max_bytes = max_bytes
        self.next_sequence = 1
        self.aad_prefix = aad_prefix(method, caller, callee, call_id, direction)
        self.method_prefix = message_method_prefix(method)
        self.header_prefix: bytes | None = None  # the per-call part of MessageHeader


class MessageFrame:
    """One message on its way through the stages (plaintext one end, wire bytes the other)."""

    __slots__ = ("algorithm", "codec", "data", "enc_key_id", "header", "nonce", "now",
                 "sequence", "stream", "timestamp_ms")

    def __init__(self, stream: Stream, data: bytes, now: float | None) -> None:
        self.stream = stream
        self.data = data
        self.now = now
        self.sequence = 0
        self.timestamp_ms = 0
        self.codec: int = epb.CODEC_NONE
        self.algorithm: int = epb.ALGORITHM_NONE
        self.enc_key_id = ""
        self.nonce = b""
        self.header: epb.MessageHeader | None = None


class MessageStage(Protocol):
    def seal(self, frame: MessageFrame) -> None: ...

    def open(self, frame: MessageFrame) -> None: ...


class Position:
    """Sequence numbers from 1 per direction, in order; the message belongs to this call."""

    def seal(self, frame: MessageFrame) -> None:
        stream = frame.stream
        frame.sequence = stream.next_sequence
        stream.next_sequence += 1
        frame.timestamp_ms = stream.start_ms if frame.now is None else int(frame.now * 1000)

    def open(self, frame: MessageFrame) -> None:
        stream, header = frame.stream, frame.header
        assert header is not None and frame.now is not None
        if (header.call_id != stream.call_id or header.caller != stream.caller
                or header.callee != stream.callee or header.direction != stream.direction):
            raise FastProxyError(Reason.UNAUTHENTICATED,
                                 "message belongs to another call or direction")
        if header.sequence != stream.next_sequence:
            raise FastProxyError(
                Reason.UNAUTHENTICATED,
                f"message out of order or replayed (sequence {header.sequence}, "
                f"expected {stream.next_sequence})",
            )
        # A stream may outlive the window: a message is fresh if sealed during this call.
        now_ms = frame.now * 1000
        if header.timestamp_ms > now_ms + stream.window_ms:
            raise FastProxyError(Reason.UNAUTHENTICATED, "message timestamp is in the future")
        if header.timestamp_ms < stream.start_ms - stream.window_ms:
            raise FastProxyError(Reason.UNAUTHENTICATED, "message timestamp has expired")
        stream.next_sequence += 1


class Compress:
    """Compresses with the destination's codec above its `min_bytes`; inflates any codec,
    bounded by the message size limit."""

    __slots__ = ("compressor",)

    def __init__(self, compressor: Compressor | None) -> None:
        self.compressor = compressor

    def seal(self, frame: MessageFrame) -> None:
        if self.compressor is not None:
            frame.codec, frame.data = self.compressor.compress(frame.data)

    def open(self, frame: MessageFrame) -> None:
        frame.data = decompress(frame.codec, frame.data, frame.stream.max_bytes)
        if len(frame.data) > frame.stream.max_bytes:
            raise FastProxyError(
                Reason.MALFORMED,
                f"message exceeds the limit of {frame.stream.max_bytes} bytes",
            )


class Encrypt:
    """AEAD with the destination's key; without one, messages are signed only, and an
    encrypted message (or a plaintext one where encryption is required) is refused."""

    __slots__ = ("accepted", "sealing")

    def __init__(self, sealing: AeadKey | None, accepted: dict[str, AeadKey]) -> None:
        self.sealing = sealing
        self.accepted = accepted

    def seal(self, frame: MessageFrame) -> None:
        key = self.sealing
        if key is None:
            return
        nonce = os.urandom(NONCE_BYTES)
        frame.data = key.encrypt(nonce, frame.data, aad_for(frame.stream.aad_prefix,
                                                            frame.sequence))
        frame.algorithm = key.algorithm
        frame.enc_key_id = key.key_id
        frame.nonce = nonce

    def open(self, frame: MessageFrame) -> None:
        if frame.algorithm == epb.ALGORITHM_NONE:
            if self.sealing is not None:
                raise FastProxyError(Reason.UNAUTHENTICATED,
                                     "message is not encrypted but this service requires it")
            return
        key = self.accepted.get(frame.enc_key_id)
        if key is None or key.algorithm != frame.algorithm:
            raise FastProxyError(Reason.UNAUTHENTICATED,
                                 "message is encrypted with an unknown key")
        frame.data = key.decrypt(frame.nonce, frame.data,
                                 aad_for(frame.stream.aad_prefix, frame.sequence))


class Sign:
    """Signs with the sender's identity; verifies against the peer's accepted identity keys
    over the header bytes exactly as received."""

    __slots__ = ("signer", "verifiers")

    def __init__(self, signer: SigningKey, verifiers: dict[str, VerifyKey]) -> None:
        self.signer = signer
        self.verifiers = verifiers

    def seal(self, frame: MessageFrame) -> None:
        stream = frame.stream
        if stream.header_prefix is None:
            stream.header_prefix = epb.MessageHeader(
                caller=stream.caller, callee=stream.callee, call_id=stream.call_id,
                direction=stream.direction,
                algorithm=frame.algorithm,
                enc_key_id=frame.enc_key_id,
                signature_type=self.signer.signature_type,
            ).SerializeToString()
        # Concatenated protobuf encodings merge: per-call fields once, per-message fields here.
        header = stream.header_prefix + epb.MessageHeader(
            sequence=frame.sequence, timestamp_ms=frame.timestamp_ms, nonce=frame.nonce,
            codec=frame.codec,
        ).SerializeToString()
        signature = self.signer.sign(message_signed_parts(stream.method_prefix, header,
                                                          frame.data))
        frame.data = frame_envelope(epb.Envelope(
            version=ENVELOPE_VERSION, sig_key_id=self.signer.key_id_bytes, header=header,
            payload=frame.data, signature=signature,
        ))

    def open(self, frame: MessageFrame) -> None:
        envelope = parse_envelope(frame.data, frame.stream.max_bytes)
        key = pick_verify_key(self.verifiers, envelope.sig_key_id, "message")
        parts = message_signed_parts(frame.stream.method_prefix, envelope.header,
                                     envelope.payload)
        if not key.verify(parts, envelope.signature):
            raise FastProxyError(Reason.UNAUTHENTICATED, "message signature does not verify")
        header = parse_message_header(envelope.header)
        if header.signature_type != key.signature_type:
            raise FastProxyError(Reason.UNAUTHENTICATED, "message names another signature type")
        frame.header = header
        frame.data = envelope.payload
        frame.codec = header.codec
        frame.algorithm = header.algorithm
        frame.enc_key_id = header.enc_key_id
        frame.nonce = header.nonce
        frame.sequence = header.sequence
        frame.timestamp_ms = header.timestamp_ms


POSITION = Position()


@dataclass(frozen=True, slots=True)
class MessagePipeline:
    """The message stages of one peer, in sealing order. Built once per snapshot."""

    stages: tuple[MessageStage, ...]

    @classmethod
    def standard(cls, *, compressor: Compressor | None, sealing: AeadKey | None,
                 accepted: dict[str, AeadKey], signer: SigningKey,
                 verifiers: dict[str, VerifyKey]) -> MessagePipeline:
        return cls((POSITION, Compress(compressor), Encrypt(sealing, accepted),
                    Sign(signer, verifiers)))

    def seal(self, stream: Stream, message: bytes, now: float | None) -> bytes:
        frame = MessageFrame(stream, message, now)
        for stage in self.stages:
            stage.seal(frame)
        return frame.data

    def open(self, stream: Stream, sealed: bytes, now: float) -> bytes:
        frame = MessageFrame(stream, sealed, now)
        for stage in reversed(self.stages):
            stage.open(frame)
        return frame.data


# --- the caller side ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Destination:
    """A service this node calls, compiled from the snapshot."""

    name: str
    endpoints: tuple[str, ...]
    timeout_ms: int
    retry: RetryPolicy | None
    messages: MessagePipeline  # seals requests with our identity, opens its responses


@dataclass(frozen=True, slots=True)
class CallerSide:
    """What a calling node needs from its policy (see `NodePolicy`)."""

    service: str
    signer: SigningKey | None
    routes: dict[str, Destination]  # gRPC service name -> destination
    window_s: float
    max_message_bytes: int


class OutboundAdmission:
    """A call being set up on the caller side; each call stage fills in its part."""

    __slots__ = ("call_id", "destination", "metadata", "method", "now", "side")

    def __init__(self, side: CallerSide, method: str, now: float) -> None:
        self.side = side
        self.method = method
        self.now = now
        self.destination: Destination | None = None
        self.call_id = b""
        self.metadata: tuple[tuple[str, bytes], ...] = ()


class OutboundStage(Protocol):
    def admit(self, call: OutboundAdmission) -> None: ...


class Route:
    """The gRPC service name of the method picks the destination service."""

    def admit(self, call: OutboundAdmission) -> None:
        method = call.method
        grpc_service = grpc_service_of(method)
        destination = call.side.routes.get(grpc_service)
        if destination is None:
            raise FastProxyError(Reason.NO_ROUTE,
                                 f"no service serves {grpc_service or method!r}")
        call.destination = destination


class SignCallHeader:
    """The caller's signed statement of who calls what, sent before any message."""

    def admit(self, call: OutboundAdmission) -> None:
        assert call.destination is not None
        signer = call.side.signer
        if signer is None:  # from_snapshot refuses this whenever a route exists
            raise FastProxyError(Reason.UNAVAILABLE, "this node has no identity key")
        call.call_id = os.urandom(CALL_ID_BYTES)
        header = CallHeaderFields(
            caller=call.side.service, callee=call.destination.name, method=call.method,
            call_id=call.call_id, timestamp_ms=int(call.now * 1000),
            nonce=os.urandom(CALL_ID_BYTES),
        )
        call.metadata = ((CALL_METADATA_KEY, sign_call_header(header, signer)),)


# No endpoint stage: which endpoint a call goes to is the host's choice (the out-proxy picks
# among the destination's endpoints and refuses `unavailable` when there is none; the
# embedded SDK's channel already names its target).
OUTBOUND_STAGES: tuple[OutboundStage, ...] = (Route(), SignCallHeader())


class OutboundCall:
    """One call attempt on the caller side: seal every request, open every response."""

    __slots__ = ("_messages", "_metadata", "_requests", "_responses", "call_id",
                 "destination", "endpoints", "method", "retry", "timeout_ms")

    def __init__(self, admission: OutboundAdmission) -> None:
        destination = admission.destination
        assert destination is not None
        side = admission.side
        self.method = admission.method
        self.destination = destination.name
        self.endpoints = destination.endpoints
        self.timeout_ms = destination.timeout_ms
        self.retry = destination.retry
        self.call_id = admission.call_id
        self._metadata = admission.metadata
        self._messages = destination.messages
        start_ms = int(admission.now * 1000)
        self._requests, self._responses = _streams(
            method=admission.method, caller=side.service, callee=destination.name,
            call_id=admission.call_id, start_ms=start_ms, window_s=side.window_s,
            max_bytes=side.max_message_bytes,
        )

    @classmethod
    def admit(cls, side: CallerSide, method: str, now: float) -> OutboundCall:
        admission = OutboundAdmission(side, method, now)
        for stage in OUTBOUND_STAGES:
            stage.admit(admission)
        return cls(admission)

    def request_metadata(self) -> tuple[tuple[str, bytes], ...]:
        """Entries to add to the upstream call (keys end in "-bin")."""
        return self._metadata

    def seal_request(self, message: bytes, now: float | None = None) -> bytes:
        """`now` stamps the message; without it the call's start time is used."""
        return self._messages.seal(self._requests, message, now)

    def open_response(self, message: bytes, now: float) -> bytes:
        return self._messages.open(self._responses, message, now)


# --- the callee side ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KnownCaller:
    name: str
    verifiers: dict[str, VerifyKey]  # its identity keys, by id
    messages: MessagePipeline  # opens its requests, seals our responses


@dataclass(frozen=True, slots=True)
class CalleeSide:
    """What a guarding node needs from its policy (see `NodePolicy`)."""

    service: str
    callers: dict[str, KnownCaller]
    caller_keys: dict[str, VerifyKey]  # every known caller's identity keys, by id
    allow: AllowList
    timeout_ms: int
    max_message_bytes: int


class InboundAdmission:
    """A call arriving on the callee side; each call stage fills in its part."""

    __slots__ = ("caller", "header", "metadata", "method", "now", "rule", "side", "state")

    def __init__(self, side: CalleeSide, method: str,
                 metadata: Sequence[tuple[str, str | bytes]], now: float,
                 state: NodeState) -> None:
        self.side = side
        self.method = method
        self.metadata = metadata
        self.now = now
        self.state = state
        self.header: epb.CallHeader | None = None
        self.caller: KnownCaller | None = None
        self.rule: CompiledAllowRule | None = None


class InboundStage(Protocol):
    def admit(self, call: InboundAdmission) -> None: ...


class AuthenticateCaller:
    """Verifies the signed call header with the identity key it names, then checks that the
    key belongs to the caller the header names. Only callers that some allow rule of this
    service names have their keys here: any other caller's key is unknown."""

    def admit(self, call: InboundAdmission) -> None:
        signed = read_signed_call_header(_call_header_value(call.metadata))
        if signed.sig_key_id.decode(errors="replace") not in call.side.caller_keys:
            # A caller that no rule names (for example, one whose rule was just removed and
            # whose route is not yet gone) is denied, whatever its signature; any other
            # unknown key is a failed authentication below.
            claimed = claimed_caller(signed)
            if claimed and claimed not in call.side.callers:
                raise FastProxyError(Reason.DENIED, f"no allow rule of {call.side.service!r} "
                                                    f"names caller {claimed!r}")
        header = verify_call_header(signed, call.side.caller_keys)
        caller = call.side.callers.get(header.caller)
        if caller is None or signed.sig_key_id.decode(errors="replace") not in caller.verifiers:
            raise FastProxyError(Reason.UNAUTHENTICATED,
                                 "call header is signed with a key of another service")
        if header.callee != call.side.service or header.method != call.method:
            raise FastProxyError(Reason.UNAUTHENTICATED,
                                 "call header was signed for another service or method")
        if len(header.call_id) != CALL_ID_BYTES or not header.nonce:
            raise FastProxyError(Reason.UNAUTHENTICATED, "call header lacks a call id or nonce")
        call.header = header
        call.caller = caller


class RejectReplay:
    def admit(self, call: InboundAdmission) -> None:
        assert call.header is not None
        call.state.remember_call(call.header.nonce, call.header.timestamp_ms, call.now)


class Authorize:
    def admit(self, call: InboundAdmission) -> None:
        assert call.caller is not None
        rule = call.side.allow.first_match(call.caller.name, call.method)
        if rule is None:
            raise FastProxyError(
                Reason.DENIED, f"no allow rule lets {call.caller.name!r} call {call.method}"
            )
        call.rule = rule


class SpendRateLimit:
    def admit(self, call: InboundAdmission) -> None:
        assert call.caller is not None and call.rule is not None
        limit = call.rule.rate_limit
        if limit is None:
            return
        key = (call.side.service, call.caller.name, call.rule.bucket_key)
        if not call.state.take_token(key, limit, call.now):
            raise FastProxyError(
                Reason.RATE_LIMITED,
                f"rate limit of {limit.rps:g}/s for {call.caller.name!r} is spent",
            )


INBOUND_STAGES: tuple[InboundStage, ...] = (
    AuthenticateCaller(), RejectReplay(), Authorize(), SpendRateLimit(),
)


class InboundCall:
    """One admitted call on the callee side: open every request, seal every response."""

    __slots__ = ("_messages", "_requests", "_responses", "call_id", "caller", "method",
                 "rule", "timeout_ms")

    def __init__(self, admission: InboundAdmission) -> None:
        header, caller, side = admission.header, admission.caller, admission.side
        assert header is not None and caller is not None
        self.caller = caller.name
        self.method = admission.method
        self.call_id = header.call_id
        self.timeout_ms = side.timeout_ms
        self.rule = admission.rule
        self._messages = caller.messages
        self._requests, self._responses = _streams(
            method=admission.method, caller=caller.name, callee=side.service,
            call_id=header.call_id, start_ms=header.timestamp_ms,
            window_s=admission.state.replay_window_s, max_bytes=side.max_message_bytes,
        )

    @classmethod
    def admit(cls, side: CalleeSide, method: str,
              metadata: Sequence[tuple[str, str | bytes]], now: float,
              state: NodeState) -> InboundCall:
        admission = InboundAdmission(side, method, metadata, now, state)
        try:
            for stage in INBOUND_STAGES:
                stage.admit(admission)
        except FastProxyError as refused:
            if admission.caller is not None:
                refused.caller = admission.caller.name  # for the audit line
            raise
        return cls(admission)

    def open_request(self, message: bytes, now: float) -> bytes:
        return self._messages.open(self._requests, message, now)

    def seal_response(self, message: bytes, now: float | None = None) -> bytes:
        """`now` stamps the message; without it the call header's time is used."""
        return self._messages.seal(self._responses, message, now)


def _streams(*, method: str, caller: str, callee: str, call_id: bytes, start_ms: int,
             window_s: float, max_bytes: int) -> tuple[Stream, Stream]:
    """The request and response streams of one call."""
    requests = Stream(method=method, caller=caller, callee=callee, call_id=call_id,
                      direction=epb.DIRECTION_REQUEST, start_ms=start_ms, window_s=window_s,
                      max_bytes=max_bytes)
    responses = Stream(method=method, caller=caller, callee=callee, call_id=call_id,
                       direction=epb.DIRECTION_RESPONSE, start_ms=start_ms, window_s=window_s,
                       max_bytes=max_bytes)
    return requests, responses


def _call_header_value(metadata: Sequence[tuple[str, str | bytes]]) -> bytes:
    found: list[str | bytes] = [value for key, value in metadata if key == CALL_METADATA_KEY]
    if not found:
        raise FastProxyError(Reason.UNAUTHENTICATED, "call carries no signed call header")
    if len(found) > 1:
        raise FastProxyError(Reason.UNAUTHENTICATED, "call carries several call headers")
    value = found[0]
    if isinstance(value, str):
        raise FastProxyError(Reason.MALFORMED, "call header is text, not binary metadata")
    return value
