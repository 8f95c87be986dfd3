"""Specification of scoping: a node receives only what it needs.

Its own service's secrets, the encryption keys of the services it may call or is called by,
the public half of an ed25519 identity key of a caller it must verify, the routes and
endpoints of the services it may call. A node of a service no rule mentions gets an empty
policy and no secret at all. Secrecy is checked on the serialized bytes a node would receive.
"""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fastproxy.pipeline.keys import pair_key
from fastproxy.policy import Policy, load_policy
from fastproxy.policy.scope import content_hash, scope_snapshot
from fastproxy.v1 import policy_pb2 as pb

SECRETS = {
    "song-enc-v1": bytes(range(0xA0, 0xC0)),
    "song-enc-v0": bytes(range(0xC0, 0xE0)),
    "chat-id-v1": b"chat-identity-hmac-secret-0123456",
    "song-id-v1": bytes(range(0x60, 0x80)),  # ed25519 seed
    "audit-id-v1": bytes(range(0x10, 0x30)),  # ed25519 seed
    "audit-enc-v1": bytes(range(0x30, 0x50)),
    "lonely-id-v1": b"lonely-identity-hmac-secret-98765",
}


def public_of(seed: bytes) -> bytes:
    return Ed25519PrivateKey.from_private_bytes(seed).public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def b64(data: bytes) -> str:
    return "base64:" + base64.b64encode(data).decode()


def policy_text(tmp_path: Path, *, song_timeout: int = 2000, audit_timeout: int = 0) -> str:
    pem = tmp_path / "song.pem"
    pem.write_bytes(Ed25519PrivateKey.from_private_bytes(SECRETS["song-id-v1"]).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    document = {
        "version": 1,
        "keys": {
            "song-enc-v1": {"type": "aes-256-gcm", "secret": b64(SECRETS["song-enc-v1"])},
            "song-enc-v0": {"type": "chacha20-poly1305",
                            "secret": b64(SECRETS["song-enc-v0"])},
            "chat-id-v1": {"type": "hmac-sha256", "secret": b64(SECRETS["chat-id-v1"])},
            "song-id-v1": {"type": "ed25519", "private": f"file:{pem}"},
            "audit-id-v1": {"type": "ed25519", "private": b64(SECRETS["audit-id-v1"])},
            "audit-enc-v1": {"type": "aes-256-gcm", "secret": b64(SECRETS["audit-enc-v1"])},
            "lonely-id-v1": {"type": "hmac-sha256", "secret": b64(SECRETS["lonely-id-v1"])},
        },
        "services": {
            # chat -> song (rate limited), song -> audit
            "song_service": {
                "grpc_services": ["demo.v1.Echo"],
                "endpoints": ["127.0.0.1:9101"],
                "identity": {"key": "song-id-v1"},
                "encrypt": {"key": "song-enc-v1", "accept": ["song-enc-v0"]},
                "compress": {"algorithm": "gzip", "min_bytes": 512},
                "timeout_ms": song_timeout,
                "retry": {"max_attempts": 2},
                "allow": [{"caller": "chat_service", "methods": ["/demo.v1.Echo/*"],
                           "rate_limit": {"rps": 10, "burst": 5}}],
            },
            "chat_service": {"identity": {"key": "chat-id-v1"}},
            "audit_service": {
                "grpc_services": ["demo.v1.Audit"],
                "endpoints": ["127.0.0.1:9201"],
                "identity": {"key": "audit-id-v1"},
                "encrypt": {"key": "audit-enc-v1"},
                "allow": [{"caller": "song_service", "methods": ["/demo.v1.Audit/Record"]}],
            },
            # mentioned by no rule
            "lonely_service": {"grpc_services": ["demo.v1.Lonely"],
                               "endpoints": ["127.0.0.1:9301"],
                               "identity": {"key": "lonely-id-v1"}},
        },
    }
    if audit_timeout:
        document["services"]["audit_service"]["timeout_ms"] = audit_timeout  # type: ignore[index]
    return yaml.safe_dump(document)


@pytest.fixture
def policy(tmp_path: Path) -> Policy:
    return load_policy(policy_text(tmp_path))


def wire(snapshot: pb.PolicySnapshot) -> bytes:
    return bytes(snapshot.SerializeToString(deterministic=True))


def secrets_found_in(data: bytes) -> set[str]:
    return {name for name, secret in SECRETS.items() if secret in data}


def keys_of(snapshot: pb.PolicySnapshot) -> dict[str, pb.Key]:
    return {key.name: key for key in snapshot.keys}


def services_of(snapshot: pb.PolicySnapshot) -> dict[str, pb.Service]:
    return {service.name: service for service in snapshot.services}


# --- nodes no rule concerns -------------------------------------------------------------


@pytest.mark.parametrize("role", [pb.ROLE_IN, pb.ROLE_OUT, pb.ROLE_CLIENT, pb.ROLE_APP])
def test_node_of_a_service_no_rule_mentions_gets_an_empty_policy(
    policy: Policy, role: pb.Role.ValueType
) -> None:
    snapshot = scope_snapshot(policy, role, "lonely_service")
    assert list(snapshot.keys) == [] and list(snapshot.services) == []
    assert snapshot.node_service == "lonely_service" and snapshot.role == role
    assert secrets_found_in(wire(snapshot)) == set()


@pytest.mark.parametrize("role", [pb.ROLE_IN, pb.ROLE_OUT])
def test_node_of_an_unknown_service_gets_an_empty_policy(
    policy: Policy, role: pb.Role.ValueType
) -> None:
    snapshot = scope_snapshot(policy, role, "ghost_service")
    assert secrets_found_in(wire(snapshot)) == set()
    assert list(snapshot.services) == []


def test_in_node_of_a_service_that_only_calls_gets_nothing(policy: Policy) -> None:
    snapshot = scope_snapshot(policy, pb.ROLE_IN, "chat_service")
    assert list(snapshot.services) == [] and secrets_found_in(wire(snapshot)) == set()


def test_out_node_of_a_service_that_is_only_called_gets_nothing(policy: Policy) -> None:
    snapshot = scope_snapshot(policy, pb.ROLE_OUT, "audit_service")
    assert list(snapshot.services) == [] and secrets_found_in(wire(snapshot)) == set()


# --- in-nodes -----------------------------------------------------------------------------


def test_in_node_gets_its_own_secrets_rules_and_callers_public_keys_only(
    policy: Policy,
) -> None:
    snapshot = scope_snapshot(policy, pb.ROLE_IN, "audit_service")
    data = wire(snapshot)
    # own identity (to sign responses) and own encryption key
    assert secrets_found_in(data) == {"audit-id-v1", "audit-enc-v1"}
    keys = keys_of(snapshot)
    assert set(keys) == {"audit-id-v1", "audit-enc-v1", "song-id-v1"}
    # the caller's ed25519 identity: public half only, never the seed
    assert keys["song-id-v1"].public_key == public_of(SECRETS["song-id-v1"])
    assert keys["song-id-v1"].secret == b""
    assert keys["song-id-v1"].type == pb.KEY_TYPE_ED25519
    assert keys["audit-id-v1"].secret == SECRETS["audit-id-v1"]
    services = services_of(snapshot)
    assert set(services) == {"audit_service", "song_service"}
    own = services["audit_service"]
    assert [(r.caller, list(r.methods)) for r in own.allow] == [
        ("song_service", ["/demo.v1.Audit/Record"])]
    # the caller is described only by its identity: no routes, endpoints or rules
    caller = services["song_service"]
    assert caller.identity.key == "song-id-v1"
    assert list(caller.endpoints) == [] and list(caller.grpc_services) == []
    assert list(caller.allow) == [] and not caller.HasField("encrypt")


def test_in_node_gets_only_the_pair_key_of_an_hmac_caller_never_its_secret(
        policy: Policy) -> None:
    snapshot = scope_snapshot(policy, pb.ROLE_IN, "song_service")
    # A caller's HMAC secret would let the callee sign as the caller to anyone (finding 1 of
    # the protocol review): the callee gets the key of the pair (caller -> callee) only.
    assert secrets_found_in(wire(snapshot)) == {"song-id-v1", "song-enc-v1", "song-enc-v0"}
    pair = keys_of(snapshot)["chat-id-v1"]
    assert (pair.pair_signer, pair.pair_peer) == ("chat_service", "song_service")
    assert pair.secret == pair_key(SECRETS["chat-id-v1"], "chat_service", "song_service")
    own = services_of(snapshot)["song_service"]
    assert own.timeout_ms == 2000
    [rule] = own.allow
    assert rule.caller == "chat_service"
    assert (rule.rate_limit.rps, rule.rate_limit.burst) == (10.0, 5)
    assert list(own.encrypt.accept) == ["song-enc-v0"]


# --- out-nodes ----------------------------------------------------------------------------


@pytest.mark.parametrize("role", [pb.ROLE_OUT, pb.ROLE_CLIENT])
def test_out_node_gets_destination_routes_endpoints_and_encryption_key(
    policy: Policy, role: pb.Role.ValueType
) -> None:
    snapshot = scope_snapshot(policy, role, "chat_service")
    # its own identity secret, the callee's encryption keys, the callee's identity public
    assert secrets_found_in(wire(snapshot)) == {"chat-id-v1", "song-enc-v1", "song-enc-v0"}
    keys = keys_of(snapshot)
    assert keys["song-id-v1"].secret == b""
    assert keys["song-id-v1"].public_key == public_of(SECRETS["song-id-v1"])
    services = services_of(snapshot)
    assert set(services) == {"chat_service", "song_service"}
    song = services["song_service"]
    assert list(song.grpc_services) == ["demo.v1.Echo"]
    assert list(song.endpoints) == ["127.0.0.1:9101"]
    assert song.encrypt.key == "song-enc-v1"
    assert (song.compress.algorithm, song.compress.min_bytes) == ("gzip", 512)
    assert song.timeout_ms == 2000 and song.retry.max_attempts == 2
    assert list(song.allow) == []  # the callee's rules are the in-node's business
    assert "audit_service" not in services and "lonely_service" not in services


def test_app_node_gets_routes_timeouts_and_retry_but_no_key_and_no_endpoint(
        policy: Policy) -> None:
    # the client SDK sending through an out-proxy: it only sets deadlines and retries
    snapshot = scope_snapshot(policy, pb.ROLE_APP, "chat_service")
    assert secrets_found_in(wire(snapshot)) == set()
    assert list(snapshot.keys) == []
    services = services_of(snapshot)
    assert set(services) == {"song_service"}
    song = services["song_service"]
    assert list(song.grpc_services) == ["demo.v1.Echo"]
    assert song.timeout_ms == 2000 and song.retry.max_attempts == 2
    assert list(song.endpoints) == [] and not song.HasField("encrypt")
    assert not song.HasField("identity") and list(song.allow) == []


def test_out_node_of_a_middle_service_gets_its_seed_but_no_other_seed(policy: Policy) -> None:
    snapshot = scope_snapshot(policy, pb.ROLE_OUT, "song_service")
    assert secrets_found_in(wire(snapshot)) == {"song-id-v1", "audit-enc-v1"}
    assert keys_of(snapshot)["audit-id-v1"].public_key == public_of(SECRETS["audit-id-v1"])
    assert set(services_of(snapshot)) == {"song_service", "audit_service"}


def test_registered_endpoints_merge_with_static_ones_without_duplicates(
    policy: Policy,
) -> None:
    registered = {
        "song_service": ["127.0.0.1:9102", "127.0.0.1:9101", "127.0.0.1:9102"],
        "lonely_service": ["127.0.0.1:9999"],
    }
    snapshot = scope_snapshot(policy, pb.ROLE_OUT, "chat_service", registered)
    services = services_of(snapshot)
    assert list(services["song_service"].endpoints) == ["127.0.0.1:9101", "127.0.0.1:9102"]
    assert "lonely_service" not in services


def test_star_caller_lets_every_identified_service_call(tmp_path: Path) -> None:
    text = policy_text(tmp_path).replace("caller: song_service", "caller: '*'")
    policy = load_policy(text)
    for caller in ("chat_service", "lonely_service", "song_service"):
        snapshot = scope_snapshot(policy, pb.ROLE_OUT, caller)
        assert "audit_service" in services_of(snapshot), caller
        assert "audit-enc-v1" in secrets_found_in(wire(snapshot))
    in_snapshot = scope_snapshot(policy, pb.ROLE_IN, "audit_service")
    assert {"chat_service", "lonely_service", "song_service"} <= set(services_of(in_snapshot))
    [rule] = services_of(in_snapshot)["audit_service"].allow
    assert rule.caller == "*"
    # callers' ed25519 seeds still stay home
    assert "song-id-v1" not in secrets_found_in(wire(in_snapshot))


# --- content hash -------------------------------------------------------------------------


def test_content_hash_ignores_the_revision(policy: Policy) -> None:
    snapshot = scope_snapshot(policy, pb.ROLE_IN, "song_service")
    before = content_hash(snapshot)
    snapshot.revision = 42
    assert content_hash(snapshot) == before
    assert snapshot.revision == 42  # hashing does not touch the snapshot


def test_content_hash_is_stable_for_equal_policies(tmp_path: Path) -> None:
    first = load_policy(policy_text(tmp_path))
    second = load_policy(policy_text(tmp_path))
    for role, service in ((pb.ROLE_IN, "song_service"), (pb.ROLE_OUT, "chat_service"),
                          (pb.ROLE_IN, "lonely_service")):
        assert content_hash(scope_snapshot(first, role, service)) == content_hash(
            scope_snapshot(second, role, service))


def test_content_hash_changes_when_content_changes(tmp_path: Path) -> None:
    base = load_policy(policy_text(tmp_path))
    slower = load_policy(policy_text(tmp_path, song_timeout=3000))
    assert content_hash(scope_snapshot(base, pb.ROLE_OUT, "chat_service")) != content_hash(
        scope_snapshot(slower, pb.ROLE_OUT, "chat_service"))
    # a change elsewhere (audit's timeout) does not concern chat's out-node
    more_audit = load_policy(policy_text(tmp_path, audit_timeout=10))
    assert more_audit.services["audit_service"].timeout_ms == 10
    assert content_hash(scope_snapshot(base, pb.ROLE_OUT, "chat_service")) == content_hash(
        scope_snapshot(more_audit, pb.ROLE_OUT, "chat_service"))
    registered = {"song_service": ["127.0.0.1:9105"]}
    assert content_hash(scope_snapshot(base, pb.ROLE_OUT, "chat_service")) != content_hash(
        scope_snapshot(base, pb.ROLE_OUT, "chat_service", registered))
