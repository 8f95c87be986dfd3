"""Identity (docs/security.md, P1): no node holds material that lets it sign as another
service. With HMAC identities a node gets, for each peer, only the key of the pair that
names its own service; a `caller: "*"` rule ships pair keys too; so a callee B that also
calls C can neither open a session with C as its caller A nor answer A as C."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable

import pytest
import yaml
from support.core_policies import T0, key_entry, material, refused

from fastproxy.pipeline.handshake import CLIENT_CONTEXT, SERVER_CONTEXT
from fastproxy.pipeline.keys import Ephemeral, Signer, pair_key
from fastproxy.pipeline.node_policy import NodePolicy, NodeState
from fastproxy.pipeline.reasons import Reason
from fastproxy.policy import load_policy
from fastproxy.policy.scope import scope_snapshot
from fastproxy.v1 import policy_pb2 as pb
from fastproxy.v1 import session_pb2 as spb

A, B, C, D = "chat_service", "song_service", "album_service", "lyrics_service"
ID = {A: "chat-id", B: "song-id", C: "album-id", D: "lyrics-id"}
GRPC = {B: "demo.v1.Song", C: "demo.v1.Album"}
SONG_METHOD, ALBUM_METHOD = "/demo.v1.Song/Play", "/demo.v1.Album/List"
Sign = Callable[[bytes], bytes]


def policy_text(identity: str = "hmac-sha256", album_callers: tuple[str, ...] = (A, B)) -> str:
    """A calls B; A and B (or `album_callers`) call C; D only has an identity."""
    keys = {ID[name]: key_entry(ID[name], identity) for name in (A, B, C, D)}
    keys["album-enc"] = key_entry("album-enc", "aes-256-gcm")
    services: dict[str, object] = {
        A: {"identity": {"key": ID[A]}},
        D: {"identity": {"key": ID[D]}},
        B: {"grpc_services": [GRPC[B]], "identity": {"key": ID[B]},
            "allow": [{"caller": A, "methods": ["*"]}]},
        C: {"grpc_services": [GRPC[C]], "identity": {"key": ID[C]},
            "encrypt": {"key": "album-enc"},
            "allow": [{"caller": name, "methods": ["*"]} for name in album_callers]},
    }
    return yaml.safe_dump({"version": 1, "keys": keys, "services": services})


def snapshot(role: int, service: str, text: str) -> pb.PolicySnapshot:
    return scope_snapshot(load_policy(text), role, service)


def node(role: int, service: str, text: str) -> NodePolicy:
    return NodePolicy.from_snapshot(snapshot(role, service, text))


def held_material(*snapshots: pb.PolicySnapshot) -> set[bytes]:
    """Every secret byte string the snapshots give a node."""
    return {key.secret for snap in snapshots for key in snap.keys if key.secret}


def hello_as(caller: str, callee: str, sign: Sign, psk: str = "album-enc") -> bytes:
    body = spb.ClientHello(
        version=2, caller=caller, callee=callee, identity_key=ID[caller],
        ephemeral=Ephemeral().public, random=bytes(32), timestamp_ms=int(T0 * 1000),
        suite=spb.AEAD_SUITE_AES_256_GCM, psk=psk).SerializeToString()
    return spb.SignedHello(hello=body, signature=sign(CLIENT_CONTEXT + body)).SerializeToString()


def signatures_from(held: set[bytes], owner: str, peer: str) -> list[Sign]:
    """Every way to sign with what a node holds: each byte string as an HMAC key, as an HMAC
    identity secret (pair derived for `peer`), and as an Ed25519 seed."""
    ways: list[Sign] = []
    for secret in held:
        ways.append(lambda m, k=secret: hmac.new(k, m, hashlib.sha256).digest())
        ways.append(lambda m, k=secret: Signer(ID[owner], owner, hmac_secret=k).sign(m, peer))
        if len(secret) == 32:
            ways.append(lambda m, k=secret: Signer(ID[owner], owner, ed25519_seed=k).sign(m, peer))
    return ways


# --- what the snapshots hold -------------------------------------------------------------------


def test_an_hmac_callees_in_node_holds_pair_keys_for_its_callers_never_their_secrets() -> None:
    snap = snapshot(pb.ROLE_IN, C, policy_text())
    for caller in (A, B):
        key = next(k for k in snap.keys if k.name == ID[caller])
        assert key.secret == pair_key(material(ID[caller]), caller, C)
        assert (key.pair_signer, key.pair_peer) == (caller, C)
    others = {material(ID[name]) for name in (A, B, D)}
    assert not held_material(snap) & others


def test_a_wildcard_caller_rule_ships_pair_keys_only() -> None:
    snap = snapshot(pb.ROLE_IN, C, policy_text(album_callers=("*",)))
    callers = {key.name: key for key in snap.keys if key.name != ID[C] and key.name != "album-enc"}
    assert set(callers) == {ID[A], ID[B], ID[D]}
    for name, key in callers.items():
        assert key.pair_signer and key.pair_peer == C
        assert key.secret == pair_key(material(name), key.pair_signer, C)
    assert not held_material(snap) & {material(ID[name]) for name in (A, B, D)}


def test_an_hmac_callers_out_node_holds_pair_keys_for_its_callees_never_their_secrets() -> None:
    snap = snapshot(pb.ROLE_OUT, A, policy_text())
    for callee in (B, C):
        key = next(k for k in snap.keys if k.name == ID[callee])
        assert key.secret == pair_key(material(ID[callee]), callee, A)
        assert (key.pair_signer, key.pair_peer) == (callee, A)
    assert not held_material(snap) & {material(ID[name]) for name in (B, C, D)}


def test_an_ed25519_callees_in_node_holds_only_its_callers_public_keys() -> None:
    snap = snapshot(pb.ROLE_IN, C, policy_text(identity="ed25519"))
    for caller in (A, B):
        key = next(k for k in snap.keys if k.name == ID[caller])
        assert key.secret == b"" and len(key.public_key) == 32


# --- impersonation -----------------------------------------------------------------------------


@pytest.mark.parametrize("identity", ["hmac-sha256", "ed25519"])
def test_the_genuine_caller_opens_a_session_with_the_third_service(identity: str) -> None:
    text = policy_text(identity)
    caller = node(pb.ROLE_OUT, A, text)
    destination = caller.route(ALBUM_METHOD)
    handshake = caller.caller.handshake(destination, T0)
    answer = node(pb.ROLE_IN, C, text).accept(handshake.request, T0, NodeState())
    assert handshake.finish(answer, destination.verifiers, T0).callee == C


@pytest.mark.parametrize("identity", ["hmac-sha256", "ed25519"])
def test_a_callee_that_calls_another_service_cannot_open_a_session_there_as_its_caller(
        identity: str) -> None:
    text = policy_text(identity)
    held = held_material(snapshot(pb.ROLE_IN, B, text), snapshot(pb.ROLE_OUT, B, text))
    album = node(pb.ROLE_IN, C, text)
    ways = signatures_from(held, owner=A, peer=C)
    assert len(ways) >= 2 * len(held)
    for sign in ways:
        refused(Reason.UNAUTHENTICATED,
                lambda s=sign: album.accept(hello_as(A, C, s), T0, NodeState()))


@pytest.mark.parametrize("identity", ["hmac-sha256", "ed25519"])
def test_a_callee_cannot_answer_its_caller_as_another_service(identity: str) -> None:
    text = policy_text(identity)
    held = held_material(snapshot(pb.ROLE_IN, B, text), snapshot(pb.ROLE_OUT, B, text))
    caller = node(pb.ROLE_OUT, A, text)
    destination = caller.route(ALBUM_METHOD)
    handshake = caller.caller.handshake(destination, T0)
    body = spb.ServerHello(
        version=2, session_id=bytes(16), ephemeral=Ephemeral().public, identity_key=ID[C],
        lifetime_s=600, max_calls=100,
        client_hello_digest=hashlib.sha256(handshake.request).digest()).SerializeToString()
    for sign in signatures_from(held, owner=C, peer=A):
        answer = spb.SignedHello(hello=body, signature=sign(SERVER_CONTEXT + body)
                                 ).SerializeToString()
        refused(Reason.UNAUTHENTICATED,
                lambda a=answer: handshake.finish(a, destination.verifiers, T0))


def test_a_hello_made_for_one_callee_is_refused_by_another() -> None:
    text = policy_text()
    caller = node(pb.ROLE_OUT, A, text)
    to_song = caller.caller.handshake(caller.route(SONG_METHOD), T0)
    refused(Reason.UNAUTHENTICATED,
            lambda: node(pb.ROLE_IN, C, text).accept(to_song.request, T0, NodeState()))


def test_an_hmac_signature_towards_one_callee_does_not_sign_towards_another() -> None:
    text = policy_text()
    signer = Signer(ID[A], A, hmac_secret=material(ID[A]))
    towards_song = hello_as(A, C, lambda m: signer.sign(m, B))
    refused(Reason.UNAUTHENTICATED,
            lambda: node(pb.ROLE_IN, C, text).accept(towards_song, T0, NodeState()))
    towards_album = hello_as(A, C, lambda m: signer.sign(m, C))
    assert node(pb.ROLE_IN, C, text).accept(towards_album, T0, NodeState())
