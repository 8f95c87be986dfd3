"""Builds the snapshot that concerns one node: only what its role and service need.

- An in-node of service S gets S's own keys (identity to sign its handshakes, encryption),
  S's allow rules, limits and timeout, and for each caller S admits the caller's identity
  key as S may hold it: the public half for ed25519, for HMAC the key of the pair
  (caller -> S) derived from the caller's secret, never the secret (docs/protocol.md, 2).
- An out- or client-node of service C gets C's own identity key, and for each service D
  with a rule admitting C: D's routes, endpoints, encryption keys, identity key (public half
  for ed25519, the pair key D -> C for HMAC), compression, timeout and retry policy.
- An app-node of service C (the client SDK sending through an out-proxy) gets, for each
  service C may call, only its routes, timeout and retry policy: no key, no endpoint.
- Out-, client- and app-nodes also get, for every other service serving gRPC services, its
  name and gRPC service names (`others`): they answer `denied` for those themselves.
- A node of a service no rule concerns gets an empty snapshot and no secret.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence

from fastproxy.pipeline.keys import pair_key
from fastproxy.policy.model import (
    KeyRef,
    KeySpec,
    KeyType,
    Mode,
    Policy,
    RetryPolicy,
    ServiceSpec,
)
from fastproxy.v1 import policy_pb2 as pb

KEY_TYPE_TO_PB = {
    KeyType.AES_256_GCM: pb.KEY_TYPE_AES_256_GCM,
    KeyType.CHACHA20_POLY1305: pb.KEY_TYPE_CHACHA20_POLY1305,
    KeyType.HMAC_SHA256: pb.KEY_TYPE_HMAC_SHA256,
    KeyType.ED25519: pb.KEY_TYPE_ED25519,
}


def scope_snapshot(
    policy: Policy,
    role: pb.Role.ValueType,
    service: str,
    registered: Mapping[str, Sequence[str]] | None = None,
) -> pb.PolicySnapshot:
    """The snapshot for a node (revision left at 0: the caller stamps it)."""
    snapshot = pb.PolicySnapshot(node_service=service, role=role)
    own = policy.services.get(service)
    if own is None:
        return snapshot
    keys = _KeyCollector(policy)
    if role == pb.ROLE_IN:
        _scope_in(policy, own, snapshot, keys)
    elif role in (pb.ROLE_OUT, pb.ROLE_CLIENT):
        _scope_out(policy, own, snapshot, keys, registered or {})
    elif role == pb.ROLE_APP:
        _scope_app(policy, service, snapshot)
    else:
        raise ValueError(f"unknown role {role}")
    snapshot.keys.extend(keys.collected())
    return snapshot


def _scope_in(policy: Policy, own: ServiceSpec, snapshot: pb.PolicySnapshot,
              keys: _KeyCollector) -> None:
    """The guarded service's own entry and keys, and each caller's identity."""
    if not own.allow and own.mode is not Mode.AUDIT:
        return
    snapshot.services.append(_service_pb(own, with_rules=True))
    keys.add(own.identity, private=True)
    keys.add(own.encrypt, private=True)
    for caller in policy.callers_of(own):
        if caller == own.name:
            continue
        spec = policy.services[caller]
        snapshot.services.append(pb.Service(name=caller, identity=_ref_pb(spec.identity)))
        keys.add(spec.identity, private=False, owner=caller, peer=own.name)


def _scope_out(policy: Policy, own: ServiceSpec, snapshot: pb.PolicySnapshot,
               keys: _KeyCollector, registered: Mapping[str, Sequence[str]]) -> None:
    """The caller's own identity, and each service it may call: routes, endpoints (static
    and registered), keys, limits."""
    callees = policy.callees_of(own.name)
    _others(policy, callees, snapshot)
    if not callees:
        return
    keys.add(own.identity, private=True)
    if own.name not in callees:
        snapshot.services.append(pb.Service(name=own.name, identity=_ref_pb(own.identity)))
    for name in callees:
        spec = policy.services[name]
        entry = _service_pb(spec, with_rules=False)
        for endpoint in registered.get(name, ()):
            if endpoint not in entry.endpoints:
                entry.endpoints.append(endpoint)
        snapshot.services.append(entry)
        keys.add(spec.encrypt, private=True)
        keys.add(spec.identity, private=name == own.name, owner=name, peer=own.name)


def _others(policy: Policy, callees: Sequence[str], snapshot: pb.PolicySnapshot) -> None:
    """Services the node may not call: their names and gRPC services only, so that the
    node itself answers `denied` for them (and `no_route` only for what nobody serves)."""
    for name, spec in sorted(policy.services.items()):
        if spec.grpc_services and name not in callees:
            snapshot.others.append(pb.OtherService(name=name, grpc_services=spec.grpc_services))


def _scope_app(policy: Policy, service: str, snapshot: pb.PolicySnapshot) -> None:
    """Through an out-proxy: routes, timeouts and retry policies only, no key at all."""
    _others(policy, policy.callees_of(service), snapshot)
    for name in policy.callees_of(service):
        spec = policy.services[name]
        entry = pb.Service(name=name, grpc_services=spec.grpc_services,
                           timeout_ms=spec.timeout_ms)
        if spec.retry is not None:
            entry.retry.CopyFrom(_retry_pb(spec.retry))
        snapshot.services.append(entry)


def content_hash(snapshot: pb.PolicySnapshot) -> str:
    """SHA-256 of what a snapshot says, its revision aside: equal hashes, nothing to push."""
    unstamped = pb.PolicySnapshot()
    unstamped.CopyFrom(snapshot)
    unstamped.revision = 0
    return hashlib.sha256(unstamped.SerializeToString(deterministic=True)).hexdigest()


def _service_pb(spec: ServiceSpec, *, with_rules: bool) -> pb.Service:
    entry = pb.Service(
        name=spec.name,
        grpc_services=spec.grpc_services,
        endpoints=spec.endpoints,
        timeout_ms=spec.timeout_ms,
        secret_metadata=spec.secret_metadata,
    )
    if spec.identity is not None:
        entry.identity.CopyFrom(_ref_pb(spec.identity))
    if spec.encrypt is not None:
        entry.encrypt.CopyFrom(_ref_pb(spec.encrypt))
    if spec.compress is not None:
        entry.compress.algorithm = spec.compress.algorithm
        entry.compress.min_bytes = spec.compress.min_bytes
    if spec.retry is not None:
        entry.retry.CopyFrom(_retry_pb(spec.retry))
    if with_rules:
        entry.audit = spec.mode is Mode.AUDIT
        for rule in spec.allow:
            pb_rule = entry.allow.add(caller=rule.caller, methods=rule.methods,
                                      audit=rule.mode is Mode.AUDIT)
            if rule.rate_limit is not None:
                pb_rule.rate_limit.rps = rule.rate_limit.rps
                pb_rule.rate_limit.burst = rule.rate_limit.burst
    return entry


def _retry_pb(retry: RetryPolicy) -> pb.RetryPolicy:
    return pb.RetryPolicy(max_attempts=retry.max_attempts,
                          initial_backoff_ms=retry.initial_backoff_ms,
                          max_backoff_ms=retry.max_backoff_ms)


def _ref_pb(ref: KeyRef | None) -> pb.KeyRef:
    return pb.KeyRef() if ref is None else pb.KeyRef(key=ref.key, accept=ref.accept)


class _KeyCollector:
    """Key material to ship, at most once per key, private halves only where asked. Another
    service's HMAC identity is never shipped: its nodes get the key of the pair (owner ->
    this node's service) instead (docs/protocol.md, section 2)."""

    def __init__(self, policy: Policy) -> None:
        self._policy = policy
        self._keys: dict[str, pb.Key] = {}

    def add(self, ref: KeyRef | None, *, private: bool, owner: str = "",
            peer: str = "") -> None:
        if ref is None:
            return
        for name in ref.all:
            self._add_key(self._policy.keys[name], private, owner, peer)

    def _add_key(self, key: KeySpec, private: bool, owner: str, peer: str) -> None:
        existing = self._keys.get(key.name)
        if existing is not None and not (private and (not existing.secret
                                                     or existing.pair_signer)):
            return
        entry = pb.Key(name=key.name, type=KEY_TYPE_TO_PB[key.type], public_key=key.public)
        if key.type is KeyType.HMAC_SHA256 and not private:
            entry.secret = pair_key(key.secret, owner, peer)
            entry.pair_signer, entry.pair_peer = owner, peer
        elif key.type is not KeyType.ED25519 or private:
            entry.secret = key.secret
        self._keys[key.name] = entry

    def collected(self) -> Iterable[pb.Key]:
        return (self._keys[name] for name in sorted(self._keys))
