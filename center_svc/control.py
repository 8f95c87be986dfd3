"""Applying, rolling back and publishing policy revisions: the Center's logic, without gRPC."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

import yaml

from center_svc.metrics import CenterMetrics
from center_svc.nodes import NodeSession, NodeTable
from center_svc.preview import Preview, preview
from center_svc.rotation import Phase, Rotation, RotationError, phase_of, rotated_yaml
from center_svc.snapshots import SnapshotBook
from center_svc.store import AuditAction, PolicyStore, Revision
from fastproxy.policy import PolicyError, load_policy
from fastproxy.policy.explain import Explanation, explain
from fastproxy.policy.model import KeyType, Policy

log = logging.getLogger("center_svc.control")
STEPS_DONE = {Phase.ADDED: 1, Phase.IN_USE: 2, Phase.DONE: 3}


@dataclass(frozen=True, slots=True)
class ApplyOutcome:
    applied: bool
    revision: Revision | None = None
    errors: list[str] = field(default_factory=list)
    message: str = ""


class PolicyControl:
    def __init__(self, store: PolicyStore, book: SnapshotBook,
                 metrics: CenterMetrics | None = None) -> None:
        self.store = store
        self.book = book
        self.metrics = metrics or CenterMetrics()
        self.nodes = NodeTable(self._registry_changed)
        self._lock = asyncio.Lock()

    def load_latest(self) -> Revision | None:
        """Publishes the newest stored revision; raises PolicyError if it no longer validates
        (for example an `env:` secret missing in this process's environment)."""
        latest = self.store.latest()
        if latest is not None:
            self.book.set_policy(latest.revision, load_policy(latest.yaml))
        return latest

    async def apply(self, yaml_text: str, author: str, comment: str,
                    rolled_back_from: int = 0, *, peer: str = "") -> ApplyOutcome:
        """Validates, stores and publishes a policy; every outcome is an audit event of
        `author` (the actor's principal label) from `peer`."""
        try:
            policy = load_policy(yaml_text)
        except PolicyError as exc:
            log.warning("policy refused (author %s): %s", author, "; ".join(exc.errors))
            action = (AuditAction.REFUSED_ROLLBACK if rolled_back_from
                      else AuditAction.REFUSED_APPLY)
            # the errors name fields and never hold secret values; the YAML is not kept
            await self.record(action, author, "; ".join(exc.errors), peer=peer,
                              revision=rolled_back_from)
            return ApplyOutcome(False, errors=exc.errors, message="policy refused")
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
        self.book.set_policy(result.revision.revision, policy)
        self.metrics.applied(action, result.revision.revision, self._views_changed())
        log.info("applied revision %d (author %s)", result.revision.revision, author)
        self.refresh_all()
        self.notify_all()
        return ApplyOutcome(True, result.revision,
                            message=f"applied as revision {result.revision.revision}")

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
        target = self.store.get(revision)
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
        """Stores an audit event (a refusal or a denied call) off the event loop."""
        self.metrics.refused(action)
        await asyncio.to_thread(self.store.record_audit, action, actor, detail, peer=peer,
                                revision=revision)

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
        """Takes back the endpoints registered before a restart (see NodeTable.inherit)."""
        self.nodes.inherit(self.store.registrations())
        self.book.set_registered(self.nodes.registered())

    def _registry_changed(self, registered: dict[str, list[str]]) -> None:
        self.book.set_registered(registered)
        self.store.save_registrations(registered)
        self.refresh_all()
        self.notify_all()
