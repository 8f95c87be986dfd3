"""Session keys (docs/security.md, P2): every session has keys of its own, from an X25519
exchange of ephemeral keys mixed with the callee's encryption key. Two callers of one
service get different keys and neither opens nor writes the other's records, even though
both hold the service's encryption key; the ephemeral private keys are unusable once
exchanged, so long-term keys alone never open recorded traffic."""

from __future__ import annotations

import dataclasses

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from support.core_policies import (
    CALLER,
    METHOD,
    T0,
    Setup,
    connect,
    material,
    open_session,
    refused,
)

from fastproxy.pipeline.handshake import CallerSession, accept_hello, key_schedule
from fastproxy.pipeline.keys import Aead, Ephemeral
from fastproxy.pipeline.metadata import CALL_KEY
from fastproxy.pipeline.node_policy import NodeState
from fastproxy.pipeline.reasons import FastProxyError, Reason
from fastproxy.pipeline.records import CALL_PREFIX_BYTES, DATA, Direction
from fastproxy.v1 import session_pb2 as spb

OTHER = "album_service"
MIB = 1 << 20
TWO_CALLERS = Setup(rules=[{"caller": "*", "methods": ["*"]}], extra_callers=[OTHER])


def opener(session: CallerSession, number: int, request: bool = True) -> Direction:
    """What a holder of `session` opens: one direction of call `number` at position 1."""
    return Direction(session.request if request else session.response, number,
                     clear=session.clear, max_bytes=MIB)


def test_two_callers_of_one_service_get_different_session_keys() -> None:
    callee = TWO_CALLERS.callee_policy()
    state = NodeState()
    mine, _ = connect(TWO_CALLERS.caller_policy(CALLER), callee, state)
    theirs, _ = connect(TWO_CALLERS.caller_policy(OTHER), callee, state)
    assert mine.call_number == theirs.call_number == 1
    assert mine.seal_request(b"same words") != theirs.seal_request(b"same words")


def test_a_caller_cannot_open_another_callers_requests() -> None:
    callee = TWO_CALLERS.callee_policy()
    state = NodeState()
    mine, _ = connect(TWO_CALLERS.caller_policy(CALLER), callee, state)
    theirs = open_session(TWO_CALLERS.caller_policy(OTHER), callee, state)
    sealed = mine.seal_request(b"my secret request")
    refused(Reason.UNAUTHENTICATED, lambda: opener(theirs, 1).open_message(sealed, "stolen"))


def test_a_caller_cannot_open_another_callers_responses() -> None:
    callee = TWO_CALLERS.callee_policy()
    state = NodeState()
    _, mine = connect(TWO_CALLERS.caller_policy(CALLER), callee, state)
    theirs = open_session(TWO_CALLERS.caller_policy(OTHER), callee, state)
    sealed = mine.seal_response(b"my secret answer")
    refused(Reason.UNAUTHENTICATED,
            lambda: opener(theirs, 1, request=False).open_message(sealed, "stolen"))


def test_the_services_encryption_key_alone_opens_no_record() -> None:
    callee = TWO_CALLERS.callee_policy()
    outbound, _ = connect(TWO_CALLERS.caller_policy(CALLER), callee, NodeState())
    sealed = outbound.seal_request(b"my secret request")
    psk_only = Direction(Aead(spb.AEAD_SUITE_AES_256_GCM, material("song-enc-v1")), 1,
                         clear=False, max_bytes=MIB)
    refused(Reason.UNAUTHENTICATED, lambda: psk_only.open_message(sealed, "stolen"))


def test_a_caller_cannot_make_calls_in_another_callers_session() -> None:
    callee = TWO_CALLERS.callee_policy()
    state = NodeState()
    victim = open_session(TWO_CALLERS.caller_policy(CALLER), callee, state)
    other = TWO_CALLERS.caller_policy(OTHER)
    own = open_session(other, callee, state)
    outbound = other.outbound(other.route(METHOD), own, METHOD, (), T0)
    record = dict(outbound.metadata)[CALL_KEY]
    assert isinstance(record, bytes)
    # its own session's keys, the victim's session id (visible on the wire)
    forged = record[:3] + victim.session_id + record[3 + 16:]
    assert len(forged) == len(record) and forged[CALL_PREFIX_BYTES:] == record[CALL_PREFIX_BYTES:]
    refused(Reason.UNAUTHENTICATED,
            lambda: callee.inbound(METHOD, ((CALL_KEY, forged),), T0, state))


def test_the_encryption_key_is_mixed_into_the_session_keys() -> None:
    """A caller holding other bytes under the callee's encryption key id opens a session
    whose records the callee cannot open."""
    caller, callee = Setup().pair()
    state = NodeState()
    destination = dataclasses.replace(caller.route(METHOD), psk=material("a wrong key"))
    handshake = caller.caller.handshake(destination, T0)
    answer = callee.accept(handshake.request, T0, state)
    session = handshake.finish(answer, destination.verifiers, T0)
    outbound = caller.outbound(destination, session, METHOD, (), T0)
    refused(Reason.UNAUTHENTICATED, lambda: callee.inbound(METHOD, outbound.metadata, T0, state))


# --- forward secrecy ---------------------------------------------------------------------------


def test_an_ephemeral_key_is_unusable_after_its_exchange() -> None:
    ephemeral = Ephemeral()
    peer = Ephemeral().public
    assert len(ephemeral.exchange(peer)) == 32
    with pytest.raises(ValueError, match="already used"):
        ephemeral.exchange(peer)


def test_both_ephemeral_keys_of_a_handshake_are_erased_once_it_completes() -> None:
    caller, callee = Setup().pair()
    hello_policy = callee.callee.hello
    assert hello_policy is not None
    client_side, server_side = Ephemeral(), Ephemeral()
    handshake = caller.caller.handshake(caller.route(METHOD), T0, ephemeral=client_side)
    answer, _ = accept_hello(handshake.request, hello_policy, T0, ephemeral=server_side)
    handshake.finish(answer, caller.route(METHOD).verifiers, T0)
    for used in (client_side, server_side):
        with pytest.raises(ValueError, match="already used"):
            used.exchange(Ephemeral().public)


def test_a_finished_handshake_cannot_derive_its_keys_again() -> None:
    caller, callee = Setup().pair()
    handshake = caller.caller.handshake(caller.route(METHOD), T0)
    answer = callee.accept(handshake.request, T0, NodeState())
    handshake.finish(answer, caller.route(METHOD).verifiers, T0)
    with pytest.raises(ValueError, match="already used"):
        handshake.finish(answer, caller.route(METHOD).verifiers, T0)


def test_recorded_traffic_opens_with_the_ephemeral_secret_and_not_with_long_term_keys() -> None:
    """Whoever steals every long-term key later (identities and the encryption key) and
    recorded both hellos and a record still lacks the shared secret of the erased
    ephemeral keys."""
    caller, callee = Setup().pair()
    hello_policy = callee.callee.hello
    assert hello_policy is not None
    client_private, server_private = X25519PrivateKey.generate(), X25519PrivateKey.generate()
    handshake = caller.caller.handshake(caller.route(METHOD), T0,
                                        ephemeral=Ephemeral(client_private))
    answer, callee_session = accept_hello(handshake.request, hello_policy, T0,
                                          ephemeral=Ephemeral(server_private))
    recorded = Direction(callee_session.request, 1, clear=False, max_bytes=MIB).seal(
        DATA, b"recorded today")
    psk = material("song-enc-v1")

    def opens_with(shared: bytes) -> bool:
        secrets = key_schedule(handshake.request, answer, shared, psk)
        direction = Direction(Aead(spb.AEAD_SUITE_AES_256_GCM, secrets.request_key), 1,
                              clear=False, max_bytes=MIB)
        try:
            direction.open(recorded, (DATA,), "recorded")
        except FastProxyError:
            return False
        return True

    shared = client_private.exchange(server_private.public_key())
    assert opens_with(shared)
    for guess in (bytes(32), psk, material("chat-id-v1"), material("song-id-v1")):
        assert not opens_with(guess)
