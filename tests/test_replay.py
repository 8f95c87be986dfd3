"""Replay (docs/security.md, P4): a captured call is refused by every instance of the callee.
The instance that opened its session refuses a call number it has seen (a sliding window per
session); any other instance, or the same one after a restart, does not know the session."""

from __future__ import annotations

import os

from support.core_policies import METHOD, T0, Setup, connect, open_session, refused

from fastproxy.pipeline.handshake import CALL_WINDOW, CallerSession, CallWindow, SessionSecrets
from fastproxy.pipeline.node_policy import NodeState
from fastproxy.pipeline.reasons import Reason
from fastproxy.pipeline.stages import OutboundCall
from fastproxy.v1 import session_pb2 as spb


def captured(state: NodeState) -> tuple[Setup, OutboundCall]:
    """A call admitted once by the callee whose sessions `state` holds."""
    setup = Setup()
    outbound, _ = connect(setup.caller_policy(), setup.callee_policy(), state)
    return setup, outbound


def test_a_call_record_accepted_once_is_refused_the_second_time() -> None:
    state = NodeState()
    setup, outbound = captured(state)
    error = refused(Reason.UNAUTHENTICATED, lambda: setup.callee_policy().inbound(
        METHOD, outbound.metadata, T0 + 1, state))
    assert "replayed" in error.detail


def test_a_replayed_call_is_refused_long_after_the_clock_window() -> None:
    state = NodeState()
    setup, outbound = captured(state)
    later = T0 + 300  # the session still lives; the call's number was seen
    refused(Reason.UNAUTHENTICATED,
            lambda: setup.callee_policy().inbound(METHOD, outbound.metadata, later, state))


def test_a_replayed_call_is_refused_by_another_instance_as_an_unknown_session() -> None:
    setup, outbound = captured(NodeState())
    error = refused(Reason.UNAUTHENTICATED, lambda: setup.callee_policy().inbound(
        METHOD, outbound.metadata, T0, NodeState()))
    assert error.session_unknown


def test_a_call_never_admitted_is_refused_after_a_restart_as_an_unknown_session() -> None:
    setup = Setup()
    caller, callee = setup.pair()
    session = open_session(caller, callee, NodeState())  # that instance then restarted
    outbound = caller.outbound(caller.route(METHOD), session, METHOD, (), T0)
    error = refused(Reason.UNAUTHENTICATED,
                    lambda: callee.inbound(METHOD, outbound.metadata, T0, NodeState()))
    assert error.session_unknown


def test_a_replayed_hello_opens_a_session_whose_calls_the_replayer_cannot_make() -> None:
    """Replayed to another instance (the one that answered it refuses it while it holds the
    session it opened: `test_lockout.py`)."""
    caller, callee = Setup().pair()
    state = NodeState()
    handshake = caller.caller.handshake(caller.route(METHOD), T0)
    callee.accept(handshake.request, T0, NodeState())
    replayed = spb.ServerHello.FromString(spb.SignedHello.FromString(
        callee.accept(handshake.request, T0 + 1, state)).hello)
    destination = caller.route(METHOD)
    made_up = CallerSession(  # the session's id, and keys the replayer can only guess
        session_id=replayed.session_id, callee=destination.name,
        secrets=SessionSecrets(os.urandom(32), os.urandom(32), os.urandom(32)),
        suite=destination.suite, psk_id=destination.psk_id, signer_id="chat-id-v1",
        lifetime_s=600, max_calls=100, opened_at=T0)
    outbound = caller.outbound(destination, made_up, METHOD, (), T0 + 1)
    error = refused(Reason.UNAUTHENTICATED,
                    lambda: callee.inbound(METHOD, outbound.metadata, T0 + 1, state))
    assert not error.session_unknown and "does not open" in error.detail


def test_a_replayed_call_is_refused_by_the_same_instance_under_a_new_policy() -> None:
    state = NodeState()
    _, outbound = captured(state)
    swapped = Setup().callee_policy()  # a policy swap keeps the node's state
    refused(Reason.UNAUTHENTICATED,
            lambda: swapped.inbound(METHOD, outbound.metadata, T0, state))


def test_a_refused_replay_does_not_stop_the_next_call() -> None:
    state = NodeState()
    setup, outbound = captured(state)
    callee = setup.callee_policy()
    refused(Reason.UNAUTHENTICATED, lambda: callee.inbound(METHOD, outbound.metadata, T0, state))
    _, inbound = connect(setup.caller_policy(), callee, state, session=outbound.session)
    assert inbound.call_number == 2


def test_call_numbers_are_counted_per_session() -> None:
    caller, callee = Setup().pair()
    state = NodeState()
    first, _ = connect(caller, callee, state)
    second, _ = connect(caller, callee, state)
    assert first.call_number == second.call_number == 1


# --- the window of call numbers ----------------------------------------------------------------


def test_the_window_accepts_each_call_number_once() -> None:
    window = CallWindow()
    assert window.accept(1)
    assert not window.accept(1)


def test_the_window_accepts_out_of_order_numbers_once_each() -> None:
    window = CallWindow()
    order = [5, 2, 9, 1, 3, 8, 4, 7, 6]
    assert all(window.accept(n) for n in order)
    assert not any(window.accept(n) for n in order)


def test_call_numbers_far_below_the_window_are_refused() -> None:
    window = CallWindow()
    highest = 2 * CALL_WINDOW + 10
    assert window.accept(highest)
    assert not window.accept(highest - CALL_WINDOW)
    assert not window.accept(1)
    assert window.accept(highest - CALL_WINDOW + 1)


def test_call_number_zero_is_refused() -> None:
    assert not CallWindow().accept(0)


def test_a_jump_far_ahead_forgets_the_window_at_once() -> None:
    window = CallWindow()
    assert window.accept(1)
    assert window.accept(1 << 62)  # a few bits of state, not 2^62 of them
    assert not window.accept(1 << 62)
    assert not window.accept(1)
    assert window.accept((1 << 62) - 1)


def test_a_call_number_beyond_the_sessions_limit_is_refused() -> None:
    caller, callee = Setup().pair()
    state = NodeState()
    session = open_session(caller, callee, state)
    held = state.sessions.find(session.session_id, T0)
    assert held is not None
    assert not state.sessions.take_call(held, held.max_calls + 1)
    assert state.sessions.take_call(held, held.max_calls)
