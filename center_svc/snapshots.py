"""The Center's current policy and the signed snapshots built from it, one per audience.

An audience is (role class, service): out- and client-nodes of a service see the same thing.
A snapshot is scoped, stamped, serialized and signed once per audience and generation, then
handed unchanged to every node of that audience.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fastproxy.node.acceptance import audience_role
from fastproxy.policy.model import Policy
from fastproxy.policy.scope import content_hash, scope_snapshot
from fastproxy.policy.signing import public_bytes, sign_snapshot
from fastproxy.v1 import policy_pb2 as pb

Audience = tuple[int, str]


def audience_of(role: int, service: str) -> Audience:
    """Out- and client-nodes see the same; in- and app-nodes each see their own (the node
    checks the role its snapshot names against the same rule)."""
    return (audience_role(role), service)


@dataclass(frozen=True, slots=True)
class PolicyState:
    """One immutable view: a revision, its policy and the registered endpoints."""

    revision: int
    policy: Policy
    registered: Mapping[str, Sequence[str]]
    generation: int


class SnapshotBook:
    def __init__(self, signing_key: Ed25519PrivateKey) -> None:
        self._key = signing_key
        self._state: PolicyState | None = None
        # kept apart from the state: in-proxies may register before the first policy exists
        self._registered: Mapping[str, Sequence[str]] = {}
        self._cache: dict[Audience, pb.SignedSnapshot] = {}

    @property
    def public_key(self) -> bytes:
        return public_bytes(self._key)

    @property
    def state(self) -> PolicyState | None:
        return self._state

    @property
    def revision(self) -> int:
        return 0 if self._state is None else self._state.revision

    def set_policy(self, revision: int, policy: Policy) -> None:
        self._replace(PolicyState(revision, policy, self._registered, self._next_generation()))

    def set_registered(self, registered: Mapping[str, Sequence[str]]) -> None:
        self._registered = dict(registered)
        if self._state is None:
            return
        state = self._state
        self._replace(PolicyState(state.revision, state.policy, self._registered,
                                  self._next_generation()))

    def snapshot_for(self, role: int, service: str) -> pb.SignedSnapshot | None:
        """The signed snapshot for a node, or None while no policy was ever applied."""
        if self._state is None:
            return None
        audience = audience_of(role, service)
        cached = self._cache.get(audience)
        if cached is None:
            snapshot = scope_snapshot(self._state.policy, audience[0], service,
                                      self._state.registered)
            digest = content_hash(snapshot)
            snapshot.revision = self._state.revision
            cached = sign_snapshot(snapshot, self._key, digest)
            self._cache[audience] = cached
        return cached

    def _replace(self, state: PolicyState) -> None:
        self._state = state
        self._cache = {}

    def _next_generation(self) -> int:
        return 1 if self._state is None else self._state.generation + 1
