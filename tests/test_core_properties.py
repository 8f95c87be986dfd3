"""Properties of the sans-IO core, checked on generated inputs.

Whatever bytes arrive as a sealed message or a call header, the core answers with the
message or with a `FastProxyError` carrying a contracted reason, never another exception;
and seal-then-open is the identity for any payload, key type and stream position.
"""

from __future__ import annotations

import os
from functools import cache

from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.core_policies import (
    CALLER,
    ENCRYPTION_TYPES,
    METHOD,
    SIGNING_TYPES,
    T0,
    Setup,
    connect,
)

from fastproxy.pipeline.envelope import CALL_METADATA_KEY
from fastproxy.pipeline.node_policy import NodePolicy, NodePolicyError, NodeState
from fastproxy.pipeline.reasons import FastProxyError, Reason
from fastproxy.policy import load_policy
from fastproxy.policy.scope import scope_snapshot
from fastproxy.v1 import policy_pb2 as pb

MESSAGE_REASONS = {Reason.MALFORMED, Reason.UNAUTHENTICATED}
HEADER_REASONS = {Reason.MALFORMED, Reason.UNAUTHENTICATED, Reason.DENIED, Reason.RATE_LIMITED}
FAST = settings(max_examples=int(os.environ.get("FASTPROXY_EXAMPLES", "150")), deadline=None,
                suppress_health_check=[HealthCheck.too_slow])


@cache
def policies(caller_identity: str, callee_identity: str, encryption: str | None,
             codec: str | None) -> tuple[NodePolicy, NodePolicy]:
    compress = None if codec is None else {"algorithm": codec, "min_bytes": 64}
    return Setup(caller_identity=caller_identity, callee_identity=callee_identity,
                 encryption=encryption, compress=compress).pair()


Combination = tuple[str, str, str | None, str | None]
combinations = st.tuples(st.sampled_from(SIGNING_TYPES), st.sampled_from(SIGNING_TYPES),
                         st.sampled_from(ENCRYPTION_TYPES),
                         st.sampled_from([None, "gzip", "zstd"]))


def repeated(chunk: bytes, times: int) -> bytes:
    return chunk * times


# random bytes, and repetitive ones that compression shrinks
payloads = st.one_of(st.binary(max_size=4096),
                     st.builds(repeated, st.binary(min_size=1, max_size=16),
                               st.integers(1, 2000)))


@st.composite
def mutations(draw: st.DrawFn, data: bytes) -> bytes:
    """One to three edits: flip, overwrite, insert, delete, truncate or extend."""
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate", "extend"]))
        at = draw(st.integers(0, max(0, len(out) - 1)))
        if kind == "flip" and out:
            out[at] ^= draw(st.integers(1, 255))
        elif kind == "set" and out:
            out[at] = draw(st.integers(0, 255))
        elif kind == "insert":
            out[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif kind == "delete" and out:
            del out[at:at + draw(st.integers(1, 8))]
        elif kind == "truncate":
            del out[at:]
        else:
            out += draw(st.binary(min_size=1, max_size=8))
    return bytes(out)


@FAST
@given(combination=combinations, messages=st.lists(payloads, min_size=1, max_size=4),
       responses=st.lists(payloads, max_size=3))
def test_seal_then_open_is_the_identity(combination: Combination, messages: list[bytes],
                                        responses: list[bytes]) -> None:
    caller, callee = policies(*combination)
    outbound, inbound = connect(caller, callee, NodeState())
    for message in messages:
        assert inbound.open_request(outbound.seal_request(message), T0) == message
    for message in responses:
        assert outbound.open_response(inbound.seal_response(message), T0) == message


@FAST
@given(combination=combinations, garbage=st.binary(max_size=2048))
def test_random_bytes_are_refused_with_a_contracted_reason(combination: Combination,
                                                            garbage: bytes) -> None:
    caller, callee = policies(*combination)
    outbound, inbound = connect(caller, callee, NodeState())
    for open_message in (inbound.open_request, outbound.open_response):
        try:
            open_message(garbage, T0)
        except FastProxyError as error:
            assert error.reason in MESSAGE_REASONS
        else:
            raise AssertionError("random bytes opened as a sealed message")


@FAST
@given(combination=combinations, message=payloads, data=st.data())
def test_mutated_envelopes_open_unchanged_or_are_refused(combination: Combination, message: bytes,
                                                         data: st.DataObject) -> None:
    caller, callee = policies(*combination)
    outbound, inbound = connect(caller, callee, NodeState())
    sealed = outbound.seal_request(message)
    damaged = data.draw(mutations(sealed))
    try:
        opened = inbound.open_request(damaged, T0)
    except FastProxyError as error:
        assert error.reason in MESSAGE_REASONS
    else:  # an edit protobuf ignores (e.g. an appended unknown field) changes nothing
        assert opened == message


@FAST
@given(combination=combinations, data=st.data())
def test_mutated_call_headers_are_admitted_unchanged_or_refused(combination: Combination,
                                                                data: st.DataObject) -> None:
    caller, callee = policies(*combination)
    ((key, value),) = caller.outbound(METHOD, T0).request_metadata()
    damaged = data.draw(mutations(value))
    try:
        inbound = callee.inbound(METHOD, [(key, damaged)], T0, NodeState())
    except FastProxyError as error:
        assert error.reason in HEADER_REASONS
    else:
        assert inbound.caller == CALLER


@FAST
@given(metadata=st.lists(st.tuples(st.sampled_from([CALL_METADATA_KEY, "x-app", "x-bin"]),
                                   st.one_of(st.binary(max_size=64), st.text(max_size=64))),
                         max_size=3),
       method=st.text(max_size=40))
def test_random_metadata_and_methods_are_refused_with_a_contracted_reason(
        metadata: list[tuple[str, str | bytes]], method: str) -> None:
    caller, callee = policies("hmac-sha256", "ed25519", "aes-256-gcm", None)
    try:
        callee.inbound(method, metadata, T0, NodeState())
    except FastProxyError as error:
        assert error.reason in HEADER_REASONS
    try:
        caller.outbound(method, T0)
    except FastProxyError as error:
        assert error.reason in {Reason.NO_ROUTE, Reason.UNAVAILABLE}


@cache
def snapshot_bytes(role: int) -> bytes:
    setup = Setup(callee_identity="ed25519", compress={"algorithm": "gzip"},
                  rules=[{"caller": CALLER, "methods": ["*"],
                          "rate_limit": {"rps": 5, "burst": 2}}])
    service = CALLER if role == pb.ROLE_OUT else "song_service"
    snap = scope_snapshot(load_policy(setup.yaml_text()), role, service)
    return bytes(snap.SerializeToString())


@FAST
@given(role=st.sampled_from([pb.ROLE_IN, pb.ROLE_OUT]), data=st.data())
def test_mutated_snapshots_compile_or_are_refused_with_a_clear_error(role: int,
                                                                     data: st.DataObject) -> None:
    damaged = data.draw(mutations(snapshot_bytes(role)))
    snapshot = pb.PolicySnapshot()
    try:
        snapshot.ParseFromString(damaged)
    except DecodeError:  # not a snapshot at all: the node never compiles it
        return
    try:
        NodePolicy.from_snapshot(snapshot)
    except NodePolicyError as error:
        assert str(error)
