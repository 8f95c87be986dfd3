"""Applying, rolling back and publishing policy revisions: the Center's logic, without gRPC.

On a shared store (etcd) this Center is one replica of several: `follow` makes it publish the
revisions and registrations stored through any replica, and stop taking applies and node
streams while it cannot reach the store (so that a replica cut off from etcd never serves as
if it were current, and its nodes move to one that can).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import yaml

from center_svc.metrics import CenterMetrics
from center_svc.nodes import NodeSession, NodeTable
from center_svc.preview import Preview, preview
from center_svc.rotation import Phase, Rotation, RotationError, phase_of, rotated_yaml
from center_svc.snapshots import SnapshotBook
from center_svc.store import AuditAction, PolicyStore, Revision, StoreUnavailableError
from fastproxy.policy import PolicyError, load_policy
from fastproxy.policy.explain import Explanation, explain
from fastproxy.policy.model import KeyType, Policy
from fastproxy.policy.redaction import RedactedValueError, has_redacted_values, restore_redacted

log = logging.getLogger("center_svc.control")
STEPS_DONE = {Phase.ADDED: 1, Phase.IN_USE: 2, Phase.DONE: 3}


@dataclass(frozen=True, slots=True)
class ApplyOutcome:
    applied: bool
    revision: Revision | None = None
    errors: list[str] = field(default_factory=list)
    message: str = ""
    removed_services_with_nodes: list[str] = field(default_factory=list)


class PolicyControl:
    def __init__(self, store: PolicyStore, book: SnapshotBook,
                 metrics: CenterMetrics | None = None) -> None:
        self.store = store
        self.book = book
        self.metrics = metrics or CenterMetrics()
        self.nodes = NodeTable(self._registry_changed)
        self._lock = asyncio.Lock()
        self.unreachable_reason = ""  # non-empty while the (shared) store cannot be reached
        self.reachability_listeners: list[Callable[[bool], None]] = []

    @property
    def reachable(self) -> bool:
        return not self.unreachable_reason

    def refuse_if_unreachable(self) -> None:
        """Raises StoreUnavailableError while this replica is cut off from its store."""
        if self.unreachable_reason:
            raise StoreUnavailableError(
                "this Center replica cannot reach its store "
                f"({self.unreachable_reason}); use another replica")

    def load_latest(self) -> Revision | None:
        """Publishes the newest stored revision; raises PolicyError if it no longer validates
        (for example an `env:` secret missing in this process's environment)."""
        latest = self.store.latest()
        if latest is not None:
            self.book.set_policy(latest.revision, load_policy(latest.yaml))
        return latest

    async def apply(self, yaml_text: str, author: str, comment: str,
                    rolled_back_from: int = 0, *, peer: str = "",
                    refuse_removals: bool = False) -> ApplyOutcome:
        """Validates, stores and publishes a policy; every outcome is an audit event of
        `author` (the actor's principal label) from `peer`. With `refuse_removals`, a policy
        that removes services with connected nodes is refused, naming them."""
        try:
            # a document fetched redacted and applied back keeps the stored secrets
            if has_redacted_values(yaml_text):
                latest = await asyncio.to_thread(self.store.latest)
                yaml_text = restore_redacted(yaml_text, latest.yaml if latest else None)
            policy = load_policy(yaml_text)
        except (PolicyError, RedactedValueError) as exc:
            log.warning("policy refused (author %s): %s", author, "; ".join(exc.errors))
            action = (AuditAction.REFUSED_ROLLBACK if rolled_back_from
                      else AuditAction.REFUSED_APPLY)
            # the errors name fields and never hold secret values; the YAML is not kept
            await self.record(action, author, "; ".join(exc.errors), peer=peer,
                              revision=rolled_back_from)
            return ApplyOutcome(False, errors=exc.errors, message="policy refused")
        removed = self.removed_with_nodes(policy) if refuse_removals else []
        if removed:
            detail = f"removes {', '.join(removed)}, whose nodes are connected"
            await self.record(AuditAction.REFUSED_APPLY, author, detail, peer=peer)
            return ApplyOutcome(False, message=f"policy refused: it {detail}",
                                removed_services_with_nodes=removed)
        self.refuse_if_unreachable()
        async with self._lock:
            return await self._store_and_publish(yaml_text, policy, author, comment,
                                                 rolled_back_from, peer)

    async def _store_and_publish(self, yaml_text: str, policy: Policy, author: str,
                                 comment: str, rolled_back_from: int, peer: str
                                 ) -> ApplyOutcome:
        """Stores a validated policy as the next revision and sends it out (under the lock)."""
        result = await asyncio.to_thread(
            self.store.append, yaml_text, author, comment, rolled_back_from, peer=peer
        )
        action = AuditAction.ROLLBACK if rolled_back_from else AuditAction.APPLY
        if not result.applied:
            self.metrics.applied(action, None, ())
            return ApplyOutcome(False, result.revision,
                                message=f"unchanged: identical to revision "
                                        f"{result.revision.revision}")
        if result.revision.revision > self.book.revision:
            # (another replica's newer revision may have been published meanwhile)
            self.book.set_policy(result.revision.revision, policy)
        self.metrics.applied(action, result.revision.revision, self._views_changed())
        log.info("applied revision %d (author %s)", result.revision.revision, author)
        self.refresh_all()
        self.notify_all()
        return ApplyOutcome(True, result.revision,
                            message=f"applied as revision {result.revision.revision}")

    def removed_with_nodes(self, policy: Policy) -> list[str]:
        """Services of the policy in force that `policy` removes and that have nodes
        connected here."""
        state = self.book.state
        if state is None:
            return []
        connected = {session.service for session in self.nodes}
        return sorted(name for name in state.policy.services
                      if name not in policy.services and name in connected)

    async def rotation_phase(self, key: str) -> Rotation:
        latest = self.store.latest()
        if latest is None:
            raise RotationError("no policy: nothing was applied yet")
        document = yaml.safe_load(latest.yaml)
        if not isinstance(document, dict):
            raise RotationError("the policy is not a mapping")
        return phase_of(document, key)

    async def rotate_step(self, key: str, new_type: KeyType | None, author: str, *,
                          peer: str = "") -> tuple[Rotation, ApplyOutcome]:
        """Applies the next step of rotating `key` (center_svc.rotation) as a revision made
        from the latest one under the apply lock, so no concurrent apply is lost.
        RotationError when there is no next step; the outcome carries validation errors."""
        async with self._lock:
            latest = self.store.latest()
            if latest is None:
                raise RotationError("no policy: nothing was applied yet")
            yaml_text, rotation = rotated_yaml(latest.yaml, key, new_type)
            comment = (f"keys rotate {key}: step {STEPS_DONE[rotation.phase]}/3, "
                       f"{rotation.phase.value} ({rotation.successor})")
            try:
                policy = load_policy(yaml_text)
            except PolicyError as exc:
                await self.record(AuditAction.REFUSED_APPLY, author, "; ".join(exc.errors),
                                  peer=peer)
                return rotation, ApplyOutcome(False, errors=exc.errors,
                                              message="rotation step refused")
            outcome = await self._store_and_publish(yaml_text, policy, author, comment, 0, peer)
        return rotation, outcome

    async def rollback(self, revision: int, author: str, comment: str,
                       *, peer: str = "") -> ApplyOutcome:
        self.refuse_if_unreachable()
        target = await asyncio.to_thread(self.store.get, revision)
        if target is None:
            error = f"revision {revision} does not exist"
            await self.record(AuditAction.REFUSED_ROLLBACK, author, error, peer=peer,
                              revision=revision)
            return ApplyOutcome(False, errors=[error], message="rollback refused")
        return await self.apply(target.yaml, author, comment or f"rollback to {revision}",
                                rolled_back_from=revision, peer=peer)

    def preview(self, yaml_text: str = "", revision: int = 0) -> tuple[Preview, int]:
        """What applying `yaml_text` (or going back to `revision`) would change, and the
        latest revision it is compared with. PolicyError when the candidate does not
        validate, LookupError when the revision does not exist."""
        if revision:
            stored = self.store.get(revision)
            if stored is None:
                raise LookupError(f"revision {revision} does not exist")
            yaml_text, name = stored.yaml, f"revision {revision}"
        else:
            name = "candidate"
        candidate = load_policy(yaml_text)
        latest = self.store.latest()
        state = self.book.state
        found = preview(state.policy if state is not None else None,
                        latest.yaml if latest is not None else "",
                        f"revision {latest.revision}" if latest is not None else "nothing",
                        candidate, yaml_text, name, self.nodes, self.nodes.registered())
        return found, latest.revision if latest is not None else 0

    def explain(self, caller: str, method: str, revision: int = 0) -> Explanation:
        """What the callee decides for `caller` calling `method` under `revision` (0: the
        latest), with today's registered endpoints. LookupError when there is no such
        revision; ValueError (ExplainError, PolicyError) when it cannot be answered."""
        state = self.book.state
        if not revision or (state is not None and revision == state.revision):
            if state is None:
                raise LookupError("no policy: nothing was applied yet")
            policy, revision = state.policy, state.revision
        else:
            stored = self.store.get(revision)
            if stored is None:
                raise LookupError(f"revision {revision} does not exist")
            policy = load_policy(stored.yaml)
        return explain(policy, revision, caller, method, self.nodes.registered())

    async def record(self, action: AuditAction, actor: str, detail: str, *, peer: str = "",
                     revision: int = 0) -> None:
        """Stores an audit event (a refusal or a denied call) off the event loop; while the
        store is unreachable the event is only logged."""
        self.metrics.refused(action)
        try:
            await asyncio.to_thread(self.store.record_audit, action, actor, detail, peer=peer,
                                    revision=revision)
        except StoreUnavailableError as exc:
            log.warning("audit event not stored (%s %s: %s): %s", action.value, actor,
                        detail, exc)

    def _views_changed(self) -> list[NodeSession]:
        """Connected nodes whose snapshot now differs from the last one they were sent."""
        changed = []
        for session in self.nodes:
            signed = self.book.snapshot_for(session.role, session.service)
            if signed is not None and signed.content_hash != session.sent_hash:
                changed.append(session)
        return changed

    # -- which nodes run the latest content for them ----------------------------------------

    def expected_hash(self, session: NodeSession) -> str:
        """The content hash of the snapshot `session` is to run now ("" before any policy)."""
        signed = self.book.snapshot_for(session.role, session.service)
        return signed.content_hash if signed is not None else ""

    def refresh(self, session: NodeSession) -> None:
        """Re-evaluates whether `session` is current (after its ACK, or a change)."""
        expected = self.expected_hash(session)
        current = bool(expected) and session.acked_hash == expected
        if current != session.current:
            self.metrics.node_currency(session.current, -1)
            self.metrics.node_currency(current, +1)
            session.current = current

    def refresh_all(self) -> None:
        for session in self.nodes:
            self.refresh(session)

    def node_connected(self, session: NodeSession) -> None:
        self.nodes.add(session)
        self.metrics.node_connected(session)
        self.metrics.node_currency(False, +1)
        self.refresh(session)

    def node_disconnected(self, session: NodeSession) -> None:
        self.nodes.remove(session)
        self.metrics.node_disconnected(session)
        self.metrics.node_currency(session.current, -1)

    def notify_all(self) -> None:
        for session in self.nodes:
            session.changed.set()

    def restore_registry(self) -> None:
        """Takes back the endpoints registered before a restart (see NodeTable.inherit); on a
        shared store, the endpoints every replica registered, as they stand."""
        if self.store.shared:
            self.book.set_registered(self.store.registrations())
            return
        self.nodes.inherit(self.store.registrations())
        self.book.set_registered(self.nodes.registered())

    def _registry_changed(self, registered: dict[str, list[str]]) -> None:
        self.store.save_registrations(registered)
        if self.store.shared:
            return  # the routes change when the store says so, for every replica alike
        self.book.set_registered(registered)
        self.refresh_all()
        self.notify_all()

    # -- replicas on a shared store ----------------------------------------------------------

    def follow(self) -> None:
        """Publishes what any replica stores; call once, from the event loop."""
        self.store.follow(_LoopListener(self, asyncio.get_running_loop()))

    async def catch_up(self, revision: int) -> None:
        """A revision was stored (maybe through another replica): publish it if it is newer
        than what this Center serves. Never steps back."""
        if revision <= self.book.revision:
            return
        async with self._lock:
            if revision <= self.book.revision:
                return
            try:
                stored = await asyncio.to_thread(self.store.get, revision)
                if stored is None:
                    return
                policy = load_policy(stored.yaml)
            except StoreUnavailableError as exc:
                log.warning("revision %d not loaded yet: %s", revision, exc)
                return
            except PolicyError as exc:
                log.error("revision %d stored by another replica does not validate here "
                          "(revision %d stays): %s", revision, self.book.revision,
                          "; ".join(exc.errors))
                return
            self.book.set_policy(revision, policy)
        log.info("revision %d stored by %s published", revision, stored.author)
        self.refresh_all()
        self.notify_all()

    def registrations_changed(self, registered: dict[str, list[str]]) -> None:
        self.book.set_registered(registered)
        self.refresh_all()
        self.notify_all()

    def reachability_changed(self, reachable: bool, reason: str) -> None:
        self.unreachable_reason = "" if reachable else (reason or "unreachable")
        if not reachable:
            # no split brain: nodes must not keep taking policy from a replica that may be
            # behind; they move to a replica that can reach the store
            self.close_streams(f"this Center replica cannot reach its store ({reason}); "
                               "reconnect to another replica")
        for listener in self.reachability_listeners:
            listener(reachable)

    def close_streams(self, reason: str) -> None:
        """Ends every node's Watch stream with UNAVAILABLE and `reason`."""
        for session in self.nodes:
            session.closing = reason
            session.changed.set()


class _LoopListener:
    """The store's StoreListener: hands each report to the Center's event loop."""

    def __init__(self, control: PolicyControl, loop: asyncio.AbstractEventLoop) -> None:
        self._control = control
        self._loop = loop
        self._tasks: set[asyncio.Task[None]] = set()

    def _soon(self, callback: Callable[[], object]) -> None:
        if not self._loop.is_closed():
            self._loop.call_soon_threadsafe(callback)

    def revision_stored(self, revision: int) -> None:
        self._soon(lambda: self._catch_up(revision))

    def _catch_up(self, revision: int) -> None:
        task = self._loop.create_task(self._control.catch_up(revision))
        self._tasks.add(task)  # the loop keeps only a weak reference to a task
        task.add_done_callback(self._tasks.discard)

    def registrations_changed(self, registered: dict[str, list[str]]) -> None:
        self._soon(lambda: self._control.registrations_changed(registered))

    def reachability_changed(self, reachable: bool, reason: str) -> None:
        self._soon(lambda: self._control.reachability_changed(reachable, reason))
