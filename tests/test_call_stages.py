"""The stages of a call (docs/protocol.md, sections 4 and 6): the caller routes it and seals
its CALL record; the callee opens the record (session, method, time, metadata), authorizes
the caller by its allow rules and spends its rate limit, before any message. A refusal once
the record opened is sealed."""

from __future__ import annotations

import pytest
from support.core_policies import (
    CALLEE,
    CALLER,
    METHOD,
    OTHER_METHOD,
    T0,
    Setup,
    connect,
    open_session,
    refused,
)

from fastproxy.pipeline.handshake import CLOCK_AHEAD_S
from fastproxy.pipeline.metadata import CALL_KEY
from fastproxy.pipeline.node_policy import NodePolicy, NodeState
from fastproxy.pipeline.reasons import FastProxyError, Reason
from fastproxy.policy import load_policy
from fastproxy.policy.model import RetryPolicy
from fastproxy.policy.scope import scope_snapshot
from fastproxy.v1 import policy_pb2 as pb

PERMISSION_DENIED = 7


def call_record(metadata: object) -> bytes:
    record = dict(metadata)[CALL_KEY]  # type: ignore[call-overload]
    assert isinstance(record, bytes)
    return record


# --- the caller's side -------------------------------------------------------------------------


def test_a_call_is_routed_by_its_grpc_service_name() -> None:
    setup = Setup(endpoints=["127.0.0.1:9101", "127.0.0.1:9102"], timeout_ms=1500)
    outbound, _ = connect(*setup.pair(), NodeState())
    assert outbound.destination == CALLEE
    assert outbound.endpoints == ("127.0.0.1:9101", "127.0.0.1:9102")
    assert outbound.timeout_ms == 1500
    assert outbound.retry is None


def test_the_destination_retry_policy_comes_with_the_call() -> None:
    text = Setup().yaml_text().replace("timeout_ms: 2000",
                                       "timeout_ms: 2000\n    retry: {max_attempts: 3}")
    caller = NodePolicy.from_snapshot(scope_snapshot(load_policy(text), pb.ROLE_OUT, CALLER))
    outbound, _ = connect(caller, Setup().callee_policy(), NodeState())
    assert outbound.retry == RetryPolicy(3, 100, 1000)


@pytest.mark.parametrize("method", ["/demo.v1.Other/Say", "/other.Echo/Say", "Say", "", "/"])
def test_a_method_no_destination_serves_has_no_route(method: str) -> None:
    refused(Reason.NO_ROUTE, lambda: Setup().caller_policy().route(method))


def test_a_destination_without_endpoints_is_still_routed_the_host_picks_the_endpoint() -> None:
    # the out-proxy refuses `unavailable` when it has none to pick (test_transport_contract); the
    # embedded SDK's channel already names its target
    assert Setup(endpoints=[]).caller_policy().route(METHOD).endpoints == ()


def test_a_node_no_rule_concerns_routes_nothing_and_denies_calls_to_known_services() -> None:
    """Denied means denied: the caller's own node answers `denied` for a service that exists
    but has no rule for it (it holds only the service's name and gRPC services: no key, no
    endpoint), and `no_route` only for a gRPC service nobody serves."""
    text = Setup().yaml_text().replace("caller: chat_service", "caller: song_service")
    snapshot = scope_snapshot(load_policy(text), pb.ROLE_OUT, CALLER)
    snapshot.revision = 7
    node = NodePolicy.from_snapshot(snapshot)
    denied = refused(Reason.DENIED, lambda: node.route(METHOD))
    assert denied.rule == "none"
    assert denied.detail == ("no rule of 'song_service' lets 'chat_service' call "
                             f"{METHOD} (policy revision 7, rule none)")
    refused(Reason.NO_ROUTE, lambda: node.route("/other.v1.Nobody/Call"))
    assert node.routes == {}
    assert not snapshot.keys and all(not s.endpoints for s in snapshot.services)


def test_each_call_of_a_session_takes_the_next_call_number() -> None:
    caller, callee = Setup().pair()
    state = NodeState()
    session = open_session(caller, callee, state)
    calls = [connect(caller, callee, state, session=session)[0] for _ in range(3)]
    assert [c.call_number for c in calls] == [1, 2, 3]
    assert len({call_record(c.metadata) for c in calls}) == 3


def test_the_call_record_travels_in_binary_metadata_after_the_apps_entries() -> None:
    outbound, _ = connect(*Setup().pair(), NodeState(), metadata=(("x-a", "1"),))
    assert [key for key, _ in outbound.metadata] == ["x-a", CALL_KEY]
    assert isinstance(call_record(outbound.metadata), bytes)


def test_protocol_entries_the_app_set_are_not_sent() -> None:
    forged = ((CALL_KEY, b"\x02\x01\x00forged"), ("fastproxy-end-bin", b"x"), ("x-a", "1"))
    outbound, inbound = connect(*Setup().pair(), NodeState(), metadata=forged)
    assert [key for key, _ in outbound.metadata] == ["x-a", CALL_KEY]
    assert inbound.wire_metadata == (("x-a", "1"),)


# --- opening the CALL record -------------------------------------------------------------------


def test_an_admitted_call_names_its_caller_its_method_and_the_service_timeout() -> None:
    _, inbound = connect(*Setup(timeout_ms=750).pair(), NodeState())
    assert (inbound.caller, inbound.method, inbound.timeout_ms) == (CALLER, METHOD, 750)


def test_a_call_without_a_call_record_is_refused() -> None:
    callee = Setup().callee_policy()
    error = refused(Reason.UNAUTHENTICATED,
                    lambda: callee.inbound(METHOD, (("x-app", "1"),), T0, NodeState()))
    assert "no CALL record" in error.detail


@pytest.mark.parametrize("value", [b"", b"\x02", b"\x02\x01\x00" + bytes(24),
                                   b"\x02\x02\x00" + bytes(60), b"\xff\xff\xff"],
                         ids=["empty", "version-only", "prefix-only", "a-data-record",
                              "garbage"])
def test_a_call_record_that_is_none_is_refused(value: bytes) -> None:
    callee = Setup().callee_policy()
    refused(Reason.UNAUTHENTICATED,
            lambda: callee.inbound(METHOD, ((CALL_KEY, value),), T0, NodeState()))


def test_a_call_record_of_protocol_version_1_is_refused_naming_the_version() -> None:
    callee = Setup().callee_policy()
    v1_header = b"\x08\x01\x12\x10" + bytes(16)
    error = refused(Reason.UNAUTHENTICATED,
                    lambda: callee.inbound(METHOD, ((CALL_KEY, v1_header),), T0, NodeState()))
    assert "protocol version 1" in error.detail


def test_a_call_carrying_two_call_records_is_refused() -> None:
    caller, callee = Setup().pair()
    state = NodeState()
    session = open_session(caller, callee, state)
    outbound = caller.outbound(caller.route(METHOD), session, METHOD, (), T0)
    twice = (*outbound.metadata, (CALL_KEY, call_record(outbound.metadata)))
    error = refused(Reason.UNAUTHENTICATED, lambda: callee.inbound(METHOD, twice, T0, state))
    assert "more than once" in error.detail


def test_a_call_record_sealed_for_another_method_is_refused_and_the_refusal_sealed() -> None:
    caller, callee = Setup(rules=[{"caller": CALLER, "methods": ["*"]}]).pair()
    state = NodeState()
    session = open_session(caller, callee, state)
    outbound = caller.outbound(caller.route(METHOD), session, METHOD, (), T0)
    error = refused(Reason.UNAUTHENTICATED,
                    lambda: callee.inbound(OTHER_METHOD, outbound.metadata, T0, state))
    assert "another method" in error.detail
    assert error.seal_end is not None


@pytest.mark.parametrize("skew", [-31.0, 31.0])
def test_a_call_outside_the_clock_window_is_refused(skew: float) -> None:
    caller, callee = Setup().pair()
    state = NodeState()
    session = open_session(caller, callee, state)
    outbound = caller.outbound(caller.route(METHOD), session, METHOD, (), T0)
    error = refused(Reason.UNAUTHENTICATED,
                    lambda: callee.inbound(METHOD, outbound.metadata, T0 + skew, state))
    assert "too old or too far ahead" in error.detail


@pytest.mark.parametrize("skew", [-(CLOCK_AHEAD_S - 1), 29.0])
def test_a_call_inside_the_clock_window_is_admitted(skew: float) -> None:
    """At most 30 s old, and at most `CLOCK_AHEAD_S` ahead of the callee's clock."""
    caller, callee = Setup().pair()
    state = NodeState()
    session = open_session(caller, callee, state)
    outbound = caller.outbound(caller.route(METHOD), session, METHOD, (), T0)
    assert callee.inbound(METHOD, outbound.metadata, T0 + skew, state).caller == CALLER


def test_request_metadata_changed_on_the_way_is_refused() -> None:
    caller, callee = Setup().pair()
    state = NodeState()
    session = open_session(caller, callee, state)
    outbound = caller.outbound(caller.route(METHOD), session, METHOD, (("x-a", "1"),), T0)
    changed = tuple(("x-a", "2") if key == "x-a" else (key, value)
                    for key, value in outbound.metadata)
    error = refused(Reason.UNAUTHENTICATED, lambda: callee.inbound(METHOD, changed, T0, state))
    assert "request metadata changed" in error.detail


def test_hop_by_hop_request_metadata_may_change_on_the_way() -> None:
    caller, callee = Setup().pair()
    state = NodeState()
    session = open_session(caller, callee, state)
    outbound = caller.outbound(caller.route(METHOD), session, METHOD,
                               (("x-a", "1"), ("traceparent", "00-aa-bb-01")), T0)
    relayed = (*((key, value) for key, value in outbound.metadata if key != "traceparent"),
               ("traceparent", "00-cc-dd-01"), ("x-forwarded-for", "10.0.0.1"),
               ("user-agent", "envoy"), ("x-envoy-attempt-count", "2"))
    assert callee.inbound(METHOD, relayed, T0, state).caller == CALLER


# --- authorization and rate limits -------------------------------------------------------------


def test_a_caller_without_a_rule_for_the_method_is_denied() -> None:
    caller, callee = Setup(rules=[{"caller": CALLER, "methods": [OTHER_METHOD]}]).pair()
    refused(Reason.DENIED, lambda: connect(caller, callee, NodeState(), METHOD))
    assert connect(caller, callee, NodeState(), OTHER_METHOD)[1].method == OTHER_METHOD


def test_a_denied_call_is_sealed_and_names_its_caller() -> None:
    caller, callee = Setup(rules=[{"caller": CALLER, "methods": [OTHER_METHOD]}]).pair()
    state = NodeState()
    session = open_session(caller, callee, state)
    outbound = caller.outbound(caller.route(METHOD), session, METHOD, (), T0)
    error = refused(Reason.DENIED, lambda: callee.inbound(METHOD, outbound.metadata, T0, state))
    assert error.caller == CALLER
    assert error.seal_end is not None
    trailers = error.seal_end(PERMISSION_DENIED, error.detail, (("fastproxy-error", "denied"),))
    assert outbound.open_end(PERMISSION_DENIED, error.detail, trailers) == (
        ("fastproxy-error", "denied"),)


@pytest.mark.parametrize("patterns", [["*"], ["/demo.v1.Echo/*"], [METHOD],
                                      ["/x.Y/Z", METHOD]])
def test_method_patterns_admit_the_method(patterns: list[str]) -> None:
    caller, callee = Setup(rules=[{"caller": CALLER, "methods": patterns}]).pair()
    assert connect(caller, callee, NodeState())[1].rule is not None


@pytest.mark.parametrize("patterns", [["/demo.v1.Echo/SayMore"], ["/demo.v1.Ech/*"],
                                      ["/demo.v1/*"]])
def test_method_patterns_do_not_admit_other_methods(patterns: list[str]) -> None:
    caller, callee = Setup(rules=[{"caller": CALLER, "methods": patterns}]).pair()
    refused(Reason.DENIED, lambda: connect(caller, callee, NodeState()))


def test_a_wildcard_caller_rule_admits_any_known_caller() -> None:
    setup = Setup(rules=[{"caller": "*", "methods": ["*"]}], extra_callers=["album_service"])
    callee = setup.callee_policy()
    state = NodeState()
    for name in (CALLER, "album_service"):
        assert connect(setup.caller_policy(name), callee, state)[1].caller == name


def test_the_first_matching_rule_decides_the_rate_limit() -> None:
    rules: list[dict[str, object]] = [
        {"caller": CALLER, "methods": [METHOD], "rate_limit": {"rps": 1, "burst": 1}},
        {"caller": "*", "methods": ["*"]},
    ]
    caller, callee = Setup(rules=rules).pair()
    state = NodeState()
    session = open_session(caller, callee, state)
    connect(caller, callee, state, session=session)
    refused(Reason.RATE_LIMITED, lambda: connect(caller, callee, state, session=session))
    for _ in range(5):  # another method falls to the second, unlimited rule
        connect(caller, callee, state, OTHER_METHOD, session=session)


def test_rps_10_burst_5_lets_at_most_15_of_30_calls_through_in_one_second() -> None:
    rules = [{"caller": CALLER, "methods": ["*"], "rate_limit": {"rps": 10, "burst": 5}}]
    caller, callee = Setup(rules=rules).pair()
    state = NodeState()
    session = open_session(caller, callee, state)
    outcomes = []
    for i in range(30):
        try:
            connect(caller, callee, state, now=T0 + i / 30, session=session)
            outcomes.append("ok")
        except FastProxyError as error:
            outcomes.append(error.reason.value)
    assert set(outcomes) == {"ok", "rate_limited"}
    assert 14 <= outcomes.count("ok") <= 15


def test_a_call_with_no_message_is_still_authorized_and_rate_limited() -> None:
    rules = [{"caller": CALLER, "methods": ["*"], "rate_limit": {"rps": 1, "burst": 2}}]
    caller, callee = Setup(rules=rules).pair()
    state = NodeState()
    session = open_session(caller, callee, state)
    connect(caller, callee, state, session=session)
    connect(caller, callee, state, session=session)  # admitted calls that never send a message
    refused(Reason.RATE_LIMITED, lambda: connect(caller, callee, state, session=session))


def test_a_rate_limited_call_is_sealed() -> None:
    rules = [{"caller": CALLER, "methods": ["*"], "rate_limit": {"rps": 1, "burst": 1}}]
    caller, callee = Setup(rules=rules).pair()
    state = NodeState()
    session = open_session(caller, callee, state)
    connect(caller, callee, state, session=session)
    error = refused(Reason.RATE_LIMITED,
                    lambda: connect(caller, callee, state, session=session))
    assert error.seal_end is not None


def test_rate_limits_survive_a_policy_swap() -> None:
    rules = [{"caller": CALLER, "methods": ["*"], "rate_limit": {"rps": 1, "burst": 1}}]
    setup = Setup(rules=rules)
    caller, callee = setup.pair()
    state = NodeState()
    session = open_session(caller, callee, state)
    connect(caller, callee, state, session=session)
    swapped = setup.callee_policy()
    refused(Reason.RATE_LIMITED, lambda: connect(caller, swapped, state, session=session))


def test_a_caller_no_rule_names_any_more_is_denied_in_its_open_session() -> None:
    # its rule was just removed while its session lives: the callee answers `denied`, sealed
    setup = Setup()
    caller, callee = setup.pair()
    state = NodeState()
    session = open_session(caller, callee, state)
    text = setup.yaml_text().replace("caller: chat_service", "caller: song_service")
    swapped = NodePolicy.from_snapshot(scope_snapshot(load_policy(text), pb.ROLE_IN, CALLEE))
    error = refused(Reason.DENIED, lambda: connect(caller, swapped, state, session=session))
    assert error.seal_end is not None


def test_an_out_node_does_not_guard_a_service() -> None:
    caller = Setup().caller_policy()
    refused(Reason.UNAVAILABLE, lambda: caller.inbound(METHOD, (), T0, NodeState()))
    refused(Reason.UNAVAILABLE, lambda: caller.accept(b"hello", T0, NodeState()))
