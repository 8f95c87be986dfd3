"""Specification of snapshot signing: the Center signs, a node refuses anything else."""

from __future__ import annotations

import base64

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fastproxy.policy.signing import SnapshotError, public_bytes, sign_snapshot, verify_snapshot
from fastproxy.v1 import policy_pb2 as pb


def sample_snapshot() -> pb.PolicySnapshot:
    snapshot = pb.PolicySnapshot(revision=7, node_service="song_service", role=pb.ROLE_IN)
    snapshot.keys.add(name="song-enc-v1", type=pb.KEY_TYPE_AES_256_GCM, secret=bytes(32))
    service = snapshot.services.add(name="song_service", grpc_services=["demo.v1.Echo"],
                                    endpoints=["127.0.0.1:9101"], timeout_ms=2000)
    service.allow.add(caller="chat_service", methods=["/demo.v1.Echo/*"])
    return snapshot


@pytest.fixture(scope="module")
def center_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def flip(data: bytes, index: int) -> bytes:
    return data[:index] + bytes([data[index] ^ 0x01]) + data[index + 1:]


def test_signed_snapshot_verifies_to_the_same_snapshot(center_key: Ed25519PrivateKey) -> None:
    snapshot = sample_snapshot()
    signed = sign_snapshot(snapshot, center_key)
    assert verify_snapshot(signed) == snapshot
    assert verify_snapshot(signed, pinned_key=public_bytes(center_key)) == snapshot
    assert signed.center_public_key == public_bytes(center_key)


def test_signed_snapshot_survives_serialization(center_key: Ed25519PrivateKey) -> None:
    signed = sign_snapshot(sample_snapshot(), center_key)
    again = pb.SignedSnapshot.FromString(signed.SerializeToString())
    assert verify_snapshot(again, pinned_key=public_bytes(center_key)) == sample_snapshot()


@pytest.mark.parametrize("index", [0, 5, -1])
def test_a_flipped_byte_in_the_snapshot_is_refused(
    center_key: Ed25519PrivateKey, index: int
) -> None:
    signed = sign_snapshot(sample_snapshot(), center_key)
    signed.snapshot = flip(signed.snapshot, index % len(signed.snapshot))
    with pytest.raises(SnapshotError):
        verify_snapshot(signed)


@pytest.mark.parametrize("index", [0, 31, 63])
def test_a_flipped_byte_in_the_signature_is_refused(
    center_key: Ed25519PrivateKey, index: int
) -> None:
    signed = sign_snapshot(sample_snapshot(), center_key)
    signed.signature = flip(signed.signature, index)
    with pytest.raises(SnapshotError):
        verify_snapshot(signed, pinned_key=public_bytes(center_key))


def test_a_changed_content_hash_is_refused(center_key: Ed25519PrivateKey) -> None:
    signed = sign_snapshot(sample_snapshot(), center_key)
    last = signed.content_hash[-1]
    signed.content_hash = signed.content_hash[:-1] + ("0" if last != "0" else "1")
    with pytest.raises(SnapshotError, match="content hash"):
        verify_snapshot(signed)


def test_a_missing_signature_is_refused(center_key: Ed25519PrivateKey) -> None:
    signed = sign_snapshot(sample_snapshot(), center_key)
    signed.signature = b""
    with pytest.raises(SnapshotError):
        verify_snapshot(signed)


def test_a_snapshot_signed_by_another_key_is_refused_by_a_pinned_node(
    center_key: Ed25519PrivateKey,
) -> None:
    impostor = Ed25519PrivateKey.generate()
    signed = sign_snapshot(sample_snapshot(), impostor)
    verify_snapshot(signed)  # self-consistent, so only pinning can catch it
    with pytest.raises(SnapshotError, match="pinned"):
        verify_snapshot(signed, pinned_key=public_bytes(center_key))


def test_swapping_in_the_pinned_public_key_does_not_help_an_impostor(
    center_key: Ed25519PrivateKey,
) -> None:
    signed = sign_snapshot(sample_snapshot(), Ed25519PrivateKey.generate())
    signed.center_public_key = public_bytes(center_key)
    with pytest.raises(SnapshotError, match="signature"):
        verify_snapshot(signed, pinned_key=public_bytes(center_key))


def test_a_malformed_public_key_is_refused(center_key: Ed25519PrivateKey) -> None:
    signed = sign_snapshot(sample_snapshot(), center_key)
    signed.center_public_key = b"short"
    with pytest.raises(SnapshotError):
        verify_snapshot(signed)


def test_a_pinned_center_key_is_read_as_raw_bytes_or_base64() -> None:
    from fastproxy.policy.signing import parse_center_public_key

    key = bytes(range(32))
    encoded = base64.b64encode(key)
    assert parse_center_public_key(key) == key
    assert parse_center_public_key(encoded + b"\n") == key
    assert parse_center_public_key(b"base64:" + encoded) == key
    assert parse_center_public_key(b"not a key") is None
    assert parse_center_public_key(base64.b64encode(bytes(31))) is None
