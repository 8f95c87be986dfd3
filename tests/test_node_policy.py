"""Compiling a node's snapshot (`NodePolicy.from_snapshot`): what a compiled policy names,
what each side gets from it, and every inconsistency refused with a `NodePolicyError` that
says what is wrong (the node NACKs the snapshot and keeps its policy)."""

from __future__ import annotations

import pytest
from support.core_policies import CALLEE, CALLER, METHOD, Setup, refused

from fastproxy.pipeline.node_policy import NodePolicy, NodePolicyError
from fastproxy.pipeline.reasons import Reason
from fastproxy.policy import load_policy
from fastproxy.policy.scope import scope_snapshot
from fastproxy.v1 import policy_pb2 as pb
from fastproxy.v1 import session_pb2 as spb


def snapshot(role: int, service: str, setup: Setup | None = None) -> pb.PolicySnapshot:
    return scope_snapshot(load_policy((setup or Setup()).yaml_text()), role, service)


def key_named(snap: pb.PolicySnapshot, name: str) -> pb.Key:
    return next(key for key in snap.keys if key.name == name)


def test_a_compiled_policy_names_its_revision_service_and_role() -> None:
    snap = snapshot(pb.ROLE_IN, CALLEE)
    snap.revision = 42
    policy = NodePolicy.from_snapshot(snap)
    assert (policy.revision, policy.service, policy.role) == (42, CALLEE, pb.ROLE_IN)


@pytest.mark.parametrize(("encryption", "suite"), [
    ("aes-256-gcm", spb.AEAD_SUITE_AES_256_GCM),
    ("chacha20-poly1305", spb.AEAD_SUITE_CHACHA20_POLY1305),
    (None, spb.AEAD_SUITE_AES_256_GCM)])
def test_a_destination_names_the_callees_suite_and_encryption_key(
        encryption: str | None, suite: int) -> None:
    destination = Setup(encryption=encryption).caller_policy().route(METHOD)
    assert destination.suite == suite
    assert destination.psk_id == ("song-enc-v1" if encryption else "")
    assert (destination.psk is None) == (encryption is None)
    assert set(destination.verifiers) == {"song-id-v1"}


def test_an_out_node_routes_each_grpc_service_to_its_destination() -> None:
    assert Setup().caller_policy().routes == {"demo.v1.Echo": CALLEE}


def test_an_in_node_routes_nothing() -> None:
    callee = Setup().callee_policy()
    assert callee.routes == {}
    refused(Reason.NO_ROUTE, lambda: callee.route(METHOD))


def test_a_snapshot_naming_no_node_service_is_refused() -> None:
    snap = snapshot(pb.ROLE_IN, CALLEE)
    snap.node_service = ""
    with pytest.raises(NodePolicyError, match="no node service"):
        NodePolicy.from_snapshot(snap)


def test_a_snapshot_without_a_role_is_refused() -> None:
    snap = snapshot(pb.ROLE_IN, CALLEE)
    snap.role = pb.ROLE_UNSPECIFIED
    with pytest.raises(NodePolicyError, match="role"):
        NodePolicy.from_snapshot(snap)


def test_a_snapshot_missing_a_referenced_key_is_refused() -> None:
    snap = snapshot(pb.ROLE_OUT, CALLER)
    del snap.keys[:]
    with pytest.raises(NodePolicyError, match="not in the snapshot"):
        NodePolicy.from_snapshot(snap)


def test_a_key_that_appears_twice_is_refused() -> None:
    snap = snapshot(pb.ROLE_IN, CALLEE)
    snap.keys.append(snap.keys[0])
    with pytest.raises(NodePolicyError, match="appears twice"):
        NodePolicy.from_snapshot(snap)


def test_a_service_that_appears_twice_is_refused() -> None:
    snap = snapshot(pb.ROLE_IN, CALLEE)
    snap.services.append(snap.services[0])
    with pytest.raises(NodePolicyError, match="appears twice"):
        NodePolicy.from_snapshot(snap)


def test_an_identity_without_its_private_half_is_refused() -> None:
    snap = snapshot(pb.ROLE_IN, CALLEE, Setup(callee_identity="ed25519"))
    key_named(snap, "song-id-v1").secret = b""
    with pytest.raises(NodePolicyError, match="private half"):
        NodePolicy.from_snapshot(snap)


def test_a_pair_key_made_for_another_service_is_refused() -> None:
    snap = snapshot(pb.ROLE_IN, CALLEE)
    key_named(snap, "chat-id-v1").pair_peer = "album_service"
    with pytest.raises(NodePolicyError, match="pair key for 'album_service'"):
        NodePolicy.from_snapshot(snap)


def test_a_short_hmac_key_is_refused() -> None:
    snap = snapshot(pb.ROLE_IN, CALLEE)
    key_named(snap, "chat-id-v1").secret = b"short"
    with pytest.raises(NodePolicyError, match="chat-id-v1"):
        NodePolicy.from_snapshot(snap)


def test_a_short_encryption_key_is_refused() -> None:
    snap = snapshot(pb.ROLE_IN, CALLEE)
    key_named(snap, "song-enc-v1").secret = bytes(16)
    with pytest.raises(NodePolicyError, match="song-enc-v1"):
        NodePolicy.from_snapshot(snap)


def test_a_grpc_service_routed_to_two_services_is_refused() -> None:
    snap = snapshot(pb.ROLE_OUT, CALLER)
    twin = snap.services.add()
    twin.CopyFrom(next(s for s in snap.services if s.name == CALLEE))
    twin.name = "song_twin"
    with pytest.raises(NodePolicyError, match="routed to both"):
        NodePolicy.from_snapshot(snap)


def test_an_unknown_compression_algorithm_is_refused() -> None:
    snap = snapshot(pb.ROLE_IN, CALLEE)
    next(s for s in snap.services if s.name == CALLEE).compress.algorithm = "brotli"
    with pytest.raises(NodePolicyError, match="brotli"):
        NodePolicy.from_snapshot(snap)


def test_a_bad_method_pattern_is_refused() -> None:
    snap = snapshot(pb.ROLE_IN, CALLEE)
    next(s for s in snap.services if s.name == CALLEE).allow[0].methods.append(
        "/demo.v1.Echo/Say*")
    with pytest.raises(NodePolicyError, match="allow"):
        NodePolicy.from_snapshot(snap)


def test_a_rate_limit_without_tokens_is_refused() -> None:
    snap = snapshot(pb.ROLE_IN, CALLEE)
    rule = next(s for s in snap.services if s.name == CALLEE).allow[0]
    rule.rate_limit.rps = 0
    with pytest.raises(NodePolicyError, match="rate limit"):
        NodePolicy.from_snapshot(snap)
