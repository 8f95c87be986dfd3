"""Which signed snapshots a node accepts from a Center (sans-IO: bytes in, a verdict out).

A snapshot is accepted only if
- its signature verifies, against the pinned Center key when the node has one;
- it was made for this node: its signed `node_service` is the node's service and its signed
  `role` is the node's audience (an out-node and a client-node see the same snapshot; an
  in-node and an app-node each see their own), so a snapshot made for an in-node cannot make
  an out-node run as one;
- its revision is not older than the one the node holds. Revisions only go forward, so a
  snapshot from before a change (a key revoked, a rule removed) cannot be replayed to the
  node; an operator's rollback is a new, higher revision, so it still gets through. The
  revision held is the cache's (the node reads it at start), so a restart does not forget it.
  Equal revisions pass: the Center sends a new snapshot of the same revision when only the
  registered endpoints changed.

Revisions count under one signing key. An unpinned node (allowed on loopback only) that
meets a new key (a development Center restarted with `memory://`) starts counting again; a
pinned node never meets another key.
"""

from __future__ import annotations

from fastproxy.policy.signing import SnapshotError, verify_snapshot
from fastproxy.v1 import policy_pb2 as pb


def audience_role(role: int) -> int:
    """The role a node's snapshot is made for: out- and client-nodes share the out view."""
    return pb.ROLE_OUT if role == pb.ROLE_CLIENT else role


def role_name(role: int) -> str:
    try:
        name: str = pb.Role.Name(role)
        return name.removeprefix("ROLE_").lower()
    except ValueError:
        return str(role)


class SnapshotAcceptor:
    """Checks each snapshot a node of (`role`, `service`) is offered; remembers the revision
    and signer of the last one it accepted."""

    def __init__(self, role: int, service: str, pinned_key: bytes | None = None) -> None:
        self.role = role
        self.service = service
        self.pinned_key = pinned_key
        self.held_revision = 0
        self.held_signer = b""

    def check(self, signed: pb.SignedSnapshot) -> pb.PolicySnapshot:
        """The verified snapshot, or SnapshotError saying why the node refuses it."""
        snapshot = verify_snapshot(signed, self.pinned_key)
        if snapshot.node_service != self.service:
            raise SnapshotError(f"snapshot is for service {snapshot.node_service!r}, "
                                f"not {self.service!r}")
        wanted = audience_role(self.role)
        if snapshot.role != wanted:
            raise SnapshotError(f"snapshot is for role {role_name(snapshot.role)}, not "
                                f"{role_name(wanted)} (this node is {role_name(self.role)})")
        if signed.center_public_key == self.held_signer \
                and snapshot.revision < self.held_revision:
            raise SnapshotError(f"snapshot revision {snapshot.revision} is older than "
                                f"revision {self.held_revision} held: revisions only go "
                                "forward (a rollback is a new revision)")
        return snapshot

    def accepted(self, signed: pb.SignedSnapshot, snapshot: pb.PolicySnapshot) -> None:
        """Records a snapshot the node now runs (after `check` and compiling it)."""
        self.held_signer = bytes(signed.center_public_key)
        self.held_revision = int(snapshot.revision)

    def remember(self, signed: pb.SignedSnapshot) -> bool:
        """Takes the revision of a snapshot the node ran before (its cache) as the one held,
        without running it; False (nothing remembered) if it does not pass `check`."""
        try:
            snapshot = self.check(signed)
        except SnapshotError:
            return False
        self.accepted(signed, snapshot)
        return True
