"""Work a handshake leaves off its path (docs/protocol.md, section 3): X25519 keys made ahead
of the handshakes that use them, each used once; the callee's key agreement left for after
its answer is sent, giving the same session; and none of it spent on a refused hello."""

from __future__ import annotations

import threading

import pytest
from support.core_policies import CALLEE, METHOD, T0, Later, Setup, connect, refused

from fastproxy.pipeline import keys
from fastproxy.pipeline.handshake import HelloPolicy, accept_hello
from fastproxy.pipeline.keys import Aead, Ephemeral, SpareEphemeral
from fastproxy.pipeline.node_policy import NodeState
from fastproxy.pipeline.reasons import Reason
from fastproxy.v1 import session_pb2 as spb

# A point of order 8 on Curve25519: any exchange with it gives no shared secret.
LOW_ORDER_POINT = bytes.fromhex(
    "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800")


def hello_policy(setup: Setup) -> HelloPolicy:
    hello = setup.callee_policy().callee.hello
    assert hello is not None
    return hello


def sealed(aead: Aead) -> bytes:
    return aead.seal(bytes(12), b"the same keys seal the same bytes", b"")


def test_the_answer_and_the_keys_are_the_same_with_the_agreement_left_for_later() -> None:
    setup = Setup()
    caller = setup.caller_policy()
    handshake = caller.caller.handshake(caller.route(METHOD), T0)
    policy = hello_policy(setup)
    answers, sessions = [], []
    for agree_later in (False, True, True):
        seed = bytes(range(32))
        answer, session = accept_hello(handshake.request, policy, T0,
                                       ephemeral=Ephemeral.from_bytes(seed),
                                       random=lambda n: bytes(n), agree_later=agree_later)
        answers.append(answer)
        sessions.append(session)
    assert answers[0] == answers[1] == answers[2]
    now, on_first_use, completed = sessions
    completed.complete()  # as the host does once the answer is sent
    assert sealed(now.request) == sealed(on_first_use.request) == sealed(completed.request)
    assert sealed(now.response) == sealed(on_first_use.response) \
        == sealed(completed.response)


def test_a_call_arriving_before_the_deferred_agreement_opens_and_is_answered() -> None:
    setup = Setup()
    caller, callee = setup.pair()
    state = NodeState()
    later = Later()
    destination = caller.route(METHOD)
    handshake = caller.caller.handshake(destination, T0)
    answer = callee.accept(handshake.request, T0, state, defer=later)
    session = handshake.finish(answer, destination.verifiers, T0)
    assert later.pending  # the agreement and the next answer's key, not made yet
    outbound, inbound = connect(caller, callee, state, session=session)  # the CALL opens
    assert inbound.open_request(outbound.seal_request(b"ping", True)) == b"ping"
    later.run()
    assert outbound.open_response(inbound.seal_response(b"pong")) == b"pong"


@pytest.mark.parametrize("ephemeral", [bytes(32), LOW_ORDER_POINT], ids=["zero", "order-8"])
def test_with_the_agreement_deferred_a_key_giving_no_secret_fails_the_first_call(
        ephemeral: bytes) -> None:
    from test_handshake import client_hello

    setup = Setup()
    later = Later()
    state = NodeState()
    setup.callee_policy().accept(client_hello(ephemeral=ephemeral), T0, state, defer=later)
    later.run()  # a host's deferred work never raises
    (session,) = [state.sessions.find(sid, T0) for sid in list(state.sessions._sessions)]
    assert session is not None
    for _ in range(2):  # every use, not only the first
        error = refused(Reason.UNAUTHENTICATED, lambda: session.request)
        assert "no shared secret" in error.detail


def test_a_deferred_agreement_is_made_once_whichever_thread_needs_it_first() -> None:
    setup = Setup()
    caller = setup.caller_policy()
    handshake = caller.caller.handshake(caller.route(METHOD), T0)
    _, session = accept_hello(handshake.request, hello_policy(setup), T0, agree_later=True)
    start = threading.Barrier(8)
    seen: list[Aead] = []

    def use() -> None:
        start.wait()
        seen.append(session.request)

    threads = [threading.Thread(target=use) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5)
    assert len(seen) == 8 and len({id(aead) for aead in seen}) == 1


def test_keys_made_ahead_are_each_used_by_one_handshake() -> None:
    caller = Setup().caller_policy()
    destination = caller.route(METHOD)
    publics = set()
    for refill in (False, True, True, False, False):
        handshake = caller.caller.handshake(destination, T0)
        hello = spb.ClientHello.FromString(spb.SignedHello.FromString(handshake.request).hello)
        publics.add(hello.ephemeral)
        if refill:
            caller.caller.spare.refill()
    assert len(publics) == 5


def test_a_spare_key_is_taken_once_from_many_threads() -> None:
    spare = SpareEphemeral()
    start = threading.Barrier(8)
    taken: list[Ephemeral] = []

    def take() -> None:
        start.wait()
        taken.append(spare.take())

    threads = [threading.Thread(target=take) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5)
    assert len({ephemeral.public for ephemeral in taken}) == 8


def test_a_refused_hello_makes_no_key(monkeypatch: pytest.MonkeyPatch) -> None:
    from test_handshake import client_hello

    callee = Setup().callee_policy()  # (its key made ahead here)
    strangers = [client_hello(caller="stranger") for _ in range(20)]
    misdirected = [client_hello(callee=CALLEE + "-other") for _ in range(20)]
    genuine = client_hello()
    state = NodeState()
    made: list[int] = []
    generate = keys.X25519PrivateKey.generate
    monkeypatch.setattr(keys.X25519PrivateKey, "generate",
                        staticmethod(lambda: made.append(1) or generate()))
    for hello in (*strangers, *misdirected):
        refused(Reason.UNAUTHENTICATED,
                lambda hello=hello: callee.accept(hello, T0, state, defer=Later()))
    assert made == []
    later = Later()
    callee.accept(genuine, T0, state, defer=later)
    assert made == []  # the answer took the key made with the policy
    later.run()
    assert made == [1]  # and the next one is made once the answer is on its way
