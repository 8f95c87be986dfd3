"""A node's compiled policy, and the state that outlives policy swaps.

`NodePolicy.from_snapshot` turns a `PolicySnapshot` into immutable lookup tables once: key
objects (AEAD, HMAC, Ed25519) built, routes by gRPC service name, callers by name, allow
rules compiled. A host keeps the current `NodePolicy` in one reference and swaps it whole;
each call reads that reference once, so a call sees one policy, never a mix.

`NodeState` holds what must survive a swap: token buckets and the replay cache.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass

from fastproxy.pipeline.authz import AllowList, CompiledAllowRule, MethodMatcher
from fastproxy.pipeline.compression import Compressor
from fastproxy.pipeline.envelope import AeadKey, SigningKey, VerifyKey
from fastproxy.pipeline.ratelimit import TokenBucket
from fastproxy.pipeline.reasons import FastProxyError, Reason
from fastproxy.pipeline.replay import ReplayCache
from fastproxy.pipeline.stages import (
    DEFAULT_CLOCK_WINDOW_S,
    DEFAULT_MAX_MESSAGE_BYTES,
    CalleeSide,
    CallerSide,
    Destination,
    InboundCall,
    KnownCaller,
    MessagePipeline,
    OutboundCall,
)
from fastproxy.policy.model import RateLimit, RetryPolicy
from fastproxy.v1 import envelope_pb2 as epb
from fastproxy.v1 import policy_pb2 as pb

_ALGORITHM_OF_KEY = {
    pb.KEY_TYPE_AES_256_GCM: epb.ALGORITHM_AES_256_GCM,
    pb.KEY_TYPE_CHACHA20_POLY1305: epb.ALGORITHM_CHACHA20_POLY1305,
}
_SIGNATURE_OF_KEY = {
    pb.KEY_TYPE_HMAC_SHA256: epb.SIGNATURE_HMAC_SHA256,
    pb.KEY_TYPE_ED25519: epb.SIGNATURE_ED25519,
}
MAX_BUCKETS = 100_000


class NodePolicyError(ValueError):
    """An inconsistent snapshot: the node NACKs it with this message and keeps its policy."""


class NodeState:
    """Mutable state shared by every policy a node runs: token buckets keyed by
    (service, caller, rule) and the replay cache of call-header nonces.

    A lock guards each update, so one state may be shared by asyncio code and by the
    thread pools of synchronous gRPC servers alike; it is held for a few dict operations.
    """

    def __init__(self, replay_window_s: float = 30.0, replay_cache_size: int = 100_000) -> None:
        self.replay_window_s = replay_window_s
        self._replay = ReplayCache(replay_window_s, replay_cache_size)
        self._buckets: dict[tuple[object, ...], TokenBucket] = {}
        self._lock = threading.Lock()

    def remember_call(self, nonce: bytes, timestamp_ms: int, now: float) -> None:
        """UNAUTHENTICATED for a call header outside the window or seen before."""
        with self._lock:
            self._replay.check_and_remember(nonce, timestamp_ms, now)

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

    aead: dict[str, AeadKey]
    signing: dict[str, SigningKey]
    verifying: dict[str, VerifyKey]
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
                      clock_window_s: float = DEFAULT_CLOCK_WINDOW_S) -> NodePolicy:
        """Compiles a snapshot; `NodePolicyError` names what is inconsistent."""
        if not snapshot.node_service:
            raise NodePolicyError("snapshot names no node service")
        role = snapshot.role
        keys = _compile_keys(snapshot.keys)
        services: dict[str, pb.Service] = {}
        for service in snapshot.services:
            if service.name in services:
                raise NodePolicyError(f"service {service.name!r} appears twice")
            services[service.name] = service
        caller_side: CallerSide | None = None
        callee_side: CalleeSide | None = None
        if role == pb.ROLE_IN:
            callee_side = _compile_callee(snapshot.node_service, services, keys,
                                          max_message_bytes)
        elif role in (pb.ROLE_OUT, pb.ROLE_CLIENT):
            caller_side = _compile_caller(snapshot.node_service, services, keys,
                                          max_message_bytes, clock_window_s)
        else:
            raise NodePolicyError(f"snapshot has no valid role ({role})")
        return cls(revision=snapshot.revision, service=snapshot.node_service, role=role,
                   caller=caller_side, callee=callee_side)

    def outbound(self, method: str, now: float) -> OutboundCall:
        """A call to `method` ("/pkg.Service/Method"): NO_ROUTE when no destination serves
        its gRPC service. `endpoints` may be empty: picking one is the host's part."""
        if self._caller is None:
            raise FastProxyError(Reason.NO_ROUTE, f"node of {self.service!r} makes no calls")
        return OutboundCall.admit(self._caller, method, now)

    def inbound(self, method: str, metadata: Sequence[tuple[str, str | bytes]], now: float,
                state: NodeState) -> InboundCall:
        """Authenticates the call header, refuses replays, authorizes the caller for the
        method (DENIED) and spends its rate limit (RATE_LIMITED), before any message."""
        if self._callee is None:
            raise FastProxyError(Reason.UNAVAILABLE,
                                 f"node of {self.service!r} does not guard a service")
        return InboundCall.admit(self._callee, method, metadata, now, state)

    @property
    def routes(self) -> dict[str, str]:
        """gRPC service name -> destination service (caller side; empty otherwise)."""
        if self._caller is None:
            return {}
        return {name: dest.name for name, dest in self._caller.routes.items()}


# --- compilation --------------------------------------------------------------------------


def _compile_keys(entries: Sequence[pb.Key]) -> _Keys:
    aead: dict[str, AeadKey] = {}
    signing: dict[str, SigningKey] = {}
    verifying: dict[str, VerifyKey] = {}
    names: set[str] = set()
    for key in entries:
        if key.name in names:
            raise NodePolicyError(f"key {key.name!r} appears twice")
        names.add(key.name)
        try:
            if key.type in _ALGORITHM_OF_KEY:
                if key.secret:
                    aead[key.name] = AeadKey(key.name, _ALGORITHM_OF_KEY[key.type], key.secret)
            elif key.type == pb.KEY_TYPE_HMAC_SHA256:
                if len(key.secret) < 16:
                    raise ValueError("an hmac-sha256 key must be at least 16 bytes")
                signature = _SIGNATURE_OF_KEY[key.type]
                signing[key.name] = SigningKey(key.name, signature, key.secret)
                verifying[key.name] = VerifyKey(key.name, signature, key.secret)
            elif key.type == pb.KEY_TYPE_ED25519:
                _compile_ed25519(key, signing, verifying)
            else:
                raise ValueError(f"unknown key type {key.type}")
        except ValueError as exc:
            message = str(exc)
            prefix = f"key {key.name!r}"
            raise NodePolicyError(message if message.startswith(prefix)
                                  else f"{prefix}: {message}") from None
    return _Keys(aead, signing, verifying, frozenset(names))


def _compile_ed25519(key: pb.Key, signing: dict[str, SigningKey],
                     verifying: dict[str, VerifyKey]) -> None:
    signature = epb.SIGNATURE_ED25519
    if key.secret:
        if len(key.secret) != 32:
            raise ValueError("an ed25519 private seed must be 32 bytes")
        signer = SigningKey(key.name, signature, key.secret)
        signing[key.name] = signer
    if len(key.public_key) != 32:
        raise ValueError("an ed25519 public key must be 32 bytes")
    verifying[key.name] = VerifyKey(key.name, signature, key.public_key)


def _ref_names(ref: pb.KeyRef) -> tuple[str, ...]:
    return (ref.key, *(name for name in ref.accept if name != ref.key))


def _verifiers(service: pb.Service, keys: _Keys) -> dict[str, VerifyKey]:
    if not service.HasField("identity") or not service.identity.key:
        raise NodePolicyError(f"service {service.name!r} has no identity key")
    out: dict[str, VerifyKey] = {}
    for name in _ref_names(service.identity):
        key = keys.verifying.get(name)
        if key is None:
            raise NodePolicyError(_missing(service.name, "identity", name, keys))
        out[name] = key
    return out


def _signer(service: pb.Service, keys: _Keys) -> SigningKey:
    if not service.HasField("identity") or not service.identity.key:
        raise NodePolicyError(f"service {service.name!r} has no identity key")
    name = service.identity.key
    signer = keys.signing.get(name)
    if signer is None:
        if name in keys.names and name in keys.verifying:
            raise NodePolicyError(
                f"service {service.name!r}: identity key {name!r} comes without its private half")
        raise NodePolicyError(_missing(service.name, "identity", name, keys))
    return signer


def _encryption(service: pb.Service, keys: _Keys) -> tuple[AeadKey | None, dict[str, AeadKey]]:
    if not service.HasField("encrypt") or not service.encrypt.key:
        return None, {}
    accepted: dict[str, AeadKey] = {}
    for name in _ref_names(service.encrypt):
        key = keys.aead.get(name)
        if key is None:
            raise NodePolicyError(_missing(service.name, "encrypt", name, keys))
        accepted[name] = key
    return accepted[service.encrypt.key], accepted


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


def _compile_caller(own_name: str, services: dict[str, pb.Service], keys: _Keys,
                    max_message_bytes: int, window_s: float) -> CallerSide:
    own = services.get(own_name)
    destinations = [s for s in services.values() if s.grpc_services]
    if not destinations:
        return CallerSide(own_name, None, {}, window_s, max_message_bytes)
    if own is None:
        raise NodePolicyError(f"snapshot routes calls but has no entry for {own_name!r}")
    signer = _signer(own, keys)
    routes: dict[str, Destination] = {}
    for service in destinations:
        sealing, accepted = _encryption(service, keys)
        messages = MessagePipeline.standard(
            compressor=_compressor(service), sealing=sealing, accepted=accepted,
            signer=signer, verifiers=_verifiers(service, keys),
        )
        destination = Destination(
            name=service.name, endpoints=tuple(service.endpoints),
            timeout_ms=service.timeout_ms, retry=_retry(service), messages=messages,
        )
        for grpc_service in service.grpc_services:
            other = routes.get(grpc_service)
            if other is not None:
                raise NodePolicyError(f"gRPC service {grpc_service!r} is routed to both "
                                      f"{other.name!r} and {service.name!r}")
            routes[grpc_service] = destination
    return CallerSide(own_name, signer, routes, window_s, max_message_bytes)


def _compile_callee(own_name: str, services: dict[str, pb.Service], keys: _Keys,
                    max_message_bytes: int) -> CalleeSide:
    own = services.get(own_name)
    if own is None:  # a service no rule concerns: every caller is unknown, hence denied
        return CalleeSide(own_name, {}, {}, AllowList(()), 0, max_message_bytes)
    signer = _signer(own, keys)
    sealing, accepted = _encryption(own, keys)
    compressor = _compressor(own)
    allow = AllowList(tuple(_compile_rule(own_name, i, rule) for i, rule in enumerate(own.allow)))
    callers: dict[str, KnownCaller] = {}
    for service in services.values():
        if not service.HasField("identity") or not service.identity.key:
            continue
        verifiers = _verifiers(service, keys)
        callers[service.name] = KnownCaller(
            name=service.name, verifiers=verifiers,
            messages=MessagePipeline.standard(
                compressor=compressor, sealing=sealing, accepted=accepted,
                signer=signer, verifiers=verifiers,
            ),
        )
    caller_keys = {key_id: key for caller in callers.values()
                   for key_id, key in caller.verifiers.items()}
    return CalleeSide(own_name, callers, caller_keys, allow, own.timeout_ms, max_message_bytes)


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
    return CompiledAllowRule(index, rule.caller, tuple(rule.methods), methods, limit)
