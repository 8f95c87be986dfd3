"""The session handshake of protocol version 2 (docs/protocol.md, section 3), and the
sessions it opens on either side.

The caller builds a signed `ClientHello` (`CallerHandshake`) and turns the callee's answer
into a `CallerSession`; the callee checks the hello and answers (`accept_hello`), keeping a
`CalleeSession`. Randomness and clocks are handed in, so test vectors fix every byte.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from google.protobuf.message import DecodeError

from fastproxy.pipeline.keys import (
    KEY_BYTES,
    Aead,
    Ephemeral,
    Signer,
    SpareEphemeral,
    Verifier,
    hkdf_expand,
    hkdf_extract,
)
from fastproxy.pipeline.reasons import FastProxyError, Reason
from fastproxy.pipeline.records import SESSION_ID_BYTES
from fastproxy.v1 import session_pb2 as spb

PROTOCOL_VERSION = 2
OPEN_METHOD = "/fastproxy.v1.Session/Open"  # the handshake call (docs/protocol.md, 3)
# The out-proxy's tunnel to an in-proxy (proxy_svc/tunnel.py). An embedded server has none and
# answers it as any gRPC server answers a method it lacks (UNIMPLEMENTED, no audit line): the
# out-proxy then sends its calls one stream each.
CARRY_METHOD = "/fastproxy.v1.Tunnel/Carry"
CLIENT_CONTEXT = b"fastproxy-v2 client hello\x00"
SERVER_CONTEXT = b"fastproxy-v2 server hello\x00"
REQUEST_KEY_INFO = b"fastproxy-v2 request key"
RESPONSE_KEY_INFO = b"fastproxy-v2 response key"
RANDOM_BYTES = 32
SESSION_LIFETIME_S = 600
SESSION_MAX_CALLS = 1 << 32
REKEY_AT = 0.8  # a caller opens its next session after this share of the lifetime
USE_UNTIL = 0.95  # and starts no call in it after this share (time left to reach the callee)
HELLO_SKEW_S = 30.0  # how old a hello may be
# How far ahead of the callee's clock a hello or a call may be stamped (`--clock-skew`): a
# few seconds of clock difference, no more, so a stamp is never good for longer than
# HELLO_SKEW_S and this after it was made.
CLOCK_AHEAD_S = 5.0
CALL_WINDOW = 4096  # call numbers a callee still accepts below the highest it has seen
MAX_SESSIONS = 10_000
NO_PSK = bytes(32)

Random = Callable[[int], bytes]


@dataclass(frozen=True, slots=True)
class SessionSecrets:
    """What the key schedule yields (kept as bytes only where test vectors need them)."""

    transcript: bytes
    request_key: bytes
    response_key: bytes


def key_schedule(signed_client: bytes, signed_server: bytes, shared: bytes,
                 psk: bytes | None) -> SessionSecrets:
    transcript = hashlib.sha256(signed_client + signed_server).digest()
    prk = hkdf_extract(transcript, shared + (psk if psk is not None else NO_PSK))
    return SessionSecrets(transcript, hkdf_expand(prk, REQUEST_KEY_INFO),
                          hkdf_expand(prk, RESPONSE_KEY_INFO))


def _refused(detail: str) -> FastProxyError:
    return FastProxyError(Reason.UNAUTHENTICATED, f"handshake refused: {detail}")


def _signed(data: bytes, what: str) -> spb.SignedHello:
    try:
        signed = spb.SignedHello.FromString(data)
    except DecodeError:
        raise _refused(f"{what} cannot be parsed") from None
    if not signed.hello or not signed.signature:
        raise _refused(f"{what} is incomplete")
    if spb.SignedHello(hello=signed.hello, signature=signed.signature
                       ).SerializeToString() != data:
        # Anything beside the hello and its signature (a field protobuf does not know
        # included: it would keep it and write it back) would change the bytes without
        # changing what is signed: a captured hello made new for the replay check, an
        # answer whose transcript the callee never saw. Refused here: the only encoding
        # taken is the one the signer wrote.
        raise _refused(f"{what} carries more than a hello and its signature")
    return signed


# --- the caller's side ---------------------------------------------------------------------


class CallerSession:
    """A session as the caller holds it: its keys, and the next call number."""

    __slots__ = ("callee", "callee_key", "clear", "max_calls", "next_call", "opened_at", "pid",
                 "psk_id", "rekey_after", "request", "response", "session_id", "signer_id",
                 "suite", "use_until")

    def __init__(self, *, session_id: bytes, callee: str, secrets: SessionSecrets, suite: int,
                 psk_id: str, signer_id: str, lifetime_s: int, max_calls: int,
                 opened_at: float, callee_key: str = "") -> None:
        self.session_id = session_id
        self.callee = callee
        self.callee_key = callee_key  # the callee's identity key that signed the answer
        self.request = Aead(suite, secrets.request_key)
        self.response = Aead(suite, secrets.response_key)
        self.suite = suite
        self.psk_id = psk_id
        self.signer_id = signer_id
        self.clear = not psk_id
        self.max_calls = max_calls
        self.opened_at = opened_at
        self.rekey_after = opened_at + lifetime_s * REKEY_AT
        self.use_until = opened_at + lifetime_s * USE_UNTIL
        self.next_call = 1
        self.pid = os.getpid()  # a forked process opens sessions of its own

    def serves(self, now: float, signer_id: str, psk_id: str, suite: int) -> bool:
        """Whether a new call may use this session: young enough, calls left, made with
        the keys the policy names now (a rotation opens a new session), and opened by this
        process (a fork would count the same call numbers: the same nonces, under the same
        keys, as its parent)."""
        return (now < self.use_until and self.next_call < self.max_calls
                and signer_id == self.signer_id and psk_id == self.psk_id
                and suite == self.suite and self.pid == os.getpid())

    def due(self, now: float) -> bool:
        """Whether the next session should be opened now: past `REKEY_AT` of the lifetime or
        of the calls. A host that can open it aside keeps using this one meanwhile; one that
        cannot opens it before its next call."""
        return now >= self.rekey_after or self.next_call >= self.max_calls * REKEY_AT

    def take_call_number(self) -> int:
        number = self.next_call
        self.next_call += 1
        return number


class CallerHandshake:
    """The caller's half of one handshake: `request` to send, then `finish(answer)`."""

    __slots__ = ("_ephemeral", "_psk", "_psk_id", "_signer_id", "_suite", "callee",
                 "lost_refused", "request")

    def __init__(self, *, caller: str, callee: str, signer: Signer, suite: int, psk_id: str,
                 psk: bytes | None, now: float, ephemeral: Ephemeral | None = None,
                 random: Random = os.urandom, lost_session: bytes = b"") -> None:
        self._ephemeral = ephemeral or Ephemeral()
        self._psk, self._psk_id, self._suite = psk, psk_id, suite
        self._signer_id = signer.key_id
        self.callee = callee
        # set by `finish`: the callee, in its signed answer, says it would refuse a call in
        # `lost_session` (which it answered "unknown"): that call was not forwarded
        self.lost_refused = False
        hello = spb.ClientHello(
            version=PROTOCOL_VERSION, caller=caller, callee=callee, identity_key=signer.key_id,
            ephemeral=self._ephemeral.public, random=random(RANDOM_BYTES),
            timestamp_ms=int(now * 1000), suite=suite, psk=psk_id,
            lost_session=lost_session).SerializeToString()
        self.request: bytes = spb.SignedHello(
            hello=hello, signature=signer.sign(CLIENT_CONTEXT + hello, callee),
        ).SerializeToString()

    def finish(self, answer: bytes, verifiers: Mapping[str, Verifier],
               now: float) -> CallerSession:
        """The session the callee's answer opens; UNAUTHENTICATED if the answer is not the
        callee's, to this hello."""
        signed = _signed(answer, "the callee's answer")
        try:
            hello = spb.ServerHello.FromString(signed.hello)
        except DecodeError:
            raise _refused("the callee's answer cannot be parsed") from None
        if hello.version != PROTOCOL_VERSION:
            raise _refused(f"the callee speaks protocol version {hello.version}")
        if hello.client_hello_digest != hashlib.sha256(self.request).digest():
            raise _refused("the answer is not to this hello")
        verifier = verifiers.get(hello.identity_key)
        if verifier is None:
            raise _refused(f"{self.callee!r} answered with a key this node does not accept")
        if not verifier.verify(SERVER_CONTEXT + signed.hello, signed.signature):
            raise _refused(f"the answer is not signed by {self.callee!r}")
        if len(hello.session_id) != SESSION_ID_BYTES or not hello.max_calls > 0:
            raise _refused("the answer names no usable session")
        shared = self._ephemeral.exchange(hello.ephemeral)
        secrets = key_schedule(self.request, answer, shared, self._psk)
        self.lost_refused = hello.lost_session_refused
        return CallerSession(session_id=hello.session_id, callee=self.callee, secrets=secrets,
                             suite=self._suite, psk_id=self._psk_id, signer_id=self._signer_id,
                             lifetime_s=hello.lifetime_s, max_calls=hello.max_calls,
                             opened_at=now, callee_key=hello.identity_key)


# --- the callee's side ---------------------------------------------------------------------


class CallWindow:
    """Call numbers a session has seen: each accepted once, none far below the highest."""

    __slots__ = ("_highest", "_seen")

    def __init__(self) -> None:
        self._highest = 0
        self._seen = 0  # bit i: call number (highest - i) was seen

    def accept(self, number: int) -> bool:
        if number <= 0:
            return False
        if number > self._highest:
            shift = number - self._highest
            # A jump past the whole window forgets it at once (shifting by the jump itself
            # would build an integer of `shift` bits: 512 MiB for a number near 2^32).
            self._seen = (1 if shift >= CALL_WINDOW
                          else ((self._seen << shift) | 1) & ((1 << CALL_WINDOW) - 1))
            self._highest = number
            return True
        offset = self._highest - number
        if offset >= CALL_WINDOW or self._seen >> offset & 1:
            return False
        self._seen |= 1 << offset
        return True


class KeyAgreement:
    """The callee's half of the key schedule, which may wait until its answer is on its way
    (the caller needs the answer before its first call, the callee the keys only when that
    call arrives)."""

    __slots__ = ("_answer", "_ephemeral", "_peer", "_psk", "_request")

    def __init__(self, ephemeral: Ephemeral, peer: bytes, request: bytes, answer: bytes,
                 psk: bytes | None) -> None:
        self._ephemeral, self._peer, self._psk = ephemeral, peer, psk
        self._request, self._answer = request, answer

    def secrets(self) -> SessionSecrets:
        """UNAUTHENTICATED when the caller's ephemeral key gives no shared secret."""
        shared = self._ephemeral.exchange(self._peer)
        return key_schedule(self._request, self._answer, shared, self._psk)


_AGREEING = threading.Lock()  # a session's keys are made once, whichever thread asks first


class CalleeSession:
    """A session as the callee holds it (in memory only). Its keys are made from `secrets`
    or, when the callee answered first, from `agreement` on first use (`complete`)."""

    __slots__ = ("_agreement", "_keys", "_refusal", "_suite", "caller", "clear", "expires_at",
                 "hello_digest", "identity_key", "max_calls", "psk_id", "session_id", "window")

    def __init__(self, *, session_id: bytes, caller: str, identity_key: str, psk_id: str,
                 suite: int, expires_at: float, max_calls: int,
                 secrets: SessionSecrets | None = None, agreement: KeyAgreement | None = None,
                 hello_digest: bytes = b"") -> None:
        self.session_id = session_id
        self.hello_digest = hello_digest  # of the client hello (signed part) that opened it
        self.caller = caller
        self.identity_key = identity_key
        self.psk_id = psk_id
        self.clear = not psk_id
        self.expires_at = expires_at
        self.max_calls = max_calls
        self.window = CallWindow()
        self._suite = suite
        self._keys: tuple[Aead, Aead] | None = None
        self._agreement = agreement
        self._refusal: FastProxyError | None = None
        if secrets is not None:
            self._keys = (Aead(suite, secrets.request_key), Aead(suite, secrets.response_key))
        elif agreement is None:
            raise ValueError("a session needs its secrets or the agreement that makes them")

    def _made(self) -> tuple[Aead, Aead]:
        keys = self._keys
        if keys is not None:
            return keys
        with _AGREEING:
            if self._keys is None and self._refusal is None:
                agreement, self._agreement = self._agreement, None
                assert agreement is not None
                try:
                    secrets = agreement.secrets()
                except FastProxyError as refused:
                    self._refusal = refused
                else:
                    self._keys = (Aead(self._suite, secrets.request_key),
                                  Aead(self._suite, secrets.response_key))
            if self._keys is None:
                assert self._refusal is not None
                raise self._refusal
            return self._keys

    def keys_retired(self, callers: Mapping[str, Mapping[str, Verifier]],
                     psks: Mapping[str, bytes]) -> bool:
        """Whether the caller's identity key or the encryption key this session was opened
        with is no longer accepted (a caller no rule names any more is denied, not this)."""
        keys = callers.get(self.caller)
        return keys is not None and (self.identity_key not in keys
                                     or (bool(self.psk_id) and self.psk_id not in psks))

    def complete(self) -> None:
        """Makes the keys now (for a host to call once the answer is sent); a hello whose
        ephemeral key gives no shared secret is refused at the session's first call."""
        with contextlib.suppress(FastProxyError):
            self._made()

    @property
    def request(self) -> Aead:
        return self._made()[0]

    @property
    def response(self) -> Aead:
        return self._made()[1]


@dataclass(frozen=True, slots=True)
class HelloPolicy:
    """What the callee's policy says about handshakes."""

    service: str
    signer: Signer
    callers: Mapping[str, Mapping[str, Verifier]]  # caller -> its accepted identity keys
    suite: int
    psks: Mapping[str, bytes]  # accepted encryption keys by id; empty: no encryption
    lifetime_s: int = SESSION_LIFETIME_S
    max_calls: int = SESSION_MAX_CALLS
    skew_s: float = HELLO_SKEW_S
    ahead_s: float = CLOCK_AHEAD_S


Defer = Callable[[Callable[[], None]], object]  # runs a callable later, e.g. loop.call_soon


def accept_hello(request: bytes, policy: HelloPolicy, now: float, *,
                 ephemeral: Ephemeral | None = None, random: Random = os.urandom,
                 agree_later: bool = False, spare: SpareEphemeral | None = None,
                 sessions: CalleeSessions | None = None) -> tuple[bytes, CalleeSession]:
    """The answer to a caller's hello and the session it opens; UNAUTHENTICATED when the
    hello is not from a caller this service knows, fresh, and made for it, or (`sessions`)
    opened a session held there already. With `agree_later`, the key agreement is left for
    the host to run once the answer is sent (`session.complete`; a call arriving before
    makes the keys itself), and an ephemeral key giving no shared secret is refused at the
    session's calls rather than here. The answer's X25519 key is `ephemeral`, else taken
    from `spare` (only once the hello passed every check), else made here."""
    signed = _signed(request, "the hello")
    try:
        hello = spb.ClientHello.FromString(signed.hello)
    except DecodeError:
        raise _refused("the hello cannot be parsed") from None
    if hello.version != PROTOCOL_VERSION:
        raise _refused(f"protocol version {hello.version} is not spoken here "
                       f"(this node speaks version {PROTOCOL_VERSION})")
    if hello.callee != policy.service:
        raise _refused(f"the hello is for {hello.callee!r}, not {policy.service!r}")
    verifier = policy.callers.get(hello.caller, {}).get(hello.identity_key)
    if verifier is None or not verifier.verify(CLIENT_CONTEXT + signed.hello,
                                               signed.signature):
        # One answer for an unknown caller, an unknown key and a bad signature: a client
        # learns nothing of who is allowed.
        raise _refused("the hello is not signed by a caller this service knows")
    if not stamped_within(hello.timestamp_ms, now, policy.skew_s, policy.ahead_s):
        raise _refused("the hello is too old or too far ahead")
    if hello.suite != policy.suite:
        raise _refused("the hello names another AEAD suite")
    if bool(hello.psk) != bool(policy.psks) or (hello.psk and hello.psk not in policy.psks):
        raise _refused("the hello names an encryption key this service does not accept")
    if len(hello.ephemeral) != KEY_BYTES:
        raise _refused("the hello's ephemeral key is not 32 bytes")
    # A replay is known by the signed hello itself, which nothing on the way can change.
    hello_digest = hashlib.sha256(signed.hello).digest()
    if sessions is not None and sessions.answered(hello_digest):
        raise _refused("the hello was answered before (replayed)")
    if ephemeral is None:
        ephemeral = spare.take() if spare is not None else Ephemeral()
    session_id = random(SESSION_ID_BYTES)
    answer_hello = spb.ServerHello(
        version=PROTOCOL_VERSION, session_id=session_id, ephemeral=ephemeral.public,
        identity_key=policy.signer.key_id, lifetime_s=policy.lifetime_s,
        max_calls=policy.max_calls, client_hello_digest=hashlib.sha256(request).digest(),
        lost_session_refused=bool(hello.lost_session) and (
            sessions is None or sessions.refuses(hello.lost_session, hello.caller, policy,
                                                 now)),
    ).SerializeToString()
    answer = spb.SignedHello(
        hello=answer_hello,
        signature=policy.signer.sign(SERVER_CONTEXT + answer_hello, hello.caller),
    ).SerializeToString()
    agreement = KeyAgreement(ephemeral, hello.ephemeral, request, answer,
                             policy.psks.get(hello.psk))
    if agree_later:
        secrets: SessionSecrets | None = None
        agreement_left: KeyAgreement | None = agreement
    else:  # keys now, and a failed agreement refuses the hello itself
        secrets, agreement_left = agreement.secrets(), None
    session = CalleeSession(session_id=session_id, caller=hello.caller,
                            identity_key=hello.identity_key, psk_id=hello.psk, suite=policy.suite,
                            expires_at=now + policy.lifetime_s, max_calls=policy.max_calls,
                            secrets=secrets, agreement=agreement_left, hello_digest=hello_digest)
    return answer, session


def stamped_within(timestamp_ms: int, now: float, max_age_s: float, max_ahead_s: float) -> bool:
    """Whether a stamp (milliseconds since the epoch) is at most `max_age_s` old and at most
    `max_ahead_s` ahead of `now`."""
    age = now - timestamp_ms / 1000
    return -max_ahead_s <= age <= max_age_s


class CalleeSessions:
    """The sessions one callee process holds, at most `max_sessions`. Locked: the thread
    pools of a sync gRPC server use it too.

    Sessions are kept per caller, so that no caller can push out another's: when full, the
    least recently used session of the caller holding the most is forgotten (a caller that
    floods handshakes loses its own sessions first). A hello that opened a session still held
    is refused when it comes again (`add`): a replayed hello opens no second session."""

    def __init__(self, max_sessions: int = MAX_SESSIONS) -> None:
        self._sessions: dict[bytes, CalleeSession] = {}
        self._by_caller: dict[str, OrderedDict[bytes, CalleeSession]] = {}
        self._hellos: dict[bytes, bytes] = {}  # hello digest -> the session it opened
        self._max = max_sessions
        self._lock = threading.Lock()
        self._pid = os.getpid()

    def _forked(self) -> None:
        """In a process forked from the one that opened them, the sessions are forgotten
        (call with the lock held): the parent and the child would each accept the same call
        numbers, so a call replayed to the other would be taken, and its answer sealed
        under a (key, nonce) pair already used."""
        if os.getpid() != self._pid:
            self._pid = os.getpid()
            self._sessions.clear()
            self._by_caller.clear()
            self._hellos.clear()

    def refuses(self, session_id: bytes, caller: str, policy: HelloPolicy, now: float) -> bool:
        """Whether a call of `caller` in `session_id` would be refused by this process now:
        no such session of that caller, expired, or its keys no longer accepted."""
        with self._lock:
            self._forked()
            session = self._sessions.get(session_id)
        if session is None or session.caller != caller or now >= session.expires_at:
            return True
        # retired keys: refused as unknown; a caller no rule names: denied before forwarding
        return (session.keys_retired(policy.callers, policy.psks)
                or caller not in policy.callers)

    def answered(self, hello_digest: bytes) -> bool:
        """Whether a session this process holds was opened by that hello."""
        with self._lock:
            self._forked()
            return hello_digest in self._hellos

    def __len__(self) -> int:
        return len(self._sessions)

    def held_by(self, caller: str) -> int:
        return len(self._by_caller.get(caller, ()))

    def add(self, session: CalleeSession) -> None:
        """Keeps `session`; UNAUTHENTICATED when its hello already opened a session held
        here (a replay: the caller made a new hello for each handshake)."""
        with self._lock:
            self._forked()
            if session.hello_digest and session.hello_digest in self._hellos:
                raise _refused("the hello was answered before (replayed)")
            self._sessions[session.session_id] = session
            self._by_caller.setdefault(session.caller, OrderedDict())[
                session.session_id] = session
            if session.hello_digest:
                self._hellos[session.hello_digest] = session.session_id
            while len(self._sessions) > self._max:
                self._drop(self._largest_holder(session.caller))

    def _largest_holder(self, newcomer: str) -> str:
        """The caller holding the most sessions (the newcomer's caller among equals)."""
        return max(self._by_caller, key=lambda caller: (len(self._by_caller[caller]),
                                                        caller == newcomer))

    def _drop(self, caller: str, session_id: bytes | None = None) -> None:
        """Forgets `session_id` of `caller` (its least recently used when None)."""
        held = self._by_caller[caller]
        if session_id is None:
            session_id, session = held.popitem(last=False)
        else:
            session = held.pop(session_id)
        if not held:
            del self._by_caller[caller]
        del self._sessions[session_id]
        if self._hellos.get(session.hello_digest) == session_id:
            del self._hellos[session.hello_digest]

    def find(self, session_id: bytes, now: float) -> CalleeSession | None:
        """The live session of that id (an expired one is forgotten here)."""
        with self._lock:
            self._forked()
            session = self._sessions.get(session_id)
            if session is None:
                return None
            if now >= session.expires_at:
                self._drop(session.caller, session_id)
                return None
            self._by_caller[session.caller].move_to_end(session_id)
            return session

    def take_call(self, session: CalleeSession, number: int) -> bool:
        """Whether `number` is new in `session` (and within its limits)."""
        if number > session.max_calls:
            return False
        with self._lock:
            return session.window.accept(number)

    def forget(self, session_id: bytes) -> None:
        with self._lock:
            session = self._sessions.get(session_id)
            if session is not None:
                self._drop(session.caller, session_id)
