"""Specification of the call stages: routing, endpoints, authentication before any message,
authorization by allow rules, rate limits, replay window, and compiling a snapshot."""

from __future__ import annotations

import pytest
from support.core_policies import CALLEE, CALLER, METHOD, OTHER_METHOD, T0, Setup, connect

from fastproxy.pipeline.node_policy import NodePolicy, NodePolicyError, NodeState
from fastproxy.pipeline.reasons import FastProxyError, Reason
from fastproxy.pipeline.replay import ReplayCache
from fastproxy.policy import load_policy
from fastproxy.policy.model import RetryPolicy
from fastproxy.policy.scope import scope_snapshot
from fastproxy.v1 import policy_pb2 as pb


def refused(reason: Reason, action: object) -> FastProxyError:
    assert callable(action)
    with pytest.raises(FastProxyError) as caught:
        action()
    assert caught.value.reason is reason, caught.value
    return caught.value


# --- caller side ------------------------------------------------------------------------------


def test_a_call_is_routed_by_its_grpc_service_name() -> None:
    caller = Setup(endpoints=["127.0.0.1:9101", "127.0.0.1:9102"], timeout_ms=1500)
    call = caller.caller_policy().outbound(METHOD, T0)
    assert call.destination == CALLEE
    assert call.endpoints == ("127.0.0.1:9101", "127.0.0.1:9102")
    assert call.timeout_ms == 1500
    assert call.retry is None


def test_the_destination_retry_policy_comes_with_the_call() -> None:
    setup = Setup()
    text = setup.yaml_text().replace("timeout_ms: 2000",
                                     "timeout_ms: 2000\n    retry: {max_attempts: 3}")
    snapshot = scope_snapshot(load_policy(text), pb.ROLE_OUT, CALLER)
    call = NodePolicy.from_snapshot(snapshot).outbound(METHOD, T0)
    assert call.retry == RetryPolicy(3, 100, 1000)


@pytest.mark.parametrize("method", ["/demo.v1.Other/Say", "/other.Echo/Say", "Say", "", "/"])
def test_a_method_no_destination_serves_has_no_route(method: str) -> None:
    refused(Reason.NO_ROUTE, lambda: Setup().caller_policy().outbound(method, T0))


def test_a_destination_without_endpoints_is_still_routed_the_host_picks_the_endpoint() -> None:
    # the out-proxy refuses `unavailable` when it has none to pick (test_transport_contract); the
    # embedded SDK's channel already names its target
    call = Setup(endpoints=[]).caller_policy().outbound(METHOD, T0)
    assert call.endpoints == ()
    assert call.request_metadata()


def test_each_call_has_its_own_call_id_and_header() -> None:
    caller = Setup().caller_policy()
    first, second = caller.outbound(METHOD, T0), caller.outbound(METHOD, T0)
    assert first.call_id != second.call_id
    assert first.request_metadata() != second.request_metadata()


def test_a_node_no_rule_concerns_routes_nothing() -> None:
    text = Setup().yaml_text().replace("caller: chat_service", "caller: song_service")
    snapshot = scope_snapshot(load_policy(text), pb.ROLE_OUT, CALLER)
    refused(Reason.NO_ROUTE, lambda: NodePolicy.from_snapshot(snapshot).outbound(METHOD, T0))


# --- callee side ------------------------------------------------------------------------------


def test_an_admitted_call_names_its_caller_and_the_service_timeout() -> None:
    caller, callee = Setup(timeout_ms=750).pair()
    _, inbound = connect(caller, callee, NodeState())
    assert inbound.caller == CALLER
    assert inbound.timeout_ms == 750


def test_a_caller_without_a_rule_for_the_method_is_denied() -> None:
    rules = [{"caller": CALLER, "methods": [OTHER_METHOD]}]
    caller, callee = Setup(rules=rules).pair()
    refused(Reason.DENIED, lambda: connect(caller, callee, NodeState(), method=METHOD))
    connect(caller, callee, NodeState(), method=OTHER_METHOD)


@pytest.mark.parametrize("patterns", [["*"], ["/demo.v1.Echo/*"], [METHOD],
                                      ["/x.Y/Z", METHOD]])
def test_method_patterns_admit_the_method(patterns: list[str]) -> None:
    caller, callee = Setup(rules=[{"caller": CALLER, "methods": patterns}]).pair()
    connect(caller, callee, NodeState())


@pytest.mark.parametrize("patterns", [["/demo.v1.Echo/SayMore"], ["/demo.v1.Ech/*"],
                                      ["/demo.v1/*"]])
def test_method_patterns_do_not_admit_other_methods(patterns: list[str]) -> None:
    text_rules = [{"caller": CALLER, "methods": patterns}]
    caller, callee = Setup(rules=text_rules).pair()
    refused(Reason.DENIED, lambda: callee.inbound(
        METHOD, caller.outbound(METHOD, T0).request_metadata(), T0, NodeState()))


def test_a_wildcard_caller_rule_admits_any_known_caller() -> None:
    caller, callee = Setup(rules=[{"caller": "*", "methods": ["*"]}]).pair()
    assert connect(caller, callee, NodeState())[1].caller == CALLER


def test_the_first_matching_rule_decides_the_rate_limit() -> None:
    rules: list[dict[str, object]] = [
        {"caller": CALLER, "methods": [METHOD], "rate_limit": {"rps": 1, "burst": 1}},
        {"caller": "*", "methods": ["*"]},
    ]
    caller, callee = Setup(rules=rules).pair()
    state = NodeState()
    connect(caller, callee, state)
    refused(Reason.RATE_LIMITED, lambda: connect(caller, callee, state))
    for _ in range(5):  # another method falls to the second, unlimited rule
        connect(caller, callee, state, method=OTHER_METHOD)


def test_rps_10_burst_5_lets_at_most_15_of_30_calls_through_in_one_second() -> None:
    rules = [{"caller": CALLER, "methods": ["*"], "rate_limit": {"rps": 10, "burst": 5}}]
    caller, callee = Setup(rules=rules).pair()
    state = NodeState()
    outcomes = []
    for i in range(30):
        now = T0 + i / 30
        try:
            callee.inbound(METHOD, caller.outbound(METHOD, now).request_metadata(), now, state)
            outcomes.append("ok")
        except FastProxyError as error:
            outcomes.append(error.reason.value)
    assert set(outcomes) == {"ok", "rate_limited"}
    assert 14 <= outcomes.count("ok") <= 15


def test_a_call_with_no_message_is_still_authorized_and_rate_limited() -> None:
    rules = [{"caller": CALLER, "methods": ["*"], "rate_limit": {"rps": 1, "burst": 2}}]
    caller, callee = Setup(rules=rules).pair()
    state = NodeState()
    connect(caller, callee, state)
    connect(caller, callee, state)  # admitted calls that never send a message
    refused(Reason.RATE_LIMITED, lambda: connect(caller, callee, state))


def test_rate_limits_survive_a_policy_swap() -> None:
    rules = [{"caller": CALLER, "methods": ["*"], "rate_limit": {"rps": 1, "burst": 1}}]
    setup = Setup(rules=rules)
    caller, callee = setup.pair()
    state = NodeState()
    connect(caller, callee, state)
    swapped = setup.callee_policy()
    refused(Reason.RATE_LIMITED, lambda: connect(caller, swapped, state))


def test_a_caller_no_rule_names_is_denied_whatever_its_signature() -> None:
    # e.g. its rule was just removed and its out-proxy still has the route: the in-proxy no
    # longer holds its key, and says why the call is refused
    setup = Setup()
    text = setup.yaml_text().replace("caller: chat_service", "caller: song_service")
    callee = NodePolicy.from_snapshot(
        scope_snapshot(load_policy(text), pb.ROLE_IN, CALLEE))
    caller = setup.caller_policy()
    refused(Reason.DENIED, lambda: connect(caller, callee, NodeState()))


def test_the_replay_cache_is_bounded_and_never_admits_a_forgotten_header() -> None:
    cache = ReplayCache(window_s=30, max_entries=3)
    stamp = int(T0 * 1000)
    for i in range(5):
        cache.check_and_remember(bytes([i]), stamp + i, T0)
    assert len(cache) == 3
    refused(Reason.UNAUTHENTICATED, lambda: cache.check_and_remember(bytes([0]), stamp, T0))
    refused(Reason.UNAUTHENTICATED, lambda: cache.check_and_remember(bytes([4]), stamp + 4, T0))
    cache.check_and_remember(bytes([9]), stamp + 9, T0)


def test_the_replay_cache_forgets_what_left_the_window() -> None:
    cache = ReplayCache(window_s=30, max_entries=100)
    cache.check_and_remember(b"a", int(T0 * 1000), T0)
    cache.check_and_remember(b"b", int((T0 + 40) * 1000), T0 + 40)
    assert len(cache) == 1


def test_an_out_node_policy_does_not_guard_a_service() -> None:
    refused(Reason.UNAVAILABLE,
            lambda: Setup().caller_policy().inbound(METHOD, [], T0, NodeState()))


# --- compiling snapshots ----------------------------------------------------------------------


def snapshot(role: int, service: str, setup: Setup | None = None) -> pb.PolicySnapshot:
    text = (setup or Setup()).yaml_text()
    return scope_snapshot(load_policy(text), role, service)


def test_a_compiled_policy_names_its_revision_service_and_role() -> None:
    snap = snapshot(pb.ROLE_IN, CALLEE)
    snap.revision = 42
    policy = NodePolicy.from_snapshot(snap)
    assert (policy.revision, policy.service, policy.role) == (42, CALLEE, pb.ROLE_IN)


def test_a_snapshot_missing_a_referenced_key_is_refused() -> None:
    snap = snapshot(pb.ROLE_OUT, CALLER)
    del snap.keys[:]
    with pytest.raises(NodePolicyError, match="not in the snapshot"):
        NodePolicy.from_snapshot(snap)


def test_an_identity_without_its_private_half_is_refused() -> None:
    snap = snapshot(pb.ROLE_IN, CALLEE, Setup(callee_identity="ed25519"))
    for key in snap.keys:
        if key.name == "song-id-v1":
            key.secret = b""
    with pytest.raises(NodePolicyError, match="private half"):
        NodePolicy.from_snapshot(snap)


def test_a_grpc_service_routed_to_two_services_is_refused() -> None:
    snap = snapshot(pb.ROLE_OUT, CALLER)
    twin = snap.services.add()
    twin.CopyFrom(next(s for s in snap.services if s.name == CALLEE))
    twin.name = "song_twin"
    with pytest.raises(NodePolicyError, match="routed to both"):
        NodePolicy.from_snapshot(snap)


def test_a_snapshot_without_a_role_is_refused() -> None:
    snap = snapshot(pb.ROLE_IN, CALLEE)
    snap.role = pb.ROLE_UNSPECIFIED
    with pytest.raises(NodePolicyError, match="role"):
        NodePolicy.from_snapshot(snap)


def test_a_short_encryption_key_is_refused() -> None:
    snap = snapshot(pb.ROLE_IN, CALLEE)
    for key in snap.keys:
        if key.name == "song-enc-v1":
            key.secret = key.secret[:16]
    with pytest.raises(NodePolicyError, match="song-enc-v1"):
        NodePolicy.from_snapshot(snap)


def test_an_unknown_compression_algorithm_is_refused() -> None:
    snap = snapshot(pb.ROLE_IN, CALLEE)
    snap.services[0].compress.algorithm = "brotli"
    with pytest.raises(NodePolicyError, match="brotli"):
        NodePolicy.from_snapshot(snap)


def test_a_bad_method_pattern_is_refused() -> None:
    snap = snapshot(pb.ROLE_IN, CALLEE)
    own = next(s for s in snap.services if s.name == CALLEE)
    own.allow[0].methods.append("/demo.v1.Echo/Say*")
    with pytest.raises(NodePolicyError, match="allow"):
        NodePolicy.from_snapshot(snap)


# --- key rotation -----------------------------------------------------------------------------

ENC_ROTATION = [("song-enc-v1", ()), ("song-enc-v1", ("song-enc-v2",)),
                ("song-enc-v2", ("song-enc-v1",)), ("song-enc-v2", ())]
ID_ROTATION = [("chat-id-v1", ()), ("chat-id-v1", ("chat-id-v2",)),
               ("chat-id-v2", ("chat-id-v1",)), ("chat-id-v2", ())]


@pytest.mark.parametrize("step", range(3))
def test_key_rotation_fails_no_call_between_neighbouring_revisions(step: int) -> None:
    """Add a key, switch to it, remove the old one: any node may run either of two
    neighbouring revisions while the applies spread, and every call still works."""
    revisions = [Setup(enc_key=ek, enc_accept=ea, caller_key=ik, caller_accept=ia)
                 for (ek, ea), (ik, ia) in zip(ENC_ROTATION, ID_ROTATION, strict=True)]
    for caller_setup in revisions[step:step + 2]:
        for callee_setup in revisions[step:step + 2]:
            outbound, inbound = connect(caller_setup.caller_policy(),
                                        callee_setup.callee_policy(), NodeState())
            assert inbound.open_request(outbound.seal_request(b"ping"), T0) == b"ping"
            assert outbound.open_response(inbound.seal_response(b"pong"), T0) == b"pong"
