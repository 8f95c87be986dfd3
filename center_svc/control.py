"""Applying, rolling back and publishing policy revisions: the Center's logic, without gRPC."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from center_svc.metrics import CenterMetrics
from center_svc.nodes import NodeSession, NodeTable
from center_svc.snapshots import SnapshotBook
from center_svc.store import AuditAction, PolicyStore, Revision
from fastproxy.policy import PolicyError, load_policy
from fastproxy.policy.redaction import RedactedValueError, has_redacted_values, restore_redacted

log = logging.getLogger("center_svc.control")


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
        async with self._lock:
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
        self.notify_all()
        return ApplyOutcome(True, result.revision,
                            message=f"applied as revision {result.revision.revision}")

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
        self.notify_all()
