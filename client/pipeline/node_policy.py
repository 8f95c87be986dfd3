"""A node's compiled policy, and the state that outlives policy swaps.

`NodePolicy.from_snapshot` turns a `PolicySnapshot` into immutable lookup tables once:
identity keys (signers and verifiers), encryption keys (the PSKs of protocol version 2),
routes by gRPC service name, callers by name, allow rules compiled. A host keeps the current
`NodePolicy` in one reference and swaps it whole; each call reads that reference once, so a
call sees one policy, never a mix.

`NodeState` holds what must survive a swap: the callee's sessions (with their call-number
windows) and the token buckets.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass

from fastproxy.pipeline.authz import AllowList, CompiledAllowRule, MethodMatcher, rule_path
from fastproxy.pipeline.compression import Compressor
from fastproxy.pipeline.handshake import (
    CLOCK_AHEAD_S,
    MAX_SESSIONS,
    CalleeSessions,
    CallerSession,
    Defer,
    HelloPolicy,
)
from fastproxy.pipeline.keys import Signer, Verifier
from fastproxy.pipeline.metadata import SECRET_KEYS, Metadata
from fastproxy.pipeline.ratelimit import TokenBucket
from fastproxy.pipeline.reasons import FastProxyError, Reason
from fastproxy.pipeline.stages import (
    DEFAULT_CLOCK_WINDOW_S,
    DEFAULT_MAX_MESSAGE_BYTES,
    CalleeSide,
    CallerSide,
    Destination,
    InboundCall,
    OutboundCall,
)
from fastproxy.policy.model import RateLimit, RetryPolicy
from fastproxy.v1 import policy_pb2 as pb
from fastproxy.v1 import session_pb2 as spb

_SUITE_OF_KEY = {
    pb.KEY_TYPE_AES_256_GCM: spb.AEAD_SUITE_AES_256_GCM,
    pb.KEY_TYPE_CHACHA20_POLY1305: spb.AEAD_SUITE_CHACHA20_POLY1305,
}
MAX_BUCKETS = 100_000


class NodePolicyError(ValueError):
    """An inconsistent snapshot: the node NACKs it with this message and keeps its policy."""


class NodeState:
    """Mutable state shared by every policy a node runs: the sessions this node accepted
    (callee side) and token buckets keyed by (service, caller, rule).

    Locked, so one state may be shared by asyncio code and by the thread pools of
    synchronous gRPC servers alike; a lock is held for a few dict operations.
    """

    def __init__(self, clock_window_s: float = DEFAULT_CLOCK_WINDOW_S,
                 max_sessions: int = MAX_SESSIONS) -> None:
        self.clock_window_s = clock_window_s
        self.sessions = CalleeSessions(max_sessions)
        self._buckets: dict[tuple[object, ...], TokenBucket] = {}
        self._lock = threading.Lock()

    def take_token(self, key: tuple[object, ...], limit: RateLimit, now: float) -> bool:
        with self._lock:
            bucket = self._buckets.get(key)
            if bucket is None:
                if len(self._buckets) >= MAX_BUCKETS:  # rules gone from old policies
                    del self._buckets[next(iter(self._buckets))]
                bucket = self._buckets[key] = TokenBucket(limit.rps, limit.burst, now)
            elif bucket.rps != limit.rps or bucket.burst != limit.burst:
                bucket.reconfigure(limit.rps, limit.burst)
            return bucket.try_take(now)


@dataclass(frozen=True, slots=True)
class _Keys:
    """Compiled key material of a snapshot, by key name."""

    psk: dict[str, tuple[int, bytes]]  # encryption keys: (suite, secret)
    signing: dict[str, pb.Key]  # own identity keys, as sent
    verifying: dict[str, Verifier]
    names: frozenset[str]


class NodePolicy:
    """The policy one node runs. Immutable; build with `from_snapshot`."""

    __slots__ = ("_callee", "_caller", "revision", "role", "service")

    revision: int
    service: str
    role: int
    _caller: CallerSide | None
    _callee: CalleeSide | None

    def __init__(self, *, revision: int, service: str, role: int,
                 caller: CallerSide | None, callee: CalleeSide | None) -> None:
        self.revision = revision
        self.service = service
        self.role = role
        self._caller = caller
        self._callee = callee

    def __repr__(self) -> str:
        return (f"NodePolicy(revision={self.revision}, service={self.service!r}, "
                f"role={pb.Role.Name(self.role)})")

    @classmethod
    def from_snapshot(cls, snapshot: pb.PolicySnapshot, *,
                      max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                      clock_window_s: float = DEFAULT_CLOCK_WINDOW_S,
                      clock_ahead_s: float = CLOCK_AHEAD_S) -> NodePolicy:
        """Compiles a snapshot; `NodePolicyError` names what is inconsistent. A callee
        refuses hellos and calls stamped more than `clock_window_s` ago or more than
        `clock_ahead_s` ahead of its clock."""
        if not snapshot.node_service:
            raise NodePolicyError("snapshot names no node service")
        role = snapshot.role
        me = snapshot.node_service
        keys = _compile_keys(snapshot.keys, me)
        services: dict[str, pb.Service] = {}
        for service in snapshot.services:
            if service.name in services:
                raise NodePolicyError(f"service {service.name!r} appears twice")
            services[service.name] = service
        caller_side: CallerSide | None = None
        callee_side: CalleeSide | None = None
        if role == pb.ROLE_IN:
            callee_side = _compile_callee(me, services, keys, max_message_bytes,
                                          clock_window_s, clock_ahead_s, snapshot.revision)
        elif role in (pb.ROLE_OUT, pb.ROLE_CLIENT):
            caller_side = _compile_caller(me, services, keys, max_message_bytes,
                                          clock_window_s, snapshot)
        else:
            raise NodePolicyError(f"snapshot has no valid role ({role})")
        return cls(revision=snapshot.revision, service=me, role=role,
                   caller=caller_side, callee=callee_side)

    # --- the caller's side -----------------------------------------------------------

    @property
    def caller(self) -> CallerSide:
        """NO_ROUTE for a node that makes no calls."""
        if self._caller is None:
            raise FastProxyError(Reason.NO_ROUTE, f"node of {self.service!r} makes no calls")
        return self._caller

    def route(self, method: str) -> Destination:
        """The destination of `method` ("/pkg.Service/Method"): NO_ROUTE when none serves its
        gRPC service. `endpoints` may be empty: picking one is the host's part."""
        return self.caller.route(method)

    def outbound(self, destination: Destination, session: CallerSession, method: str,
                 metadata: Metadata, now: float) -> OutboundCall:
        """A call in `session` (opened with `caller.handshake` and the answer)."""
        return OutboundCall(self.caller, destination, session, method, metadata, now)

    # --- the callee's side -----------------------------------------------------------

    @property
    def callee(self) -> CalleeSide:
        if self._callee is None:
            raise FastProxyError(Reason.UNAVAILABLE,
                                 f"node of {self.service!r} does not guard a service")
        return self._callee

    def accept(self, hello: bytes, now: float, state: NodeState,
               defer: Defer | None = None) -> bytes:
        """The answer to a caller's handshake (the session is kept in `state`); `defer`:
        see `CalleeSide.accept`."""
        return self.callee.accept(hello, now, state, defer=defer)

    def inbound(self, method: str, metadata: Metadata, now: float,
                state: NodeState) -> InboundCall:
        """Opens the call's CALL record (session, replay, metadata), authorizes the caller
        for the method (DENIED) and spends its rate limit (RATE_LIMITED), before any
        message."""
        return InboundCall.admit(self.callee, method, metadata, now, state)

    @property
    def routes(self) -> dict[str, str]:
        """gRPC service name -> destination service (caller side; empty otherwise)."""
        if self._caller is None:
            return {}
        return {name: dest.name for name, dest in self._caller.routes.items()}


# --- compilation --------------------------------------------------------------------------


def _compile_keys(entries: Sequence[pb.Key], me: str) -> _Keys:
    psk: dict[str, tuple[int, bytes]] = {}
    signing: dict[str, pb.Key] = {}
    verifying: dict[str, Verifier] = {}
    names: set[str] = set()
    for key in entries:
        if key.name in names:
            raise NodePolicyError(f"key {key.name!r} appears twice")
        names.add(key.name)
        try:
            _compile_key(key, me, psk, signing, verifying)
        except ValueError as exc:
            message = str(exc)
            prefix = f"key {key.name!r}"
            raise NodePolicyError(message if message.startswith(prefix)
                                  else f"{prefix}: {message}") from None
    return _Keys(psk, signing, verifying, frozenset(names))


def _compile_key(key: pb.Key, me: str, psk: dict[str, tuple[int, bytes]],
                 signing: dict[str, pb.Key], verifying: dict[str, Verifier]) -> None:
    if key.type in _SUITE_OF_KEY:
        if key.secret:
            if len(key.secret) != 32:
                raise ValueError("an encryption key must be 32 bytes")
            psk[key.name] = (_SUITE_OF_KEY[key.type], key.secret)
    elif key.type == pb.KEY_TYPE_HMAC_SHA256:
        if len(key.secret) < 16:
            raise ValueError("an hmac-sha256 key must be at least 16 bytes")
        if key.pair_signer:  # another service's identity: the pair key towards us
            if key.pair_peer != me:
                raise ValueError(f"pair key for {key.pair_peer!r}, not this node's service")
            verifying[key.name] = Verifier(key.name, hmac_key=key.secret)
        else:
            signing[key.name] = key
    elif key.type == pb.KEY_TYPE_ED25519:
        if len(key.public_key) != 32:
            raise ValueError("an ed25519 public key must be 32 bytes")
        verifying[key.name] = Verifier(key.name, ed25519_public=key.public_key)
        if key.secret:
            if len(key.secret) != 32:
                raise ValueError("an ed25519 private seed must be 32 bytes")
            signing[key.name] = key
    else:
        raise ValueError(f"unknown key type {key.type}")


def _ref_names(ref: pb.KeyRef) -> tuple[str, ...]:
    return (ref.key, *(name for name in ref.accept if name != ref.key))


def _signer(service: pb.Service, keys: _Keys) -> Signer:
    if not service.HasField("identity") or not service.identity.key:
        raise NodePolicyError(f"service {service.name!r} has no identity key")
    name = service.identity.key
    key = keys.signing.get(name)
    if key is None:
        if name in keys.names:
            raise NodePolicyError(
                f"service {service.name!r}: identity key {name!r} comes without its private half")
        raise NodePolicyError(_missing(service.name, "identity", name, keys))
    if key.type == pb.KEY_TYPE_ED25519:
        return Signer(name, service.name, ed25519_seed=key.secret)
    return Signer(name, service.name, hmac_secret=key.secret)


def _verifiers(service: pb.Service, keys: _Keys, me: str) -> dict[str, Verifier]:
    """The keys that verify `service`'s handshakes to this node's service `me`: public keys,
    pair keys, or (for `me` itself) derived from its own secret."""
    if not service.HasField("identity") or not service.identity.key:
        raise NodePolicyError(f"service {service.name!r} has no identity key")
    out: dict[str, Verifier] = {}
    for name in _ref_names(service.identity):
        verifier = keys.verifying.get(name)
        if verifier is None and service.name == me and name in keys.signing:
            key = keys.signing[name]
            verifier = Signer(name, me, hmac_secret=key.secret).verifier_for(me)
        if verifier is None:
            raise NodePolicyError(_missing(service.name, "identity", name, keys))
        out[name] = verifier
    return out


def _encryption(service: pb.Service, keys: _Keys
                ) -> tuple[int, str, bytes | None, dict[str, bytes]]:
    """(suite, current PSK id, its secret, every accepted PSK) of a service."""
    if not service.HasField("encrypt") or not service.encrypt.key:
        return spb.AEAD_SUITE_AES_256_GCM, "", None, {}
    accepted: dict[str, bytes] = {}
    suite = 0
    for name in _ref_names(service.encrypt):
        entry = keys.psk.get(name)
        if entry is None:
            raise NodePolicyError(_missing(service.name, "encrypt", name, keys))
        if name == service.encrypt.key:
            suite = entry[0]
        accepted[name] = entry[1]
    return suite, service.encrypt.key, accepted[service.encrypt.key], accepted


def _missing(service: str, field: str, name: str, keys: _Keys) -> str:
    if name in keys.names:
        return f"service {service!r}: {field} key {name!r} has the wrong type or no secret"
    return f"service {service!r}: {field} key {name!r} is not in the snapshot"


def _compressor(service: pb.Service) -> Compressor | None:
    if not service.HasField("compress") or not service.compress.algorithm:
        return None
    try:
        return Compressor(service.compress.algorithm, service.compress.min_bytes)
    except ValueError as exc:
        raise NodePolicyError(f"service {service.name!r}: {exc}") from None


def _retry(service: pb.Service) -> RetryPolicy | None:
    if not service.HasField("retry"):
        return None
    retry = service.retry
    return RetryPolicy(retry.max_attempts, retry.initial_backoff_ms, retry.max_backoff_ms)


def _secret_keys(service: pb.Service) -> frozenset[str]:
    return SECRET_KEYS | frozenset(name.lower() for name in service.secret_metadata)


def _compile_caller(me: str, services: dict[str, pb.Service], keys: _Keys,
                    max_message_bytes: int, window_s: float,
                    snapshot: pb.PolicySnapshot) -> CallerSide:
    own = services.get(me)
    destinations = [s for s in services.values() if s.grpc_services]
    others = {grpc_service: other.name for other in snapshot.others
              for grpc_service in other.grpc_services}
    if not destinations:
        return CallerSide(me, None, {}, window_s, max_message_bytes, others, snapshot.revision)
    if own is None:
        raise NodePolicyError(f"snapshot routes calls but has no entry for {me!r}")
    signer = _signer(own, keys)
    routes: dict[str, Destination] = {}
    for service in destinations:
        suite, psk_id, psk, _ = _encryption(service, keys)
        destination = Destination(
            name=service.name, endpoints=tuple(service.endpoints),
            timeout_ms=service.timeout_ms, retry=_retry(service),
            verifiers=_verifiers(service, keys, me), suite=suite, psk_id=psk_id, psk=psk,
            compressor=_compressor(service), secret_keys=_secret_keys(service),
        )
        for grpc_service in service.grpc_services:
            other = routes.get(grpc_service)
            if other is not None:
                raise NodePolicyError(f"gRPC service {grpc_service!r} is routed to both "
                                      f"{other.name!r} and {service.name!r}")
            routes[grpc_service] = destination
    return CallerSide(me, signer, routes, window_s, max_message_bytes, others,
                      snapshot.revision)


def _compile_callee(me: str, services: dict[str, pb.Service], keys: _Keys,
                    max_message_bytes: int, window_s: float, ahead_s: float,
                    revision: int) -> CalleeSide:
    own = services.get(me)
    if own is None:  # a service no rule concerns: every caller is unknown, hence refused
        return CalleeSide(me, {}, AllowList((), me), 0, max_message_bytes, None,
                          window_s=window_s, ahead_s=ahead_s, revision=revision)
    allow = AllowList(tuple(_compile_rule(me, i, rule) for i, rule in enumerate(own.allow)),
                      me, own.audit)
    callers = {service.name: _verifiers(service, keys, me) for service in services.values()
               if service.HasField("identity") and service.identity.key}
    suite, _, _, accepted = _encryption(own, keys)
    hello = HelloPolicy(service=me, signer=_signer(own, keys), callers=callers, suite=suite,
                        psks=accepted, skew_s=window_s, ahead_s=ahead_s)
    return CalleeSide(me, callers, allow, own.timeout_ms, max_message_bytes, hello,
                      compressor=_compressor(own), secret_keys=_secret_keys(own),
                      window_s=window_s, ahead_s=ahead_s, revision=revision)


def _compile_rule(service: str, index: int, rule: pb.AllowRule) -> CompiledAllowRule:
    where = f"service {service!r} allow[{index}]"
    if not rule.caller:
        raise NodePolicyError(f"{where}: names no caller")
    try:
        methods = MethodMatcher.compile(rule.methods)
    except ValueError as exc:
        raise NodePolicyError(f"{where}: {exc}") from None
    limit: RateLimit | None = None
    if rule.HasField("rate_limit"):
        if not rule.rate_limit.rps > 0 or rule.rate_limit.burst < 1:
            raise NodePolicyError(f"{where}: rate limit needs rps > 0 and burst >= 1")
        limit = RateLimit(rule.rate_limit.rps, rule.rate_limit.burst)
    return CompiledAllowRule(index, rule.caller, tuple(rule.methods), methods, limit,
                             rule.audit, rule_path(service, index))
