"""Signing and verifying policy snapshots (the Center signs, nodes verify).

A node pinned to the Center's Ed25519 public key refuses any snapshot that key did not sign,
whether it came over the wire or from the node's on-disk cache.
"""

from __future__ import annotations

import base64
import binascii

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from google.protobuf.message import DecodeError

from fastproxy.policy.scope import content_hash
from fastproxy.v1 import policy_pb2 as pb

SIGNING_CONTEXT = b"fastproxy-snapshot-v1\x00"


class SnapshotError(ValueError):
    pass


def public_bytes(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )


def sign_snapshot(snapshot: pb.PolicySnapshot, key: Ed25519PrivateKey,
                  digest: str | None = None) -> pb.SignedSnapshot:
    """Serializes once; the result is sent as is to every node of the same audience."""
    body = snapshot.SerializeToString(deterministic=True)
    return pb.SignedSnapshot(
        snapshot=body,
        content_hash=digest if digest is not None else content_hash(snapshot),
        signature=key.sign(SIGNING_CONTEXT + body),
        center_public_key=public_bytes(key),
    )


def verify_snapshot(signed: pb.SignedSnapshot,
                    pinned_key: bytes | None = None) -> pb.PolicySnapshot:
    """Checks the signature (against the pinned key when given) and the content hash."""
    signer = signed.center_public_key
    if pinned_key is not None and signer != pinned_key:
        raise SnapshotError("snapshot signed by a key other than the pinned Center key")
    try:
        Ed25519PublicKey.from_public_bytes(signer).verify(
            signed.signature, SIGNING_CONTEXT + signed.snapshot
        )
    except (InvalidSignature, ValueError):
        raise SnapshotError("snapshot signature does not verify") from None
    snapshot = pb.PolicySnapshot()
    try:
        snapshot.ParseFromString(signed.snapshot)
    except DecodeError:
        raise SnapshotError("snapshot cannot be parsed") from None
    if content_hash(snapshot) != signed.content_hash:
        raise SnapshotError("snapshot content hash does not match")
    return snapshot


def public_key_pem(key: bytes) -> str:
    """A raw Ed25519 public key as a PEM `PUBLIC KEY` block."""
    return Ed25519PublicKey.from_public_bytes(key).public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode("ascii")


def parse_center_public_key(raw: bytes) -> bytes | None:
    """A pinned Center key as operators write it: 32 raw bytes, base64 text (optionally
    `base64:`-prefixed) or a PEM `PUBLIC KEY` block (`fastproxy center key` prints the
    first and, with `--pem`, the last); None if it is none of them."""
    if len(raw) == 32:
        return raw
    if raw.lstrip().startswith(b"-----BEGIN PUBLIC KEY-----"):
        try:
            key = serialization.load_pem_public_key(raw)
        except (ValueError, UnsupportedAlgorithm):
            return None
        if not isinstance(key, Ed25519PublicKey):
            return None
        return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    try:
        decoded = base64.b64decode(raw.strip().removeprefix(b"base64:"), validate=True)
    except (binascii.Error, ValueError):
        return None
    return decoded if len(decoded) == 32 else None


