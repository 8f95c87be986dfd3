"""The seam through which the Center seals the secrets it keeps in its store.

A `SecretBox` turns a secret into an opaque blob and back. Both stores keep the snapshot
signing key only as such a blob: on etcd so that every replica can read it and etcd's own
backups hold nothing usable, in the SQLite file so that a copy of the file holds nothing
usable either. The key-encryption key (`--kek`) provides the real box; until a Center is given
one it runs with `PLAINTEXT_BOX` (development mode), whose blobs are tagged so that a store
sealed with a KEK is never mistaken for plaintext, nor the other way round.
"""

from __future__ import annotations

from typing import Protocol

from center_svc.kek import KekError, KekRing, blob_key_id


class SecretBoxError(ValueError):
    """A blob this box cannot open (sealed by another box, or damaged)."""


class SecretBox(Protocol):
    def seal(self, plaintext: bytes) -> bytes: ...
    def open(self, sealed: bytes) -> bytes: ...
    def stale(self, sealed: bytes) -> bool:
        """Whether `sealed` (which opens) should be sealed again: by an older KEK of the
        ring, so that the older one can be dropped."""
        ...


PLAINTEXT_TAG = b"fastproxy-plaintext-v1:"  # what development mode's blobs start with


class PlaintextBox:
    """Development mode: the secret is stored as it is, behind a tag that says so."""

    def seal(self, plaintext: bytes) -> bytes:
        return PLAINTEXT_TAG + plaintext

    def open(self, sealed: bytes) -> bytes:
        if not sealed.startswith(PLAINTEXT_TAG):
            key_id = blob_key_id(sealed)
            if key_id is not None:
                raise SecretBoxError(f"sealed with KEK {key_id}: start the Center with --kek")
            raise SecretBoxError("the secret was sealed with a key-encryption key; "
                                 "start the Center with the same --kek")
        return sealed[len(PLAINTEXT_TAG):]

    def stale(self, sealed: bytes) -> bool:
        return False


PLAINTEXT_BOX: SecretBox = PlaintextBox()


SIGNING_KEY_CONTEXT = b"fastproxy center signing key"


class KekBox:
    """The KEK's box (`--kek`): AES-256-GCM under the ring's first key, any of its keys
    opens; the blob is bound to its use (the snapshot-signing key)."""

    def __init__(self, ring: KekRing, context: bytes = SIGNING_KEY_CONTEXT) -> None:
        self._ring = ring
        self._context = context

    def seal(self, plaintext: bytes) -> bytes:
        return self._ring.seal(plaintext, self._context)

    def open(self, sealed: bytes) -> bytes:
        try:
            return self._ring.open(sealed, self._context)
        except KekError as exc:
            raise SecretBoxError(f"the signing key in the store: {exc}") from None

    def stale(self, sealed: bytes) -> bool:
        return blob_key_id(sealed) != self._ring.primary.key_id
