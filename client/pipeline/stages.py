"""One call of protocol version 2 on either side, written once and driven by every host.

The caller's side (out-proxy, embedded SDK): `CallerSide.route` picks the destination, a
session with it is opened (`CallerSide.handshake`, once per session), and an `OutboundCall`
seals the CALL record and every request, then opens the response's HEAD, every response
message and its STATUS record.

The callee's side (in-proxy, embedded server): `CalleeSide.hello` answers handshakes;
`InboundCall.admit` runs the call stages in order (`OpenCall`: session, CALL record, replay
and metadata checks; `Authorize`; `SpendRateLimit`), then the call opens every request and
seals the response's HEAD, messages and STATUS. A refusal after `OpenCall` carries
`seal_end`, so the host can seal it too.

Everything here is plain code over bytes: the clock (`now`, seconds since the epoch) and
the session tables are handed in. Status codes are gRPC's integer values.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from google.protobuf.message import DecodeError

from fastproxy.pipeline.authz import NO_RULE, AllowList, CompiledAllowRule
from fastproxy.pipeline.compression import Compressor
from fastproxy.pipeline.handshake import (
    CLOCK_AHEAD_S,
    CalleeSession,
    CallerHandshake,
    CallerSession,
    Defer,
    HelloPolicy,
    accept_hello,
    stamped_within,
)
from fastproxy.pipeline.keys import Ephemeral, Signer, SpareEphemeral, Verifier, nonce
from fastproxy.pipeline.metadata import (
    CALL_KEY,
    END_KEY,
    HEAD_KEY,
    PROTOCOL_KEYS,
    SECRET_KEYS,
    Metadata,
    grpc_service_of,
    has_app_entries,
    metadata_digest,
    split_secrets,
    value_bytes,
)
from fastproxy.pipeline.reasons import FastProxyError, Reason
from fastproxy.pipeline.records import (
    CALL,
    CALL_PREFIX_BYTES,
    HEAD,
    SESSION_ID_BYTES,
    STATUS,
    Direction,
    check_version,
    header,
)
from fastproxy.policy.model import RetryPolicy
from fastproxy.v1 import session_pb2 as spb

if TYPE_CHECKING:
    from fastproxy.pipeline.node_policy import NodeState

DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
DEFAULT_CLOCK_WINDOW_S = 30.0
OK = 0
# Codes a response may end with unsealed: what a broken connection produces, and a callee
# that could not open the call (UNAUTHENTICATED). An intermediary can always cause these.
UNSEALED_CODES = frozenset({1, 4, 13, 14, 16})  # CANCELLED, DEADLINE_EXCEEDED, INTERNAL,
#                                                 UNAVAILABLE, UNAUTHENTICATED
UNKNOWN_SESSION = "unknown"
ZERO_DIGEST = bytes(32)
_CALL_HEADER = header(CALL)


def _pairs(metadata: Metadata) -> list[spb.MetadataPair]:
    if not metadata:
        return []
    return [spb.MetadataPair(key=key, value=value_bytes(value)) for key, value in metadata]


def _entries(pairs: Iterable[spb.MetadataPair]) -> Metadata:
    if not pairs:
        return ()
    return tuple((pair.key, pair.value if pair.key.endswith("-bin")
                  else pair.value.decode("utf-8", "replace"))
                 for pair in pairs)


def _without(metadata: Metadata, keys: frozenset[str]) -> Metadata:
    for key, _ in metadata:
        if key in keys:
            return tuple(entry for entry in metadata if entry[0] not in keys)
    return metadata


def _value(metadata: Metadata, key: str) -> str | bytes | None:
    found: str | bytes | None = None
    for entry_key, value in metadata:
        if entry_key == key:
            if found is not None:
                raise FastProxyError(Reason.UNAUTHENTICATED, f"{key} appears more than once")
            found = value
    return found


def _check_digest(metadata: Metadata, secret_keys: frozenset[str], digest: bytes,
                  what: str) -> None:
    """UNAUTHENTICATED unless `metadata` is what was sealed: its digest, and no credential
    entry in the clear (a sender puts them in the record; one on the wire was added there,
    and the digest does not cover it)."""
    if digest != metadata_digest(metadata, secret_keys):
        raise FastProxyError(Reason.UNAUTHENTICATED, f"{what} changed on the way")
    for key, _ in metadata:
        if key in secret_keys:
            raise FastProxyError(Reason.UNAUTHENTICATED,
                                 f"{what} carry credential metadata in the clear")


_NO_DETAILS_DIGEST = hashlib.sha256(b"").digest()


def _details_digest(details: str) -> bytes:
    if not details:
        return _NO_DETAILS_DIGEST
    return hashlib.sha256(details.encode()).digest()


def _parse(message: type[spb.CallHead] | type[spb.ResponseHead] | type[spb.ResponseEnd],
           data: bytes, what: str) -> object:
    try:
        return message.FromString(data)
    except DecodeError:
        raise FastProxyError(Reason.UNAUTHENTICATED, f"{what} cannot be parsed") from None


# --- the caller's side ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Destination:
    """A service this node calls, compiled from the snapshot."""

    name: str
    endpoints: tuple[str, ...]
    timeout_ms: int
    retry: RetryPolicy | None
    verifiers: Mapping[str, Verifier]  # its identity keys, as this node holds them
    suite: int
    psk_id: str  # its encryption key ("": payloads authenticated, not encrypted)
    psk: bytes | None
    compressor: Compressor | None
    secret_keys: frozenset[str]  # SECRET_KEYS and the service's own


@dataclass(frozen=True, slots=True)
class CallerSide:
    """What a calling node needs from its policy (see `NodePolicy`)."""

    service: str
    signer: Signer | None
    routes: Mapping[str, Destination]  # gRPC service name -> destination
    window_s: float
    max_message_bytes: int
    others: Mapping[str, str] = field(default_factory=dict)  # gRPC service -> a service
    revision: int = 0  # this node may not call
    # the next handshake's X25519 key, made with the policy (off the call path)
    spare: SpareEphemeral = field(default_factory=SpareEphemeral, compare=False, repr=False)

    def route(self, method: str) -> Destination:
        """The destination serving `method`'s gRPC service: DENIED when a service this node
        may not call serves it, NO_ROUTE when none does."""
        grpc_service = grpc_service_of(method)
        destination = self.routes.get(grpc_service)
        if destination is None:
            owner = self.others.get(grpc_service)
            if owner is not None:
                raise FastProxyError(
                    Reason.DENIED, f"no rule of {owner!r} lets {self.service!r} call {method} "
                                   f"(policy revision {self.revision}, rule {NO_RULE})",
                    rule=NO_RULE, callee=owner)
            raise FastProxyError(Reason.NO_ROUTE,
                                 f"no service serves {grpc_service or method!r}")
        return destination

    def handshake(self, destination: Destination, now: float, *,
                  ephemeral: Ephemeral | None = None,
                  random: Callable[[int], bytes] = os.urandom,
                  lost_session: bytes = b"") -> CallerHandshake:
        if self.signer is None:  # from_snapshot refuses this whenever a route exists
            raise FastProxyError(Reason.UNAVAILABLE, "this node has no identity key")
        return CallerHandshake(caller=self.service, callee=destination.name, signer=self.signer,
                               suite=destination.suite, psk_id=destination.psk_id,
                               psk=destination.psk, now=now,
                               ephemeral=ephemeral or self.spare.take(), random=random,
                               lost_session=lost_session)

    def serves(self, session: CallerSession, destination: Destination, now: float) -> bool:
        """Whether a new call to `destination` may use `session`."""
        return (self.signer is not None and session.callee_key in destination.verifiers
                and session.serves(now, self.signer.key_id, destination.psk_id,
                                   destination.suite))


class OutboundCall:
    """One call attempt on the caller's side. `metadata` is what the call sends: the app's
    entries without credentials, and the CALL record (which holds them, encrypted)."""

    __slots__ = ("_compressor", "_head_seen", "_requests", "_responses", "_secret_keys",
                 "call_number", "destination", "endpoints", "metadata", "method", "retry",
                 "session", "timeout_ms", "told_unary")

    def __init__(self, side: CallerSide, destination: Destination, session: CallerSession,
                 method: str, metadata: Metadata, now: float) -> None:
        self.destination = destination.name
        self.endpoints = destination.endpoints
        self.timeout_ms = destination.timeout_ms
        self.retry = destination.retry
        self.method = method
        self.session = session
        self._compressor = destination.compressor
        self._secret_keys = destination.secret_keys
        self.call_number = number = session.take_call_number()
        clear, secret = split_secrets(_without(metadata, PROTOCOL_KEYS), self._secret_keys)
        head = spb.CallHead(method=method, timestamp_ms=int(now * 1000),
                            metadata_digest=metadata_digest(clear, self._secret_keys))
        if secret:
            head.secret.extend(_pairs(secret))
        prefix = b"".join((_CALL_HEADER, session.session_id, number.to_bytes(8, "big")))
        record = prefix + session.request.seal(nonce(number, 0), head.SerializeToString(),
                                               prefix)
        self.metadata: Metadata = (*clear, (CALL_KEY, record))
        limit = side.max_message_bytes
        self._requests = Direction(session.request, number, clear=session.clear,
                                   max_bytes=limit)
        self._responses = Direction(session.response, number, clear=session.clear,
                                    max_bytes=limit)
        self._head_seen = False
        # the callee's node said, in the sealed STATUS record, that the method is unary
        self.told_unary = False

    # requests

    def seal_request(self, message: bytes, final: bool = False) -> bytes:
        """A request as it travels; `final` when the caller knows it is the only one."""
        return self._requests.seal_message(message, self._compressor, final)

    def end_requests(self) -> bytes | None:
        """The END record to send after the last request (None: one was flagged final)."""
        return self._requests.seal_end()

    # the response

    def open_head(self, metadata: Metadata) -> Metadata:
        """The response headers for the app: checked against the HEAD record, credentials
        restored, the protocol's entries gone."""
        record = _value(metadata, HEAD_KEY)
        app = _without(metadata, PROTOCOL_KEYS)
        if record is None:
            if has_app_entries(app):
                raise FastProxyError(Reason.UNAUTHENTICATED,
                                     "response headers are not sealed by the callee")
            return app
        _, _, plaintext = self._responses.open(value_bytes(record), (HEAD,), "response head",
                                               position=0)
        head = _parse(spb.ResponseHead, plaintext, "response head")
        assert isinstance(head, spb.ResponseHead)
        _check_digest(app, self._secret_keys, head.metadata_digest, "response headers")
        self._head_seen = True
        return (*app, *_entries(head.secret))

    def open_response(self, message: bytes) -> bytes:
        opened = self._responses.open_message(message, "response message")
        if opened is None:  # END belongs to requests
            raise FastProxyError(Reason.UNAUTHENTICATED, "an END record among responses")
        return opened

    def open_end(self, code: int, details: str, trailers: Metadata) -> Metadata:
        """The trailers for the app once the response ended with `code` and `details`:
        checked against the STATUS record; UNAUTHENTICATED when anything differs, when an OK
        response was cut short, or when a status that must be sealed is not."""
        record = _value(trailers, END_KEY)
        app = _without(trailers, PROTOCOL_KEYS)
        if record is None:
            if code == OK:
                raise FastProxyError(Reason.UNAUTHENTICATED,
                                     "the response was cut short (no sealed end)")
            if code not in UNSEALED_CODES:
                raise FastProxyError(Reason.UNAUTHENTICATED,
                                     f"status {code} was not sealed by the callee")
            return app
        messages = self._responses.position - 1
        _, _, plaintext = self._responses.open(value_bytes(record), (STATUS,), "response end")
        end = _parse(spb.ResponseEnd, plaintext, "response end")
        assert isinstance(end, spb.ResponseEnd)
        if end.code != code or end.details_digest != _details_digest(details):
            raise FastProxyError(Reason.UNAUTHENTICATED,
                                 "the status or its message changed on the way")
        if end.messages != messages or end.head != self._head_seen:
            raise FastProxyError(Reason.UNAUTHENTICATED,
                                 f"the response was cut short or padded ({messages} messages "
                                 f"arrived, {end.messages} were sent)")
        _check_digest(app, self._secret_keys, end.trailers_digest, "trailers")
        self.told_unary = end.unary
        return (*app, *_entries(end.secret))


# --- the callee's side ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CalleeSide:
    """What a guarding node needs from its policy (see `NodePolicy`)."""

    service: str
    callers: Mapping[str, Mapping[str, Verifier]]  # caller -> its accepted identity keys
    allow: AllowList
    timeout_ms: int
    max_message_bytes: int
    hello: HelloPolicy | None  # None: no identity of its own, so no session is opened
    compressor: Compressor | None = None
    secret_keys: frozenset[str] = SECRET_KEYS  # and the service's own
    window_s: float = DEFAULT_CLOCK_WINDOW_S  # how old a call may be
    ahead_s: float = CLOCK_AHEAD_S  # how far ahead of our clock a call may be stamped
    revision: int = 0
    # the next answer's X25519 key, made with the policy (off the call path)
    spare: SpareEphemeral = field(default_factory=SpareEphemeral, compare=False, repr=False)

    def accept(self, request: bytes, now: float, state: NodeState, *,
               ephemeral: Ephemeral | None = None,
               random: Callable[[int], bytes] = os.urandom,
               defer: Defer | None = None) -> bytes:
        """The answer to a handshake; the session it opens is kept in `state`. With
        `defer` (e.g. the host loop's `call_soon`), the session's key agreement and the next
        answer's key are made after the answer is sent (see `accept_hello`)."""
        if self.hello is None:
            raise FastProxyError(Reason.UNAUTHENTICATED,
                                 "handshake refused: the hello is not signed by a caller "
                                 "this service knows")
        answer, session = accept_hello(request, self.hello, now, ephemeral=ephemeral,
                                       random=random, agree_later=defer is not None,
                                       spare=self.spare, sessions=state.sessions)
        state.sessions.add(session)
        if defer is not None:  # once the answer is on its way
            defer(session.complete)
            defer(self.spare.refill)
        return answer


class InboundAdmission:
    """A call arriving on the callee's side; each call stage fills in its part."""

    __slots__ = ("call", "metadata", "method", "now", "rule", "side", "state")

    def __init__(self, side: CalleeSide, method: str, metadata: Metadata, now: float,
                 state: NodeState) -> None:
        self.side = side
        self.method = method
        self.metadata = metadata
        self.now = now
        self.state = state
        self.call: InboundCall | None = None
        self.rule: CompiledAllowRule | None = None


class InboundStage(Protocol):
    def admit(self, call: InboundAdmission) -> None: ...


def _unknown_session(detail: str) -> FastProxyError:
    refused = FastProxyError(Reason.UNAUTHENTICATED, detail)
    refused.session_unknown = True
    return refused


class OpenCall:
    """The CALL record: its session (live, its keys still accepted), the record opens at
    position 0, the call number is new, the caller is still known, and the method, time and
    metadata are what was sealed. Nothing is sealed for a call before its number is spent,
    so no (key, nonce) is ever used twice."""

    def admit(self, call: InboundAdmission) -> None:
        side, sessions = call.side, call.state.sessions
        value = _value(call.metadata, CALL_KEY)
        if value is None:
            raise FastProxyError(Reason.UNAUTHENTICATED, "call carries no CALL record")
        record = value_bytes(value)
        check_version(record, "the call header")
        if len(record) <= CALL_PREFIX_BYTES or record[1] != CALL:
            raise FastProxyError(Reason.UNAUTHENTICATED, "the call header is not a CALL record")
        session_id = record[3:3 + SESSION_ID_BYTES]
        number = int.from_bytes(record[3 + SESSION_ID_BYTES:CALL_PREFIX_BYTES], "big")
        session = sessions.find(session_id, call.now)
        if session is None:
            raise _unknown_session("unknown or expired session: open a new one")
        if session.keys_retired(side.callers, side.hello.psks if side.hello else {}):
            sessions.forget(session_id)
            raise _unknown_session("the session's keys were retired: open a new one")
        prefix = record[:CALL_PREFIX_BYTES]
        plaintext = session.request.open(nonce(number, 0), record[CALL_PREFIX_BYTES:], prefix,
                                         "the call header")
        if not sessions.take_call(session, number):
            raise FastProxyError(Reason.UNAUTHENTICATED, "call replayed (its number was seen)")
        # From here on, a refusal is sealed: this call number is spent.
        call.call = inbound = InboundCall(side, session, number, call.method, call.metadata)
        if session.caller not in side.callers:
            raise FastProxyError(Reason.DENIED,
                                 f"{side.allow.denial(session.caller, call.method)} (policy "
                                 f"revision {side.revision}, rule {NO_RULE})", rule=NO_RULE)
        head = _parse(spb.CallHead, plaintext, "the call header")
        assert isinstance(head, spb.CallHead)
        if head.method != call.method:
            raise FastProxyError(Reason.UNAUTHENTICATED,
                                 "the call header was sealed for another method")
        if not stamped_within(head.timestamp_ms, call.now, side.window_s, side.ahead_s):
            raise FastProxyError(Reason.UNAUTHENTICATED, "the call is too old or too far ahead")
        _check_digest(inbound.wire_metadata, side.secret_keys, head.metadata_digest,
                      "request metadata")
        inbound.restored = _entries(head.secret)


class Authorize:
    """The allow rules decide (`AllowList.decide`); a call that passes only in audit mode
    is marked `would_deny` for the host to count, audit and mark on its span."""

    def admit(self, call: InboundAdmission) -> None:
        assert call.call is not None
        side, caller = call.side, call.call.caller
        decision = side.allow.decide(caller, call.method)
        if not decision.allowed:
            raise FastProxyError(Reason.DENIED,
                                 f"{side.allow.denial(caller, call.method)} (policy revision "
                                 f"{side.revision}, rule {NO_RULE})", rule=NO_RULE)
        call.rule = call.call.rule = decision.rule
        call.call.would_deny = decision.audit if decision.would_deny else ""


class SpendRateLimit:
    def admit(self, call: InboundAdmission) -> None:
        assert call.call is not None
        rule = call.rule
        if rule is None or rule.rate_limit is None:
            return
        limit = rule.rate_limit
        key = (call.side.service, call.call.caller, rule.bucket_key)
        if not call.state.take_token(key, limit, call.now):
            raise FastProxyError(
                Reason.RATE_LIMITED,
                f"rate limit of {limit.rps:g}/s (burst {limit.burst}) for "
                f"{call.call.caller!r} is spent (policy revision {call.side.revision}, rule "
                f"{rule.path})", rule=rule.path)


INBOUND_STAGES: tuple[InboundStage, ...] = (OpenCall(), Authorize(), SpendRateLimit())


class InboundCall:
    """One call on the callee's side, once its CALL record opened."""

    __slots__ = ("_compressor", "_head_sent", "_requests", "_responses", "call_number",
                 "caller", "method", "restored", "rule", "secret_keys", "session", "timeout_ms",
                 "wire_metadata", "would_deny")

    def __init__(self, side: CalleeSide, session: CalleeSession, number: int, method: str,
                 metadata: Metadata) -> None:
        self.caller = session.caller
        self.method = method
        self.session = session
        self.call_number = number
        self.timeout_ms = side.timeout_ms
        self.rule: CompiledAllowRule | None = None
        # what let it pass in audit mode (a service or rule path): "" for an allowed call
        self.would_deny = ""
        self.secret_keys = side.secret_keys
        self.wire_metadata = _without(metadata, PROTOCOL_KEYS)
        self.restored: Metadata = ()  # the credential entries the CALL record carried
        self._compressor = side.compressor
        self._head_sent = False
        limit = side.max_message_bytes
        self._requests = Direction(session.request, number, clear=session.clear,
                                   max_bytes=limit)
        self._responses = Direction(session.response, number, clear=session.clear,
                                    max_bytes=limit)

    @classmethod
    def admit(cls, side: CalleeSide, method: str, metadata: Metadata, now: float,
              state: NodeState) -> InboundCall:
        admission = InboundAdmission(side, method, metadata, now, state)
        try:
            for stage in INBOUND_STAGES:
                stage.admit(admission)
        except FastProxyError as refused:
            if admission.call is not None:
                refused.caller = admission.call.caller  # for the audit line
                refused.seal_end = admission.call.seal_end
            raise
        assert admission.call is not None
        return admission.call

    # requests

    def open_request(self, data: bytes, single: bool = False) -> bytes | None:
        """A request's message, or None for the END record. `single`: the method takes one
        request, which then needs no FINAL flag."""
        message = self._requests.open_message(data, "request message")
        if single and message is not None:
            self._requests.ended = True
        return message

    def finish_requests(self) -> None:
        """The client half-closed: UNAUTHENTICATED unless the requests ended as sealed."""
        if not self._requests.ended:
            raise FastProxyError(Reason.UNAUTHENTICATED, "request stream cut short (no "
                                                         "sealed end)")

    # the response

    def seal_head(self, metadata: Metadata) -> Metadata:
        """The response headers as they travel: with a HEAD record when the app set any."""
        metadata = _without(metadata, PROTOCOL_KEYS)
        if not has_app_entries(metadata):
            return metadata
        clear, secret = split_secrets(metadata, self.secret_keys)
        head = spb.ResponseHead(metadata_digest=metadata_digest(clear, self.secret_keys),
                                secret=_pairs(secret)).SerializeToString()
        record = self._responses.seal(HEAD, head, position=0)
        self._head_sent = True
        return (*clear, (HEAD_KEY, record))

    def seal_response(self, message: bytes) -> bytes:
        return self._responses.seal_message(message, self._compressor)

    def seal_end(self, code: int, details: str, trailers: Metadata,
                 unary: bool = False) -> Metadata:
        """The trailers as they travel, with the STATUS record of `code` and `details`
        (`unary`: the in-proxy tells the out-proxy that asked that the method is unary)."""
        trailers = _without(trailers, PROTOCOL_KEYS)
        clear, secret = split_secrets(trailers, self.secret_keys)
        end = spb.ResponseEnd(code=code, details_digest=_details_digest(details),
                              trailers_digest=metadata_digest(clear, self.secret_keys),
                              messages=self._responses.position - 1, head=self._head_sent,
                              unary=unary)
        if secret:
            end.secret.extend(_pairs(secret))
        return (*clear, (END_KEY, self._responses.seal(STATUS, end.SerializeToString())))
