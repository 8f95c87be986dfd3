"""Specification of the sealed message and the signed call header.

Sealing then opening gives back the message, for every key type combination, payload size
and stream position; what is sealed survives any protobuf class; and every way of tampering
with it is refused with exactly the contracted reason.
"""

from __future__ import annotations

import random

import pytest
from google.protobuf.unknown_fields import UnknownFieldSet
from support.core_policies import (
    CALLER,
    ENCRYPTION_TYPES,
    METHOD,
    OTHER_METHOD,
    SIGNING_TYPES,
    T0,
    Setup,
    connect,
)

from fastproxy.pipeline.envelope import CALL_METADATA_KEY, SEALED_FIELD_NUMBER
from fastproxy.pipeline.node_policy import NodePolicy, NodeState
from fastproxy.pipeline.reasons import FastProxyError, Reason
from fastproxy.v1 import envelope_pb2 as epb
from fastproxy.v1 import policy_pb2 as pb

KIB = 1024
MIB = 1024 * KIB
MARKER = b"PLAINTEXT-MARKER-7f3a"


def payload(size: int, seed: int = 7) -> bytes:
    return random.Random(seed).randbytes(size)


def refused(reason: Reason, action: object) -> FastProxyError:
    assert callable(action)
    with pytest.raises(FastProxyError) as caught:
        action()
    assert caught.value.reason is reason, caught.value
    return caught.value


def envelope_of(sealed: bytes) -> epb.Envelope:
    return epb.Sealed.FromString(sealed).envelope


COMBINATIONS = [(caller, callee, enc) for caller in SIGNING_TYPES for callee in SIGNING_TYPES
                for enc in ENCRYPTION_TYPES]


@pytest.fixture(scope="module", params=COMBINATIONS, ids=lambda c: "-".join(map(str, c)))
def pair(request: pytest.FixtureRequest) -> tuple[NodePolicy, NodePolicy]:
    caller_identity, callee_identity, encryption = request.param
    return Setup(caller_identity=caller_identity, callee_identity=callee_identity,
                 encryption=encryption).pair()


# --- seal then open is the identity ---------------------------------------------------------


@pytest.mark.parametrize("size", [0, KIB, MIB, 8 * MIB], ids=["0B", "1KiB", "1MiB", "8MiB"])
def test_seal_then_open_returns_the_message_both_ways(pair: tuple[NodePolicy, NodePolicy],
                                                      size: int) -> None:
    caller, callee = pair
    outbound, inbound = connect(caller, callee, NodeState())
    message = payload(size)
    assert inbound.open_request(outbound.seal_request(message), T0) == message
    assert outbound.open_response(inbound.seal_response(message), T0) == message


def test_every_position_of_a_stream_opens_in_order(pair: tuple[NodePolicy, NodePolicy]) -> None:
    caller, callee = pair
    outbound, inbound = connect(caller, callee, NodeState())
    for position in range(1, 21):
        request = payload(position * 37, seed=position)
        assert inbound.open_request(outbound.seal_request(request), T0) == request
    for position in range(1, 6):
        response = payload(position, seed=-position)
        assert outbound.open_response(inbound.seal_response(response), T0) == response


@pytest.mark.parametrize("algorithm", ["gzip", "zstd"])
def test_compression_shrinks_large_messages_and_is_undone(algorithm: str) -> None:
    caller, callee = Setup(compress={"algorithm": algorithm, "min_bytes": 512}).pair()
    outbound, inbound = connect(caller, callee, NodeState())
    message = b"the same words again and again " * 4000
    sealed = outbound.seal_request(message)
    assert len(sealed) < len(message) // 10
    assert inbound.open_request(sealed, T0) == message
    header = epb.MessageHeader.FromString(envelope_of(sealed).header)
    assert header.codec == {"gzip": epb.CODEC_GZIP, "zstd": epb.CODEC_ZSTD}[algorithm]


def test_messages_below_min_bytes_are_not_compressed() -> None:
    caller, callee = Setup(compress={"algorithm": "zstd", "min_bytes": 4096}).pair()
    outbound, inbound = connect(caller, callee, NodeState())
    sealed = outbound.seal_request(b"a" * 4095)
    assert epb.MessageHeader.FromString(envelope_of(sealed).header).codec == epb.CODEC_NONE
    assert inbound.open_request(sealed, T0) == b"a" * 4095


def test_encrypted_messages_never_carry_the_plaintext() -> None:
    caller, callee = Setup(encryption="chacha20-poly1305").pair()
    outbound, inbound = connect(caller, callee, NodeState())
    assert MARKER not in outbound.seal_request(MARKER * 10)
    assert MARKER not in inbound.seal_response(MARKER * 10)


# --- the wire form --------------------------------------------------------------------------


def test_any_protobuf_class_parses_and_writes_back_sealed_bytes_unchanged() -> None:
    caller, callee = Setup().pair()
    outbound, inbound = connect(caller, callee, NodeState())
    message = payload(3000)
    sealed = outbound.seal_request(message)
    unrelated = pb.Key.FromString(sealed)  # an application's generated class stands in
    assert unrelated.name == "" and unrelated.secret == b""
    carried = unrelated.SerializeToString()
    assert carried == sealed
    fields = UnknownFieldSet(unrelated)
    assert [fields[i].field_number for i in range(len(fields))] == [SEALED_FIELD_NUMBER]
    assert inbound.open_request(carried, T0) == message


def test_the_call_header_travels_in_binary_metadata() -> None:
    caller, _ = Setup().pair()
    call = caller.outbound(METHOD, T0)
    metadata = call.request_metadata()
    assert [key for key, _ in metadata] == [CALL_METADATA_KEY]
    assert all(key.endswith("-bin") and isinstance(value, bytes) for key, value in metadata)


# --- tampering --------------------------------------------------------------------------------


def content_ranges(sealed: bytes) -> list[range]:
    """Where the key id, header, payload and signature bytes sit in the sealed bytes."""
    envelope = envelope_of(sealed)
    ranges = []
    for content in (envelope.sig_key_id, envelope.header, envelope.payload,
                    envelope.signature):
        start = sealed.find(content)
        assert start >= 0
        ranges.append(range(start, start + len(content)))
    return ranges


@pytest.mark.parametrize("encryption", ["aes-256-gcm", None])
def test_a_flipped_byte_in_the_envelope_content_is_unauthenticated(
        encryption: str | None) -> None:
    caller, callee = Setup(encryption=encryption).pair()
    state = NodeState()
    outbound, _ = connect(caller, callee, state)
    sealed = outbound.seal_request(payload(200))
    metadata = outbound.request_metadata()
    positions = [i for r in content_ranges(sealed) for i in r]
    assert len(positions) > 0.9 * len(sealed)
    for position in positions:
        damaged = bytearray(sealed)
        damaged[position] ^= 0x01
        inbound = callee.inbound(METHOD, metadata, T0, NodeState())
        refused(Reason.UNAUTHENTICATED,
                lambda d=bytes(damaged), call=inbound: call.open_request(d, T0))


def test_a_flipped_byte_in_the_framing_is_malformed_or_unauthenticated() -> None:
    caller, callee = Setup().pair()
    outbound, _ = connect(caller, callee, NodeState())
    sealed = outbound.seal_request(payload(100))
    inside = {i for r in content_ranges(sealed) for i in r}
    for position in (i for i in range(len(sealed)) if i not in inside):
        for mask in (0x01, 0x80, 0xFF):
            damaged = bytearray(sealed)
            damaged[position] ^= mask
            inbound = callee.inbound(METHOD, outbound.request_metadata(), T0, NodeState())
            with pytest.raises(FastProxyError) as caught:
                inbound.open_request(bytes(damaged), T0)
            assert caught.value.reason in (Reason.MALFORMED, Reason.UNAUTHENTICATED)


def test_a_replayed_message_is_unauthenticated() -> None:
    caller, callee = Setup().pair()
    outbound, inbound = connect(caller, callee, NodeState())
    sealed = outbound.seal_request(b"pay once")
    assert inbound.open_request(sealed, T0) == b"pay once"
    refused(Reason.UNAUTHENTICATED, lambda: inbound.open_request(sealed, T0))


def test_a_replayed_call_header_is_unauthenticated() -> None:
    caller, callee = Setup().pair()
    state = NodeState()
    outbound, _ = connect(caller, callee, state)
    refused(Reason.UNAUTHENTICATED,
            lambda: callee.inbound(METHOD, outbound.request_metadata(), T0 + 1, state))


@pytest.mark.parametrize("encryption", ["aes-256-gcm", None])
def test_a_message_moved_to_another_call_is_unauthenticated(encryption: str | None) -> None:
    caller, callee = Setup(encryption=encryption).pair()
    state = NodeState()
    first, _ = connect(caller, callee, state)
    _, second = connect(caller, callee, state)
    refused(Reason.UNAUTHENTICATED,
            lambda: second.open_request(first.seal_request(b"for the first call"), T0))


@pytest.mark.parametrize("encryption", ["aes-256-gcm", None])
def test_a_message_moved_to_another_method_is_unauthenticated(encryption: str | None) -> None:
    rules = [{"caller": CALLER, "methods": ["*"]}]
    caller, callee = Setup(encryption=encryption, rules=rules).pair()
    state = NodeState()
    outbound, _ = connect(caller, callee, state, method=METHOD)
    # The transport would see the call arrive for another method: header and message refused.
    refused(Reason.UNAUTHENTICATED,
            lambda: callee.inbound(OTHER_METHOD, outbound.request_metadata(), T0, NodeState()))
    _, other = connect(caller, callee, state, method=OTHER_METHOD)
    sealed = outbound.seal_request(b"meant for Say")
    refused(Reason.UNAUTHENTICATED, lambda: other.open_request(sealed, T0))


@pytest.mark.parametrize("encryption", ["aes-256-gcm", None])
def test_a_message_moved_to_another_position_is_unauthenticated(
        encryption: str | None) -> None:
    caller, callee = Setup(encryption=encryption).pair()
    outbound, inbound = connect(caller, callee, NodeState())
    first, second = outbound.seal_request(b"one"), outbound.seal_request(b"two")
    refused(Reason.UNAUTHENTICATED, lambda: inbound.open_request(second, T0))
    assert inbound.open_request(first, T0) == b"one"
    assert inbound.open_request(second, T0) == b"two"


@pytest.mark.parametrize("identity", SIGNING_TYPES)
def test_a_message_moved_to_the_other_direction_is_unauthenticated(identity: str) -> None:
    caller, callee = Setup(caller_identity=identity, callee_identity=identity).pair()
    outbound, inbound = connect(caller, callee, NodeState())
    refused(Reason.UNAUTHENTICATED,
            lambda: outbound.open_response(outbound.seal_request(b"a request"), T0))
    refused(Reason.UNAUTHENTICATED,
            lambda: inbound.open_request(inbound.seal_response(b"a response"), T0))


def test_a_message_under_an_unknown_encryption_key_is_unauthenticated() -> None:
    caller = Setup(enc_key="song-enc-v2").caller_policy()
    callee = Setup(enc_key="song-enc-v1").callee_policy()
    outbound, inbound = connect(caller, callee, NodeState())
    refused(Reason.UNAUTHENTICATED, lambda: inbound.open_request(
        outbound.seal_request(b"x"), T0))


def test_a_call_signed_with_an_unknown_identity_key_is_unauthenticated() -> None:
    caller = Setup(caller_key="chat-id-v2").caller_policy()
    callee = Setup(caller_key="chat-id-v1").callee_policy()
    outbound = caller.outbound(METHOD, T0)
    refused(Reason.UNAUTHENTICATED,
            lambda: callee.inbound(METHOD, outbound.request_metadata(), T0, NodeState()))


def test_a_plaintext_message_where_encryption_is_required_is_unauthenticated() -> None:
    caller = Setup(encryption=None).caller_policy()
    callee = Setup(encryption="aes-256-gcm").callee_policy()
    outbound, inbound = connect(caller, callee, NodeState())
    refused(Reason.UNAUTHENTICATED, lambda: inbound.open_request(
        outbound.seal_request(b"downgraded"), T0))


@pytest.mark.parametrize("skew", [-31.0, 31.0])
def test_a_call_header_outside_the_replay_window_is_unauthenticated(skew: float) -> None:
    caller, callee = Setup().pair()
    outbound = caller.outbound(METHOD, T0)
    refused(Reason.UNAUTHENTICATED,
            lambda: callee.inbound(METHOD, outbound.request_metadata(), T0 + skew,
                                   NodeState()))
    callee.inbound(METHOD, outbound.request_metadata(), T0 + skew / 2, NodeState())


def test_a_message_stamped_outside_the_window_is_unauthenticated() -> None:
    caller, callee = Setup().pair()
    outbound, inbound = connect(caller, callee, NodeState())
    refused(Reason.UNAUTHENTICATED,
            lambda: inbound.open_request(outbound.seal_request(b"old", now=T0 - 60), T0))
    _, inbound = connect(caller, callee, NodeState())
    refused(Reason.UNAUTHENTICATED,
            lambda: outbound.open_response(inbound.seal_response(b"future", now=T0 + 60), T0))


def test_a_long_stream_keeps_opening_after_the_window() -> None:
    caller, callee = Setup().pair()
    outbound, inbound = connect(caller, callee, NodeState())
    for minute in range(1, 4):
        now = T0 + 60 * minute
        assert inbound.open_request(outbound.seal_request(b"tick", now=now), now) == b"tick"
        assert outbound.open_response(inbound.seal_response(b"tock", now=now), now) == b"tock"


@pytest.mark.parametrize("garbage", [
    b"", b"\x00", b"hello world", bytes(range(256)),
    pb.Key(name="not-an-envelope").SerializeToString(),
    epb.Envelope(version=1).SerializeToString(),
], ids=["empty", "zero", "text", "bytes", "other-message", "bare-envelope"])
def test_garbage_is_malformed(garbage: bytes) -> None:
    caller, callee = Setup().pair()
    outbound, inbound = connect(caller, callee, NodeState())
    refused(Reason.MALFORMED, lambda: inbound.open_request(garbage, T0))
    refused(Reason.MALFORMED, lambda: outbound.open_response(garbage, T0))


def test_an_envelope_of_another_version_is_malformed() -> None:
    caller, callee = Setup().pair()
    outbound, inbound = connect(caller, callee, NodeState())
    sealed = epb.Sealed.FromString(outbound.seal_request(b"v1"))
    sealed.envelope.version = 2
    refused(Reason.MALFORMED, lambda: inbound.open_request(sealed.SerializeToString(), T0))


def test_a_message_over_the_size_limit_is_malformed() -> None:
    setup = Setup(compress={"algorithm": "gzip", "min_bytes": 0})
    caller = setup.caller_policy()
    callee = setup.callee_policy(max_message_bytes=64 * KIB)
    outbound, inbound = connect(caller, callee, NodeState())
    assert inbound.open_request(outbound.seal_request(b"z" * 64 * KIB), T0) == b"z" * 64 * KIB
    # compresses to a few hundred bytes, inflates past the limit: refused while inflating
    error = refused(Reason.MALFORMED,
                    lambda: inbound.open_request(outbound.seal_request(b"z" * MIB), T0))
    assert "limit" in error.detail
    _, inbound = connect(caller, callee, NodeState())
    refused(Reason.MALFORMED, lambda: inbound.open_request(
        connect(caller, callee, NodeState())[0].seal_request(payload(200 * KIB)), T0))


# --- the call header --------------------------------------------------------------------------


def test_a_call_without_a_call_header_is_unauthenticated() -> None:
    _, callee = Setup().pair()
    refused(Reason.UNAUTHENTICATED,
            lambda: callee.inbound(METHOD, [("x-app", "1")], T0, NodeState()))


def test_a_garbage_call_header_is_malformed() -> None:
    _, callee = Setup().pair()
    refused(Reason.MALFORMED, lambda: callee.inbound(
        METHOD, [(CALL_METADATA_KEY, b"\xff\xff\xff")], T0, NodeState()))


def test_a_call_header_with_a_flipped_byte_is_unauthenticated() -> None:
    caller, callee = Setup().pair()
    ((key, value),) = caller.outbound(METHOD, T0).request_metadata()
    signed = epb.SignedCallHeader.FromString(value)
    for content in (signed.sig_key_id, signed.header, signed.signature):
        start = value.find(content)
        for position in range(start, start + len(content)):
            damaged = bytearray(value)
            damaged[position] ^= 0x01
            refused(Reason.UNAUTHENTICATED, lambda d=bytes(damaged): callee.inbound(
                METHOD, [(key, d)], T0, NodeState()))
