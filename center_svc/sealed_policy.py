"""Policy secrets encrypted at rest: a layer above any `PolicyStore` backend.

`SealedStore` wraps a store. Before a revision reaches the backend, each inline secret value
of its YAML (`keys.NAME.secret`/`private`, see `fastproxy.policy.redaction`) is replaced, in
place, by `kek:KEKID:...` sealed with the KEK (`center_svc.kek`), bound to its field path;
after a revision is read back, they are opened again. The backend stores, hashes and
replicates text that holds no secret, and never knows; everything above the wrapper sees the
policy as applied.

A value unchanged since the latest revision keeps its sealed form (same nonce, same bytes),
so applying the same policy twice stores the same text and the backend's "identical to the
latest revision" check still holds.

Without a KEK (development mode) the wrapper passes text through; revisions stored before a
KEK was given stay readable (their values are plain), and the next apply seals them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

from center_svc.kek import KekError, KekRing, is_sealed_text, sealed_text_key_id
from center_svc.store import (
    AppendResult,
    AuditAction,
    AuditEvent,
    PolicyStore,
    Revision,
    StoreListener,
)
from fastproxy.policy.redaction import SecretField, replace_values, secret_fields


class SealedSecretError(KekError):
    """A stored revision whose secrets cannot be opened with the KEKs given."""


def seal_secrets(text: str, ring: KekRing, previous_sealed: str | None = None) -> str:
    """`text` with every inline secret value sealed; a value equal to the one the same field
    holds in `previous_sealed` reuses that sealed form if the first KEK made it (so that
    after `--kek NEW --kek OLD` a new revision holds nothing that needs OLD)."""
    reuse: dict[str, tuple[str, str]] = {}  # path -> (plain value, its sealed form)
    if previous_sealed is not None:
        for field in secret_fields(previous_sealed):
            if (is_sealed_text(field.value)
                    and sealed_text_key_id(field.value) == ring.primary.key_id):
                try:
                    plain = ring.open_text(field.value, field.path.encode())
                except KekError:
                    continue  # sealed by a KEK no longer given: seal afresh
                reuse[field.path] = (plain.decode("utf-8"), field.value)

    def sealed(field: SecretField) -> str | None:
        if field.is_reference or is_sealed_text(field.value):
            return None
        kept = reuse.get(field.path)
        if kept is not None and kept[0] == field.value:
            return kept[1]
        return ring.seal_text(field.value.encode("utf-8"), field.path.encode())

    return replace_values(text, secret_fields(text), sealed)


def open_secrets(text: str, ring: KekRing | None, *, where: str = "") -> str:
    """`text` with every sealed value opened; SealedSecretError naming the field and the KEK
    ids when one cannot be."""
    fields = [f for f in secret_fields(text) if is_sealed_text(f.value)]
    if not fields:
        return text

    opened: dict[str, str] = {}
    for field in fields:  # in document order: the first that fails is the one reported
        try:
            if ring is None:
                raise KekError(f"sealed with KEK {sealed_text_key_id(field.value)}: start the "
                               "Center with --kek")
            opened[field.path] = ring.open_text(field.value,
                                                field.path.encode()).decode("utf-8")
        except KekError as exc:
            raise SealedSecretError(f"{where}{field.path}: {exc}") from None
    return replace_values(text, fields, lambda f: opened[f.path])


def plain_secret_paths(text: str) -> list[str]:
    """Inline secret values not sealed (a revision stored before the Center had a KEK)."""
    return [f.path for f in secret_fields(text)
            if not f.is_reference and not is_sealed_text(f.value)]


class SealedStore:
    """A `PolicyStore` whose revisions hold sealed secrets in the backend `inner`."""

    def __init__(self, inner: PolicyStore, ring: KekRing | None) -> None:
        self.inner = inner
        self.ring = ring

    @property
    def shared(self) -> bool:
        return self.inner.shared

    def follow(self, listener: StoreListener) -> None:
        """Revisions reach the listener as numbers: it reads them through this wrapper."""
        self.inner.follow(listener)

    def _opened(self, revision: Revision | None) -> Revision | None:
        if revision is None:
            return None
        opened = open_secrets(revision.yaml, self.ring,
                              where=f"stored revision {revision.revision}: ")
        return revision if opened == revision.yaml else dataclasses.replace(revision,
                                                                            yaml=opened)

    def stored_latest(self) -> Revision | None:
        """The latest revision as the backend holds it (secrets sealed)."""
        return self.inner.latest()

    def latest(self) -> Revision | None:
        return self._opened(self.inner.latest())

    def get(self, revision: int) -> Revision | None:
        return self._opened(self.inner.get(revision))

    def history(self, limit: int | None = None) -> list[Revision]:
        """For listing: the revisions as stored, secrets sealed (a revision sealed with a KEK
        no longer given still lists; `get` names the KEK it needs)."""
        return self.inner.history(limit)

    def append(self, yaml: str, author: str, comment: str, rolled_back_from: int = 0,
               *, peer: str = "") -> AppendResult:
        stored = yaml
        if self.ring is not None:
            latest = self.inner.latest()
            stored = seal_secrets(yaml, self.ring, latest.yaml if latest else None)
        result = self.inner.append(stored, author, comment, rolled_back_from, peer=peer)
        opened = self._opened(result.revision)
        assert opened is not None
        return AppendResult(result.applied, opened)

    def record_audit(self, action: AuditAction, actor: str, detail: str, *, peer: str = "",
                     revision: int = 0) -> AuditEvent:
        return self.inner.record_audit(action, actor, detail, peer=peer, revision=revision)

    def audit_events(self, limit: int | None = None) -> list[AuditEvent]:
        return self.inner.audit_events(limit)

    def signing_key_seed(self) -> bytes:
        return self.inner.signing_key_seed()

    def registrations(self) -> dict[str, list[str]]:
        return self.inner.registrations()

    def save_registrations(self, registered: Mapping[str, Sequence[str]]) -> None:
        self.inner.save_registrations(registered)

    def close(self) -> None:
        self.inner.close()
