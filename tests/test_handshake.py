"""The session handshake (docs/protocol.md, section 3): one round trip opens the same session
on both sides; the callee refuses every hello that is not from a caller it knows, fresh and
made for it, and the caller every answer that is not the callee's to its own hello; sessions
end with their lifetime, their call limit and any change of their keys."""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

import pytest
from support.core_policies import (
    CALLEE,
    CALLER,
    METHOD,
    SIGNING_TYPES,
    T0,
    Setup,
    connect,
    material,
    open_session,
    refused,
)

from fastproxy.pipeline.handshake import (
    CLIENT_CONTEXT,
    CLOCK_AHEAD_S,
    SERVER_CONTEXT,
    CalleeSessions,
    CallerHandshake,
    accept_hello,
)
from fastproxy.pipeline.keys import Ephemeral, Signer
from fastproxy.pipeline.node_policy import NodePolicy, NodeState
from fastproxy.pipeline.reasons import FastProxyError, Reason
from fastproxy.policy import load_policy
from fastproxy.policy.scope import scope_snapshot
from fastproxy.v1 import policy_pb2 as pb
from fastproxy.v1 import session_pb2 as spb

# A point of order 8 on Curve25519: any exchange with it gives no shared secret.
LOW_ORDER_POINT = bytes.fromhex(
    "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800")


def signer(key: str, owner: str, key_type: str = "hmac-sha256") -> Signer:
    """The signer a node of `owner` builds from the test material of `key`."""
    if key_type == "ed25519":
        return Signer(key, owner, ed25519_seed=material(key))
    return Signer(key, owner, hmac_secret=material(key))


CHAT = signer("chat-id-v1", CALLER)
SONG = signer("song-id-v1", CALLEE)


def client_hello(sign_with: Signer = CHAT, context: bytes = CLIENT_CONTEXT,
                 **fields: Any) -> bytes:
    """A signed client hello made by hand as the protocol says, with `fields` changed."""
    values: dict[str, Any] = {
        "version": 2, "caller": CALLER, "callee": CALLEE, "identity_key": "chat-id-v1",
        "ephemeral": Ephemeral().public, "random": bytes(32), "timestamp_ms": int(T0 * 1000),
        "suite": spb.AEAD_SUITE_AES_256_GCM, "psk": "song-enc-v1"}
    values.update(fields)
    body = spb.ClientHello(**values).SerializeToString()
    return spb.SignedHello(hello=body, signature=sign_with.sign(context + body, CALLEE)
                           ).SerializeToString()


def server_hello(handshake: CallerHandshake, sign_with: Signer = SONG, **fields: Any) -> bytes:
    """A signed answer to `handshake` made by hand, with `fields` changed."""
    values: dict[str, Any] = {
        "version": 2, "session_id": bytes(range(16)), "ephemeral": Ephemeral().public,
        "identity_key": "song-id-v1", "lifetime_s": 600, "max_calls": 1 << 32,
        "client_hello_digest": hashlib.sha256(handshake.request).digest()}
    values.update(fields)
    body = spb.ServerHello(**values).SerializeToString()
    return spb.SignedHello(hello=body, signature=sign_with.sign(SERVER_CONTEXT + body, CALLER)
                           ).SerializeToString()


def accept(hello: bytes, now: float = T0, setup: Setup | None = None) -> bytes:
    return (setup or Setup()).callee_policy().accept(hello, now, NodeState())


def start(setup: Setup | None = None) -> tuple[NodePolicy, CallerHandshake]:
    caller = (setup or Setup()).caller_policy()
    return caller, caller.caller.handshake(caller.route(METHOD), T0)


def finish(caller: NodePolicy, handshake: CallerHandshake, answer: bytes) -> object:
    return handshake.finish(answer, caller.route(METHOD).verifiers, T0)


# --- opening a session -------------------------------------------------------------------------


@pytest.mark.parametrize("caller_identity", SIGNING_TYPES)
@pytest.mark.parametrize("callee_identity", SIGNING_TYPES)
@pytest.mark.parametrize("encryption", ["aes-256-gcm", "chacha20-poly1305", None])
def test_a_handshake_opens_the_same_session_on_both_sides(
        caller_identity: str, callee_identity: str, encryption: str | None) -> None:
    caller, callee = Setup(caller_identity=caller_identity, callee_identity=callee_identity,
                           encryption=encryption).pair()
    state = NodeState()
    session = open_session(caller, callee, state)
    held = state.sessions.find(session.session_id, T0)
    assert held is not None
    assert (held.caller, held.identity_key, session.callee) == (CALLER, "chat-id-v1", CALLEE)
    assert session.clear == held.clear == (encryption is None)
    outbound, inbound = connect(caller, callee, state, session=session)
    assert inbound.open_request(outbound.seal_request(b"ping")) == b"ping"


def test_each_handshake_opens_a_session_of_its_own() -> None:
    caller, callee = Setup().pair()
    state = NodeState()
    first, second = open_session(caller, callee, state), open_session(caller, callee, state)
    assert first.session_id != second.session_id
    assert len(state.sessions) == 2


def test_a_hello_made_by_hand_as_the_protocol_says_is_accepted() -> None:
    assert spb.SignedHello.FromString(accept(client_hello())).signature


# --- the callee refuses hellos -----------------------------------------------------------------


@pytest.mark.parametrize("version", [0, 1, 3])
def test_a_hello_of_another_protocol_version_is_refused(version: int) -> None:
    error = refused(Reason.UNAUTHENTICATED, lambda: accept(client_hello(version=version)))
    assert "version" in error.detail


def test_a_hello_for_another_service_is_refused() -> None:
    error = refused(Reason.UNAUTHENTICATED,
                    lambda: accept(client_hello(callee="album_service")))
    assert "album_service" in error.detail


def test_a_hello_from_a_caller_the_callee_does_not_know_is_refused() -> None:
    stranger = signer("stranger-id", "stranger_service")
    refused(Reason.UNAUTHENTICATED, lambda: accept(client_hello(
        stranger, caller="stranger_service", identity_key="stranger-id")))


def test_a_hello_signed_with_a_key_the_callee_does_not_accept_is_refused() -> None:
    retired = signer("chat-id-v0", CALLER)
    refused(Reason.UNAUTHENTICATED,
            lambda: accept(client_hello(retired, identity_key="chat-id-v0")))


def test_a_hello_with_a_bad_signature_is_refused() -> None:
    forger = Signer("chat-id-v1", CALLER, hmac_secret=material("a guess"))
    refused(Reason.UNAUTHENTICATED, lambda: accept(client_hello(forger)))


def test_unknown_callers_unknown_keys_and_bad_signatures_get_one_answer() -> None:
    """A client learns nothing of who is allowed."""
    hellos = [client_hello(signer("stranger-id", "x"), caller="x", identity_key="stranger-id"),
              client_hello(signer("chat-id-v0", CALLER), identity_key="chat-id-v0"),
              client_hello(Signer("chat-id-v1", CALLER, hmac_secret=material("a guess")))]
    details = {refused(Reason.UNAUTHENTICATED, lambda h=h: accept(h)).detail for h in hellos}
    assert len(details) == 1


def test_a_signature_made_for_a_server_hello_does_not_sign_a_client_hello() -> None:
    refused(Reason.UNAUTHENTICATED, lambda: accept(client_hello(context=SERVER_CONTEXT)))


@pytest.mark.parametrize("skew", [-31.0, 31.0])
def test_a_hello_outside_the_clock_window_is_refused(skew: float) -> None:
    error = refused(Reason.UNAUTHENTICATED, lambda: accept(client_hello(), T0 + skew))
    assert "too old or too far ahead" in error.detail


@pytest.mark.parametrize("skew", [-(CLOCK_AHEAD_S - 1), 29.0])
def test_a_hello_inside_the_clock_window_is_accepted(skew: float) -> None:
    """At most 30 s old, and at most `CLOCK_AHEAD_S` ahead of the callee's clock."""
    assert accept(client_hello(), T0 + skew)


def test_a_hello_naming_another_aead_suite_is_refused() -> None:
    refused(Reason.UNAUTHENTICATED,
            lambda: accept(client_hello(suite=spb.AEAD_SUITE_CHACHA20_POLY1305)))


def test_a_hello_without_an_encryption_key_is_refused_by_a_callee_that_encrypts() -> None:
    error = refused(Reason.UNAUTHENTICATED, lambda: accept(client_hello(psk="")))
    assert "encryption key" in error.detail


def test_a_hello_naming_an_encryption_key_is_refused_by_a_callee_without_one() -> None:
    refused(Reason.UNAUTHENTICATED,
            lambda: accept(client_hello(), setup=Setup(encryption=None)))


def test_a_hello_naming_an_encryption_key_the_callee_does_not_accept_is_refused() -> None:
    refused(Reason.UNAUTHENTICATED, lambda: accept(client_hello(psk="song-enc-v0")))


@pytest.mark.parametrize("ephemeral", [b"", bytes(31), bytes(33)], ids=["0", "31", "33"])
def test_a_hello_whose_ephemeral_key_is_not_32_bytes_is_refused(ephemeral: bytes) -> None:
    refused(Reason.UNAUTHENTICATED, lambda: accept(client_hello(ephemeral=ephemeral)))


@pytest.mark.parametrize("ephemeral", [bytes(32), LOW_ORDER_POINT], ids=["zero", "order-8"])
def test_a_hello_whose_ephemeral_key_gives_no_shared_secret_is_refused(
        ephemeral: bytes) -> None:
    error = refused(Reason.UNAUTHENTICATED, lambda: accept(client_hello(ephemeral=ephemeral)))
    assert "no shared secret" in error.detail


@pytest.mark.parametrize("hello", [
    b"", b"\xff\xff", spb.SignedHello(hello=b"x").SerializeToString(),
    spb.SignedHello(signature=b"x").SerializeToString(),
    spb.SignedHello(hello=b"\xff\xff", signature=b"x").SerializeToString(),
], ids=["empty", "garbage", "no-signature", "no-hello", "hello-garbage"])
def test_a_hello_that_is_none_is_refused(hello: bytes) -> None:
    refused(Reason.UNAUTHENTICATED, lambda: accept(hello))


def test_a_caller_no_rule_names_cannot_open_a_session() -> None:
    text = Setup().yaml_text().replace("caller: chat_service", "caller: song_service")
    callee = NodePolicy.from_snapshot(scope_snapshot(load_policy(text), pb.ROLE_IN, CALLEE))
    _, handshake = start()
    refused(Reason.UNAUTHENTICATED, lambda: callee.accept(handshake.request, T0, NodeState()))


def test_a_service_no_rule_concerns_opens_no_session() -> None:
    callee = Setup(rules=[]).callee_policy()
    refused(Reason.UNAUTHENTICATED, lambda: callee.accept(client_hello(), T0, NodeState()))


# --- the caller refuses answers ----------------------------------------------------------------


def test_an_answer_to_another_hello_is_refused() -> None:
    caller, first = start()
    second = caller.caller.handshake(caller.route(METHOD), T0)
    answer = accept(first.request)
    error = refused(Reason.UNAUTHENTICATED, lambda: finish(caller, second, answer))
    assert "not to this hello" in error.detail


def test_an_answer_not_signed_by_the_callee_is_refused() -> None:
    caller, handshake = start()
    forger = Signer("song-id-v1", CALLEE, hmac_secret=material("a guess"))
    error = refused(Reason.UNAUTHENTICATED,
                    lambda: finish(caller, handshake, server_hello(handshake, forger)))
    assert "not signed by" in error.detail


def test_an_answer_signed_with_a_key_the_caller_does_not_accept_is_refused() -> None:
    caller, handshake = start()
    other = signer("song-id-v0", CALLEE)
    refused(Reason.UNAUTHENTICATED, lambda: finish(
        caller, handshake, server_hello(handshake, other, identity_key="song-id-v0")))


def test_an_answer_made_by_hand_as_the_protocol_says_opens_a_session() -> None:
    caller, handshake = start()
    assert finish(caller, handshake, server_hello(handshake)) is not None


@pytest.mark.parametrize("version", [0, 1, 3])
def test_an_answer_of_another_protocol_version_is_refused(version: int) -> None:
    caller, handshake = start()
    refused(Reason.UNAUTHENTICATED,
            lambda: finish(caller, handshake, server_hello(handshake, version=version)))


@pytest.mark.parametrize("fields", [{"session_id": bytes(8)}, {"session_id": b""},
                                    {"max_calls": 0}], ids=["short-id", "no-id", "no-calls"])
def test_an_answer_naming_no_usable_session_is_refused(fields: dict[str, Any]) -> None:
    caller, handshake = start()
    refused(Reason.UNAUTHENTICATED,
            lambda: finish(caller, handshake, server_hello(handshake, **fields)))


@pytest.mark.parametrize("ephemeral", [bytes(32), LOW_ORDER_POINT, bytes(31)],
                         ids=["zero", "order-8", "short"])
def test_an_answer_whose_ephemeral_key_gives_no_shared_secret_is_refused(
        ephemeral: bytes) -> None:
    caller, handshake = start()
    refused(Reason.UNAUTHENTICATED,
            lambda: finish(caller, handshake, server_hello(handshake, ephemeral=ephemeral)))


@pytest.mark.parametrize("answer", [b"", b"\xff\xff",
                                    spb.SignedHello(hello=b"x").SerializeToString()],
                         ids=["empty", "garbage", "no-signature"])
def test_an_answer_that_is_none_is_refused(answer: bytes) -> None:
    caller, handshake = start()
    refused(Reason.UNAUTHENTICATED, lambda: finish(caller, handshake, answer))


def test_a_refused_answer_leaves_the_handshake_waiting_for_the_genuine_one() -> None:
    caller, handshake = start()
    answer = accept(handshake.request)
    forged = server_hello(handshake, Signer("song-id-v1", CALLEE,
                                            hmac_secret=material("a guess")))
    refused(Reason.UNAUTHENTICATED, lambda: finish(caller, handshake, forged))
    assert finish(caller, handshake, answer) is not None


# --- how long a session serves -----------------------------------------------------------------


def test_call_numbers_of_a_session_start_at_1_and_count_up() -> None:
    session = open_session(*Setup().pair(), NodeState())
    assert [session.take_call_number() for _ in range(3)] == [1, 2, 3]


def test_a_caller_opens_its_next_session_after_80_percent_of_the_lifetime() -> None:
    """Due at 80% of the lifetime (the next one opens), still used until 95% (while the next
    one opens aside), none after: a call started then has 30 s to reach the callee."""
    caller, callee = Setup().pair()
    session = open_session(caller, callee, NodeState())
    destination = caller.route(METHOD)
    assert not session.due(T0 + 479)
    assert session.due(T0 + 480)
    assert caller.caller.serves(session, destination, T0 + 569)
    assert not caller.caller.serves(session, destination, T0 + 570)


def test_a_session_is_due_after_80_percent_of_its_calls() -> None:
    caller, callee = Setup().pair()
    hello_policy = callee.callee.hello
    assert hello_policy is not None
    handshake = caller.caller.handshake(caller.route(METHOD), T0)
    answer, _ = accept_hello(handshake.request, dataclasses.replace(hello_policy, max_calls=10),
                             T0)
    session = handshake.finish(answer, caller.route(METHOD).verifiers, T0)
    numbers = []
    while not session.due(T0):
        numbers.append(session.take_call_number())
    assert numbers == list(range(1, 8))


def test_a_session_serves_no_more_calls_than_the_callee_allows() -> None:
    caller, callee = Setup().pair()
    hello_policy = callee.callee.hello
    assert hello_policy is not None
    handshake = caller.caller.handshake(caller.route(METHOD), T0)
    answer, _ = accept_hello(handshake.request, dataclasses.replace(hello_policy, max_calls=3),
                             T0)
    session = handshake.finish(answer, caller.route(METHOD).verifiers, T0)
    served = 0
    while caller.caller.serves(session, caller.route(METHOD), T0):
        session.take_call_number()
        served += 1
    assert 0 < served <= 3


def test_a_session_serves_no_call_once_the_callers_identity_key_changed() -> None:
    old = Setup(caller_key="chat-id-v1", caller_accept=["chat-id-v2"])
    new = Setup(caller_key="chat-id-v2", caller_accept=["chat-id-v1"])
    session = open_session(*old.pair(), NodeState())
    caller = new.caller_policy()
    assert not caller.caller.serves(session, caller.route(METHOD), T0)


def test_a_session_serves_no_call_once_the_callees_encryption_key_changed() -> None:
    old = Setup(enc_key="song-enc-v1", enc_accept=["song-enc-v2"])
    new = Setup(enc_key="song-enc-v2", enc_accept=["song-enc-v1"])
    session = open_session(*old.pair(), NodeState())
    caller = new.caller_policy()
    assert not caller.caller.serves(session, caller.route(METHOD), T0)
    assert old.caller_policy().caller.serves(session, old.caller_policy().route(METHOD), T0)


def test_a_session_past_its_lifetime_is_an_unknown_session() -> None:
    caller, callee = Setup().pair()
    state = NodeState()
    session = open_session(caller, callee, state)
    outbound = caller.outbound(caller.route(METHOD), session, METHOD, (), T0 + 600)
    error = refused(Reason.UNAUTHENTICATED,
                    lambda: callee.inbound(METHOD, outbound.metadata, T0 + 600, state))
    assert error.session_unknown
    assert len(state.sessions) == 0


def test_a_session_whose_caller_key_was_retired_is_an_unknown_session_and_forgotten() -> None:
    caller, callee = Setup(caller_key="chat-id-v1", caller_accept=["chat-id-v2"]).pair()
    state = NodeState()
    session = open_session(caller, callee, state)
    retired = Setup(caller_key="chat-id-v2").callee_policy()
    error = refused(Reason.UNAUTHENTICATED,
                    lambda: connect(caller, retired, state, session=session))
    assert error.session_unknown
    assert state.sessions.find(session.session_id, T0) is None


def test_a_session_whose_encryption_key_was_retired_is_an_unknown_session() -> None:
    caller, callee = Setup(enc_key="song-enc-v1", enc_accept=["song-enc-v2"]).pair()
    state = NodeState()
    session = open_session(caller, callee, state)
    retired = Setup(enc_key="song-enc-v2").callee_policy()
    error = refused(Reason.UNAUTHENTICATED,
                    lambda: connect(caller, retired, state, session=session))
    assert error.session_unknown


def test_the_callee_keeps_a_bounded_number_of_sessions_forgetting_the_least_recently_used(
        ) -> None:
    caller, callee = Setup().pair()
    state = NodeState()
    state.sessions = CalleeSessions(max_sessions=2)
    first = open_session(caller, callee, state)
    second = open_session(caller, callee, state)
    connect(caller, callee, state, session=first)  # first is now the more recently used
    open_session(caller, callee, state)
    assert len(state.sessions) == 2
    assert state.sessions.find(first.session_id, T0) is not None
    error = refused(Reason.UNAUTHENTICATED,
                    lambda: connect(caller, callee, state, session=second))
    assert error.session_unknown


# --- key rotation ------------------------------------------------------------------------------

ENC_ROTATION = [("song-enc-v1", ()), ("song-enc-v1", ("song-enc-v2",)),
                ("song-enc-v2", ("song-enc-v1",)), ("song-enc-v2", ())]
ID_ROTATION = [("chat-id-v1", ()), ("chat-id-v1", ("chat-id-v2",)),
               ("chat-id-v2", ("chat-id-v1",)), ("chat-id-v2", ())]


@pytest.mark.parametrize("step", range(3))
def test_key_rotation_fails_no_session_between_neighbouring_revisions(step: int) -> None:
    """Add a key, switch to it, remove the old one: any node may run either of two
    neighbouring revisions while the applies spread, and every new session still works."""
    revisions = [Setup(enc_key=ek, enc_accept=ea, caller_key=ik, caller_accept=ia)
                 for (ek, ea), (ik, ia) in zip(ENC_ROTATION, ID_ROTATION, strict=True)]
    for caller_setup in revisions[step:step + 2]:
        for callee_setup in revisions[step:step + 2]:
            try:
                outbound, inbound = connect(caller_setup.caller_policy(),
                                            callee_setup.callee_policy(), NodeState())
            except FastProxyError as error:  # pragma: no cover - the assertion's message
                raise AssertionError(f"{caller_setup} -> {callee_setup}: {error}") from None
            assert inbound.open_request(outbound.seal_request(b"ping")) == b"ping"
            assert outbound.open_response(inbound.seal_response(b"pong")) == b"pong"
