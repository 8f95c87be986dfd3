"""Key material of protocol version 2 (docs/protocol.md, sections 1-3): identity keys that
sign and verify handshakes, the AEAD of a session direction, X25519 and HKDF.

Everything is built once per policy snapshot (identity keys) or once per session (AEADs),
never per call or message.
"""

from __future__ import annotations

import hmac
import os
import struct
from collections import deque

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from fastproxy.pipeline.reasons import FastProxyError, Reason
from fastproxy.v1 import session_pb2 as spb

KEY_BYTES = 32
TAG_BYTES = 16
PAIR_SALT = b"fastproxy-v2 pair"
_NONCE = struct.Struct(">QI")


def lp(data: bytes) -> bytes:
    """The 4-byte big-endian length of `data`, then `data`."""
    return len(data).to_bytes(4, "big") + data


def nonce(call_number: int, position: int) -> bytes:
    """`Nonce(n, s)`: 12 bytes, never repeated under one key (see the protocol)."""
    return _NONCE.pack(call_number, position)


def hkdf_extract(salt: bytes, ikm: bytes) -> bytes:
    return hmac.digest(salt, ikm, "sha256")


def hkdf_expand(prk: bytes, info: bytes, length: int = KEY_BYTES) -> bytes:
    out, block, counter = b"", b"", 1
    while len(out) < length:
        block = hmac.digest(prk, block + info + bytes((counter,)), "sha256")
        out += block
        counter += 1
    return out[:length]


def pair_key(secret: bytes, signer: str, peer: str) -> bytes:
    """`Pair(signer, peer)`: what the peer's nodes hold of an HMAC identity (section 2)."""
    return hkdf_expand(hkdf_extract(PAIR_SALT, secret),
                       lp(signer.encode()) + lp(peer.encode()))


# --- identity keys -------------------------------------------------------------------------


class Signer:
    """A service's own identity key: signs its handshakes. An HMAC secret signs towards each
    peer with that pair's key (derived once per peer)."""

    __slots__ = ("_ed25519", "_pairs", "_secret", "key_id", "owner")

    def __init__(self, key_id: str, owner: str, *, ed25519_seed: bytes | None = None,
                 hmac_secret: bytes | None = None) -> None:
        self.key_id = key_id
        self.owner = owner
        self._ed25519 = (Ed25519PrivateKey.from_private_bytes(ed25519_seed)
                         if ed25519_seed is not None else None)
        self._secret = hmac_secret
        self._pairs: dict[str, bytes] = {}
        if self._ed25519 is None and hmac_secret is None:
            raise ValueError(f"key {key_id!r}: a signer needs a private key or a secret")

    def sign(self, message: bytes, peer: str) -> bytes:
        if self._ed25519 is not None:
            return self._ed25519.sign(message)
        assert self._secret is not None
        key = self._pairs.get(peer)
        if key is None:
            key = self._pairs[peer] = pair_key(self._secret, self.owner, peer)
        return hmac.digest(key, message, "sha256")

    def verifier_for(self, peer: str) -> Verifier:
        """The key that verifies this signer's signatures towards `peer` (a service that
        calls itself verifies its own handshakes)."""
        if self._ed25519 is not None:
            return Verifier(self.key_id, ed25519_public=self._ed25519.public_key()
                            .public_bytes_raw())
        assert self._secret is not None
        return Verifier(self.key_id, hmac_key=pair_key(self._secret, self.owner, peer))

    def __repr__(self) -> str:
        return f"Signer({self.key_id!r}, owner={self.owner!r})"


class Verifier:
    """A peer's identity key as this node holds it: an Ed25519 public key, or the HMAC key
    of the pair (peer -> this node's service)."""

    __slots__ = ("_ed25519", "_hmac", "key_id")

    def __init__(self, key_id: str, *, ed25519_public: bytes | None = None,
                 hmac_key: bytes | None = None) -> None:
        self.key_id = key_id
        self._ed25519 = (Ed25519PublicKey.from_public_bytes(ed25519_public)
                         if ed25519_public is not None else None)
        self._hmac = hmac_key
        if self._ed25519 is None and hmac_key is None:
            raise ValueError(f"key {key_id!r}: a verifier needs a public key or a pair key")

    def verify(self, message: bytes, signature: bytes) -> bool:
        if self._ed25519 is not None:
            try:
                self._ed25519.verify(signature, message)
            except InvalidSignature:
                return False
            return True
        assert self._hmac is not None
        return hmac.compare_digest(hmac.digest(self._hmac, message, "sha256"), signature)

    def __repr__(self) -> str:
        return f"Verifier({self.key_id!r})"


# --- session keys --------------------------------------------------------------------------


class Aead:
    """One direction of a session: its AEAD, built once per session."""

    __slots__ = ("_aead",)

    def __init__(self, suite: int, key: bytes) -> None:
        if suite == spb.AEAD_SUITE_AES_256_GCM:
            self._aead: AESGCM | ChaCha20Poly1305 = AESGCM(key)
        elif suite == spb.AEAD_SUITE_CHACHA20_POLY1305:
            self._aead = ChaCha20Poly1305(key)
        else:
            raise ValueError(f"unknown AEAD suite {suite}")

    def seal(self, nonce_: bytes, plaintext: bytes, aad: bytes) -> bytes:
        return self._aead.encrypt(nonce_, plaintext, aad)

    def open(self, nonce_: bytes, sealed: bytes, aad: bytes, what: str) -> bytes:
        """UNAUTHENTICATED naming `what` when the record does not open at this position."""
        try:
            return self._aead.decrypt(nonce_, sealed, aad)
        except InvalidTag:
            raise FastProxyError(
                Reason.UNAUTHENTICATED,
                f"{what} does not open here (tampered, moved, reordered or replayed)",
            ) from None


class Ephemeral:
    """An X25519 key pair for one handshake; its private half is dropped after `exchange`."""

    __slots__ = ("_private", "public")

    def __init__(self, private: X25519PrivateKey | None = None) -> None:
        self._private: X25519PrivateKey | None = private or X25519PrivateKey.generate()
        self.public = self._private.public_key().public_bytes_raw()

    @classmethod
    def from_bytes(cls, raw: bytes) -> Ephemeral:
        """A fixed ephemeral key (test vectors only)."""
        return cls(X25519PrivateKey.from_private_bytes(raw))

    def exchange(self, peer_public: bytes) -> bytes:
        private = self._private
        if private is None:
            raise ValueError("this ephemeral key was already used")
        self._private = None  # erased: forward secrecy rests on it
        if len(peer_public) != KEY_BYTES:
            raise FastProxyError(Reason.UNAUTHENTICATED,
                                 "handshake ephemeral key is not 32 bytes")
        try:
            shared = private.exchange(X25519PublicKey.from_public_bytes(peer_public))
        except ValueError:  # cryptography refuses a low-order point itself
            shared = bytes(KEY_BYTES)
        if shared == bytes(KEY_BYTES):
            raise FastProxyError(Reason.UNAUTHENTICATED,
                                 "handshake ephemeral key gives no shared secret")
        return shared


class SpareEphemeral:
    """One X25519 key made ahead of the handshake that will use it, so that making it (40 us)
    is not on that handshake's path: made when the policy is compiled, and again after each
    use by a host that can do so off the call path (`refill`, e.g. with `loop.call_soon`).
    Each key is still used once and erased at once. Safe from several threads: a key is
    taken by one handshake only; and across a fork: a key made before it is used by
    neither process (both would hold it)."""

    __slots__ = ("_held",)

    def __init__(self) -> None:
        self._held: deque[tuple[int, Ephemeral]] = deque(maxlen=1)
        self.refill()

    def take(self) -> Ephemeral:
        """The key made ahead in this process, or a new one when there is none."""
        try:
            pid, ephemeral = self._held.pop()
        except IndexError:
            return Ephemeral()
        return ephemeral if pid == os.getpid() else Ephemeral()

    def refill(self) -> None:
        if not self._held:
            self._held.append((os.getpid(), Ephemeral()))
