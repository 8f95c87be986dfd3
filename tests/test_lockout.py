"""No caller can lock another out of a callee (issue 13, point 5; docs/security.md,
"Hardening").

Protocol version 2 remembers two things per callee process: sessions (opened by signed
hellos of callers a rule names) and, per session, the call numbers seen. These tests attack
both from a caller the callee knows (allowed for some methods, or for none of the ones it
calls), and from an on-path attacker replaying what it captured:

- a flood of hellos from one caller forgets none of another caller's sessions (the callee
  forgets the least recently used session of the caller holding the most);
- a replayed hello opens no second session while the first is held;
- a caller's calls, allowed or not, far ahead in numbers or in time, and records forged
  with another caller's session id, never touch that caller's call window;
- a hello or a call may be stamped only a few seconds ahead of the callee's clock
  (`--clock-skew`, default 5 s), and 30 s old.

First at the sans-IO core, then against a real in-proxy process.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from support.core_policies import (
    CALLER,
    METHOD,
    OTHER_METHOD,
    T0,
    Setup,
    connect,
    open_session,
    refused,
)
from support.dataplane import (
    NARROW,
    FileStack,
    Proxies,
    channel,
    new_call,
    out_node,
    reason_of,
    reply_of,
    start_file_stack,
)
from support.upstream_app import UNARY, UpstreamProcess

from fastproxy.pipeline.handshake import CLOCK_AHEAD_S, OPEN_METHOD
from fastproxy.pipeline.metadata import HELLO_KEY, hello_of
from fastproxy.pipeline.node_policy import NodePolicy, NodeState
from fastproxy.pipeline.reasons import Reason
from fastproxy.policy import load_policy
from fastproxy.policy.scope import scope_snapshot
from fastproxy.v1 import policy_pb2 as pb

FLOODER = "flood_service"
# chat_service may call every method; flood_service only one it never calls below.
RULES = [{"caller": CALLER, "methods": ["/demo.v1.Echo/*"]},
         {"caller": FLOODER, "methods": [OTHER_METHOD]}]


def setup() -> Setup:
    return Setup(rules=RULES, extra_callers=(FLOODER,))


# --- sessions: a flood of hellos ------------------------------------------------------------


def test_a_flood_of_hellos_from_one_caller_forgets_none_of_another_callers_sessions() -> None:
    policies = setup()
    callee, chat, flooder = (policies.callee_policy(), policies.caller_policy(),
                             policies.caller_policy(FLOODER))
    state = NodeState(max_sessions=10)
    session = open_session(chat, callee, state)
    connect(chat, callee, state, session=session)
    for _ in range(50):
        open_session(flooder, callee, state)
    assert len(state.sessions) == 10
    connect(chat, callee, state, session=session)  # still known: no "unknown session"


def test_a_caller_flooding_hellos_loses_its_own_least_recently_used_sessions() -> None:
    policies = setup()
    callee, chat, flooder = (policies.callee_policy(), policies.caller_policy(),
                             policies.caller_policy(FLOODER))
    state = NodeState(max_sessions=4)
    chat_session = open_session(chat, callee, state)
    flooded = [open_session(flooder, callee, state, OTHER_METHOD) for _ in range(5)]
    assert state.sessions.held_by(CALLER) == 1
    assert state.sessions.held_by(FLOODER) == 3
    connect(flooder, callee, state, OTHER_METHOD, session=flooded[-1])
    error = refused(Reason.UNAUTHENTICATED, lambda: connect(
        flooder, callee, state, OTHER_METHOD, session=flooded[0]))
    assert error.session_unknown
    connect(chat, callee, state, session=chat_session)


def test_a_replayed_hello_opens_no_second_session_where_the_first_is_held() -> None:
    caller, callee = Setup().pair()
    state = NodeState()
    handshake = caller.caller.handshake(caller.route(METHOD), T0)
    callee.accept(handshake.request, T0, state)
    error = refused(Reason.UNAUTHENTICATED,
                    lambda: callee.accept(handshake.request, T0 + 1, state))
    assert "replayed" in error.detail
    assert len(state.sessions) == 1


# --- call windows: one caller's calls against another's ------------------------------------


def test_no_call_of_another_caller_touches_a_callers_call_window() -> None:
    """flood_service makes calls it may not make (denied), calls stamped far ahead, a call
    number near the session's limit, and CALL records in chat_service's session id sealed
    with keys of its own; chat_service's next call numbers are all still accepted."""
    policies = setup()
    callee, chat, flooder = (policies.callee_policy(), policies.caller_policy(),
                             policies.caller_policy(FLOODER))
    state = NodeState()
    chat_session = open_session(chat, callee, state)
    flood_session = open_session(flooder, callee, state, OTHER_METHOD)
    connect(chat, callee, state, session=chat_session)
    for _ in range(20):
        refused(Reason.DENIED, lambda: connect(flooder, callee, state, METHOD,
                                               session=flood_session))
        ahead = flooder.outbound(flooder.route(OTHER_METHOD), flood_session, OTHER_METHOD, (),
                                 T0 + 3600)
        refused(Reason.UNAUTHENTICATED, lambda: callee.inbound(
            OTHER_METHOD, ahead.metadata, T0, state))  # noqa: B023 (called at once)
    flood_session.next_call = (1 << 32) - 1
    connect(flooder, callee, state, OTHER_METHOD, session=flood_session)
    forged = open_session(flooder, callee, NodeState(), OTHER_METHOD)  # keys of its own
    forged.session_id = chat_session.session_id
    for number in range(2, 40):
        forged.next_call = number
        error = refused(Reason.UNAUTHENTICATED, lambda: connect(
            flooder, callee, state, OTHER_METHOD, session=forged))
        assert "does not open" in error.detail
    for _ in range(40):
        connect(chat, callee, state, session=chat_session)


# --- the clock ------------------------------------------------------------------------------


def accept_at(callee: NodePolicy, stamped: float) -> bytes:
    caller = Setup().caller_policy()
    handshake = caller.caller.handshake(caller.route(METHOD), stamped)
    return callee.accept(handshake.request, T0, NodeState())


@pytest.mark.parametrize("offset", [CLOCK_AHEAD_S + 1, 29.0])
def test_a_hello_stamped_further_ahead_than_the_clock_skew_is_refused(offset: float) -> None:
    callee = Setup().callee_policy()
    error = refused(Reason.UNAUTHENTICATED, lambda: accept_at(callee, T0 + offset))
    assert "too far ahead" in error.detail


@pytest.mark.parametrize("offset", [CLOCK_AHEAD_S - 1, -29.0])
def test_a_hello_within_the_clock_skew_ahead_or_30_s_old_is_accepted(offset: float) -> None:
    accept_at(Setup().callee_policy(), T0 + offset)


def test_a_call_stamped_further_ahead_than_the_clock_skew_is_refused() -> None:
    caller, callee = Setup().pair()
    state = NodeState()
    session = open_session(caller, callee, state)
    for offset in (CLOCK_AHEAD_S + 1, 29.0):
        outbound = caller.outbound(caller.route(METHOD), session, METHOD, (), T0 + offset)
        error = refused(Reason.UNAUTHENTICATED,
                        lambda: callee.inbound(METHOD, outbound.metadata, T0, state))  # noqa: B023
        assert "too far ahead" in error.detail
    for offset in (CLOCK_AHEAD_S - 1, -29.0):
        outbound = caller.outbound(caller.route(METHOD), session, METHOD, (), T0 + offset)
        callee.inbound(METHOD, outbound.metadata, T0, state)


def test_the_clock_skew_ahead_is_a_setting_of_the_node() -> None:
    snapshot = scope_snapshot(load_policy(Setup().yaml_text()), pb.ROLE_IN, "song_service")
    lenient = NodePolicy.from_snapshot(snapshot, clock_ahead_s=20.0)
    accept_at(lenient, T0 + 15)
    strict = NodePolicy.from_snapshot(snapshot, clock_ahead_s=0.0)
    refused(Reason.UNAUTHENTICATED, lambda: accept_at(strict, T0 + 1))


# --- against a real in-proxy ----------------------------------------------------------------


MAX_SESSIONS = 40


@pytest.fixture(scope="module")
def upstream() -> Iterator[UpstreamProcess]:
    with UpstreamProcess(name="song") as process:
        yield process


@pytest.fixture(scope="module")
def stack(upstream: UpstreamProcess, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[FileStack]:
    directory = tmp_path_factory.mktemp("lockout")
    proxies = Proxies(directory)
    try:
        yield start_file_stack(proxies, upstream.address, directory, callers=(),
                               extra=("--max-sessions", str(MAX_SESSIONS)))
    finally:
        proxies.stop_all()


def hello(node: NodePolicy, stamped: float | None = None) -> bytes:
    destination = node.route(UNARY)
    return node.caller.handshake(destination, time.time() if stamped is None else stamped
                                 ).request


def open_with(ch: grpc.Channel, request: bytes) -> tuple[bytes, grpc.Call]:
    return ch.unary_unary(OPEN_METHOD).with_call(b"", metadata=((HELLO_KEY, request),),
                                                 timeout=10)


def test_an_in_proxy_flooded_with_hellos_by_one_caller_keeps_another_callers_session(
        stack: FileStack) -> None:
    """narrow_service may call Unary only; it floods the in-proxy with handshakes, five
    times what the in-proxy keeps; chat_service's session goes on serving calls."""
    address = stack.inproxy.address
    chat = out_node(stack.policy.yaml_text())
    narrow = out_node(stack.policy.yaml_text(), NARROW)
    with channel(address) as ch:
        call = new_call(chat, address)
        reply, rpc = ch.unary_unary(UNARY).with_call(
            call.seal_request(b"before", final=True), metadata=call.metadata, timeout=10)
        assert reply_of(call, reply, rpc) == b"before"
        flood = [open_with(ch, hello(narrow)) for _ in range(5 * MAX_SESSIONS)]
        assert all(rpc.code() == grpc.StatusCode.OK for _, rpc in flood)
        again = new_call(chat, address, session=call.session)
        reply, rpc = ch.unary_unary(UNARY).with_call(
            again.seal_request(b"after", final=True), metadata=again.metadata, timeout=10)
        assert reply_of(again, reply, rpc) == b"after"


def test_an_in_proxy_refuses_a_replayed_hello(stack: FileStack) -> None:
    narrow = out_node(stack.policy.yaml_text(), NARROW)
    captured = hello(narrow)
    with channel(stack.inproxy.address) as ch:
        _, rpc = open_with(ch, captured)
        assert hello_of(rpc.trailing_metadata())
        with pytest.raises(grpc.RpcError) as raised:
            open_with(ch, captured)
    assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert reason_of(raised.value) == "unauthenticated"
    assert "replayed" in (raised.value.details() or "")


def test_an_in_proxy_refuses_hellos_and_calls_stamped_further_ahead_than_its_clock_skew(
        stack: FileStack) -> None:
    address = stack.inproxy.address
    chat = out_node(stack.policy.yaml_text())
    ahead = time.time() + CLOCK_AHEAD_S + 5
    with channel(address) as ch:
        with pytest.raises(grpc.RpcError) as raised:
            open_with(ch, hello(chat, ahead))
        assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "too far ahead" in (raised.value.details() or "")
        call = new_call(chat, address, now=ahead)
        with pytest.raises(grpc.RpcError) as raised:
            ch.unary_unary(UNARY)(call.seal_request(b"x", final=True), metadata=call.metadata,
                                  timeout=10)
        assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "too far ahead" in (raised.value.details() or "")


def test_clock_skew_is_a_flag_of_the_in_proxy(upstream: UpstreamProcess, tmp_path: Path) -> None:
    proxies = Proxies(tmp_path)
    try:
        stack = start_file_stack(proxies, upstream.address, tmp_path, callers=(),
                                 extra=("--clock-skew", "20"))
        chat = out_node(stack.policy.yaml_text())
        address = stack.inproxy.address
        ahead = time.time() + 15
        with channel(address) as ch:
            session_call = new_call(chat, address, now=ahead)
            reply, rpc = ch.unary_unary(UNARY).with_call(
                session_call.seal_request(b"ahead", final=True),
                metadata=session_call.metadata, timeout=10)
            assert reply_of(session_call, reply, rpc) == b"ahead"
            _, rpc = open_with(ch, hello(chat, ahead))
            assert hello_of(rpc.trailing_metadata())
    finally:
        proxies.stop_all()


def test_bad_clock_skew_and_max_sessions_flags_are_refused_with_one_line(tmp_path: Path) -> None:
    policy = tmp_path / "p.yaml"
    policy.write_text("version: 1\n")
    for flag, value in (("--clock-skew", "31"), ("--clock-skew", "-1"),
                        ("--max-sessions", "0")):
        done = subprocess.run(
            [sys.executable, "-m", "proxy_svc", "--role", "in", "--service", "s",
             "--listen", "127.0.0.1:0", "--upstream", "127.0.0.1:1", "--policy", str(policy),
             flag, value], capture_output=True, text=True, timeout=30)
        assert done.returncode == 2
        assert flag in done.stderr and len(done.stderr.strip().splitlines()) == 1

