"""Connected nodes (what each runs, what it ACKed or NACKed) and the in-proxy endpoint registry.

A registered endpoint lives while its node renews the lease and its Watch stream is open.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from fastproxy.v1 import center_pb2, policy_pb2

DEFAULT_LEASE_S = 15
MIN_LEASE_S = 1
MAX_LEASE_S = 300


@dataclass(slots=True, eq=False)  # identity semantics: sessions live in a set
class NodeSession:
    node_id: str
    role: int
    service: str
    peer: str
    connected_since: float
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    sent_revision: int = 0
    sent_hash: str = ""
    acked_revision: int = 0
    acked_hash: str = ""
    nacked_revision: int = 0
    nack_error: str = ""
    closing: str = ""  # non-empty: end the stream with UNAVAILABLE and this message
    floor_revision: int = 0  # the revision the node holds: never send it an older one
    # it ACKed the content it is to run now (its revision may be older: a revision that did
    # not change its scoped snapshot is not sent to it)
    current: bool = False
    revoked: str = ""  # why its credential no longer allows this stream (tokens reloaded)
    # address -> monotonic expiry
    leases: dict[str, float] = field(default_factory=dict)

    def status(self) -> center_pb2.NodeStatus:
        return center_pb2.NodeStatus(
            node_id=self.node_id,
            role=self.role,
            service=self.service,
            peer=self.peer,
            connected_since_unix=self.connected_since,
            sent_revision=self.sent_revision,
            acked_revision=self.acked_revision,
            acked_hash=self.acked_hash,
            nacked_revision=self.nacked_revision,
            nack_error=self.nack_error,
            registered_addresses=sorted(self.leases),
            current=self.current,
        )


class NodeTable:
    """Sessions of connected nodes. `on_registry_change` is called when endpoints change."""

    def __init__(self, on_registry_change: Callable[[dict[str, list[str]]], None],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._sessions: set[NodeSession] = set()
        # (service, address) -> monotonic expiry: endpoints registered before a restart,
        # kept until their in-proxy registers again or a lease's time has passed, so the
        # routes pushed to callers do not lose them while in-proxies reconnect.
        self._inherited: dict[tuple[str, str], float] = {}
        self._on_registry_change = on_registry_change
        self._clock = clock

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(list(self._sessions))

    def __len__(self) -> int:
        return len(self._sessions)

    def add(self, session: NodeSession) -> None:
        self._sessions.add(session)

    def remove(self, session: NodeSession) -> None:
        self._sessions.discard(session)
        if session.leases:
            session.leases.clear()
            self._publish()

    def inherit(self, registered: dict[str, list[str]], lease_s: float = DEFAULT_LEASE_S
                ) -> None:
        """Endpoints registered before this Center started (from its store)."""
        expiry = self._clock() + lease_s
        self._inherited = {(service, address): expiry
                           for service, addresses in registered.items()
                           for address in addresses}

    def register(self, session: NodeSession, address: str, lease_seconds: int) -> None:
        lease = min(max(lease_seconds or DEFAULT_LEASE_S, MIN_LEASE_S), MAX_LEASE_S)
        is_new = address not in session.leases
        session.leases[address] = self._clock() + lease
        was_inherited = self._inherited.pop((session.service, address), None) is not None
        if is_new and not was_inherited:
            self._publish()

    def expire_leases(self) -> None:
        now = self._clock()
        expired = False
        for key, expiry in list(self._inherited.items()):
            if expiry <= now:
                del self._inherited[key]
                expired = True
        for session in self._sessions:
            for address, expiry in list(session.leases.items()):
                if expiry <= now:
                    del session.leases[address]
                    expired = True
        if expired:
            self._publish()

    def registered(self) -> dict[str, list[str]]:
        endpoints: dict[str, list[str]] = {}
        for service, address in self._inherited:
            endpoints.setdefault(service, []).append(address)
        for session in self._sessions:
            if session.role != policy_pb2.ROLE_IN:
                continue
            for address in session.leases:
                listed = endpoints.setdefault(session.service, [])
                if address not in listed:
                    listed.append(address)
        return {service: sorted(addresses) for service, addresses in endpoints.items()}

    def statuses(self) -> list[center_pb2.NodeStatus]:
        return [s.status() for s in sorted(self._sessions,
                                           key=lambda s: (s.service, s.role, s.node_id))]

    def _publish(self) -> None:
        self._on_registry_change(self.registered())
