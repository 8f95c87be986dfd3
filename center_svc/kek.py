"""The key-encryption key (KEK): what the Center encrypts its secrets at rest with.

`--kek file:PATH` or `--kek env:VAR` names 32 bytes (raw in a file, or base64 text, as a
policy's secret references). The flag may be given more than once: the first KEK seals
everything new, and every one given opens what it sealed, so a KEK is rotated by starting
with `--kek NEW --kek OLD` and applying again.

Each sealed value records the id of the KEK that sealed it (`key_id`: the first 8 bytes of
SHA-256 over a label and the KEK, in hex), so the Center can say which KEK a store needs
without trying them all, and a wrong KEK is reported as such rather than as corruption.

Sealing is AES-256-GCM with a random 96-bit nonce; the associated data binds the KEK id and
a caller's `context` (what the value is, e.g. `keys.song-id.private`), so a sealed value moved
to another place does not open. Two forms of one format:
- `seal(data, context) -> bytes`: `fastproxy-kek-v1\\0 | kek id (8) | nonce (12) | ciphertext`,
  for any blob (a store keeps its snapshot-signing key this way); `open` reverses it.
- `seal_text` / `open_text`: `kek:KEKID:BASE64(nonce | ciphertext)`, a YAML-safe string
  (secret values inside policy documents, `center_svc.sealed_policy`).

`blob_key_id` names the KEK a sealed blob needs (for a Center started without it).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from fastproxy.policy.secrets import SecretError, resolve_secret

BLOB_MAGIC = b"fastproxy-kek-v1\x00"
TEXT_PREFIX = "kek:"
KEY_BYTES = 32
ID_BYTES = 8
NONCE_BYTES = 12
_ID_LABEL = b"fastproxy kek id v1\x00"
_AAD_LABEL = b"fastproxy-kek-v1\x00"


class KekError(ValueError):
    """A KEK that cannot be loaded, or a sealed value that does not open; the message names
    the KEK ids involved, never key material."""


@dataclass(frozen=True, slots=True)
class Kek:
    key: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if len(self.key) != KEY_BYTES:
            raise KekError(f"a KEK must be {KEY_BYTES} bytes, not {len(self.key)}")

    @property
    def key_id(self) -> str:
        return self.raw_id.hex()

    @property
    def raw_id(self) -> bytes:
        return hashlib.sha256(_ID_LABEL + self.key).digest()[:ID_BYTES]

    def encrypt(self, data: bytes, context: bytes) -> tuple[bytes, bytes]:
        nonce = os.urandom(NONCE_BYTES)
        return nonce, AESGCM(self.key).encrypt(nonce, data, _aad(self.raw_id, context))

    def decrypt(self, nonce: bytes, ciphertext: bytes, context: bytes) -> bytes:
        try:
            return AESGCM(self.key).decrypt(nonce, ciphertext, _aad(self.raw_id, context))
        except InvalidTag:
            raise KekError(f"a value sealed with KEK {self.key_id} does not open: it was "
                           "changed, or moved from another place") from None


def _aad(raw_id: bytes, context: bytes) -> bytes:
    return _AAD_LABEL + raw_id + context


class KekRing:
    """The KEKs the Center was given: the first seals, any of them opens."""

    def __init__(self, keks: Sequence[Kek]) -> None:
        if not keks:
            raise KekError("no KEK given")
        self.primary = keks[0]
        self._by_id: Mapping[bytes, Kek] = {k.raw_id: k for k in reversed(keks)}

    @property
    def key_ids(self) -> list[str]:
        return [k.key_id for k in self._by_id.values()]

    def _kek(self, raw_id: bytes) -> Kek:
        kek = self._by_id.get(raw_id)
        if kek is None:
            raise KekError(f"sealed with KEK {raw_id.hex()}, which is not given (--kek gives "
                           f"{', '.join(self.key_ids)})")
        return kek

    def seal(self, data: bytes, context: bytes = b"") -> bytes:
        nonce, ciphertext = self.primary.encrypt(data, context)
        return BLOB_MAGIC + self.primary.raw_id + nonce + ciphertext

    def open(self, blob: bytes, context: bytes = b"") -> bytes:
        if not blob.startswith(BLOB_MAGIC):
            raise KekError("not a value sealed with a KEK")
        body = blob[len(BLOB_MAGIC):]
        raw_id, nonce = body[:ID_BYTES], body[ID_BYTES:ID_BYTES + NONCE_BYTES]
        if len(nonce) != NONCE_BYTES:
            raise KekError("a sealed value is cut short")
        return self._kek(raw_id).decrypt(nonce, body[ID_BYTES + NONCE_BYTES:], context)

    def seal_text(self, data: bytes, context: bytes) -> str:
        nonce, ciphertext = self.primary.encrypt(data, context)
        encoded = base64.b64encode(nonce + ciphertext).decode("ascii")
        return f"{TEXT_PREFIX}{self.primary.key_id}:{encoded}"

    def open_text(self, text: str, context: bytes) -> bytes:
        key_id, body = _split_text(text)
        return self._kek(bytes.fromhex(key_id)).decrypt(body[:NONCE_BYTES],
                                                        body[NONCE_BYTES:], context)


def is_sealed_text(text: str) -> bool:
    return text.startswith(TEXT_PREFIX)


def sealed_text_key_id(text: str) -> str:
    return _split_text(text)[0]


def _split_text(text: str) -> tuple[str, bytes]:
    key_id, sep, encoded = text.removeprefix(TEXT_PREFIX).partition(":")
    try:
        if not sep or len(bytes.fromhex(key_id)) != ID_BYTES:
            raise ValueError
        body = base64.b64decode(encoded, validate=True)
    except (ValueError, binascii.Error):
        raise KekError("a sealed value is malformed (expected kek:KEKID:BASE64)") from None
    if len(body) <= NONCE_BYTES:
        raise KekError("a sealed value is cut short")
    return key_id, body


def blob_key_id(blob: bytes) -> str | None:
    """The id of the KEK that sealed `blob` (`seal`'s form), or None when it is no such blob."""
    if not blob.startswith(BLOB_MAGIC) or len(blob) < len(BLOB_MAGIC) + ID_BYTES:
        return None
    return blob[len(BLOB_MAGIC):len(BLOB_MAGIC) + ID_BYTES].hex()


def load_kek(ref: str) -> Kek:
    """The KEK `file:PATH` or `env:VAR` names (32 bytes: raw, or base64 text)."""
    if not ref.startswith(("file:", "env:")):
        raise KekError(f"--kek {ref}: expected file:PATH or env:VAR")
    try:
        key = resolve_secret(ref)
    except SecretError as exc:
        raise KekError(f"--kek {ref}: {exc}") from None
    if len(key) != KEY_BYTES:
        raise KekError(f"--kek {ref}: must hold {KEY_BYTES} bytes (raw or base64), "
                       f"not {len(key)}")
    return Kek(key)


def load_ring(refs: Sequence[str]) -> KekRing | None:
    """The KEKs of every `--kek` given (None without one)."""
    return KekRing([load_kek(ref) for ref in refs]) if refs else None
