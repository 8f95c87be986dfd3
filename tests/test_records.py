"""The record layer (docs/protocol.md, section 4): a message sealed by one side opens to the
same bytes on the other, only at its position, in its call, direction and session; the
carrier survives any protobuf class; compression, encryption and CLEAR mode; size limits;
and bytes that are no record of version 2."""

from __future__ import annotations

import random

import pytest
from google.protobuf.unknown_fields import UnknownFieldSet
from support.core_policies import (
    ENCRYPTION_TYPES,
    Setup,
    connect,
    open_session,
    refused,
)

from fastproxy.pipeline.node_policy import NodePolicy, NodeState
from fastproxy.pipeline.reasons import Reason
from fastproxy.pipeline.records import (
    CARRIER_TAG,
    CLEAR,
    CODEC_MASK,
    DATA,
    HEAD,
    Direction,
    carry,
    uncarry,
)
from fastproxy.v1 import policy_pb2 as pb
from fastproxy.v1 import session_pb2 as spb

KIB = 1024
MIB = 1024 * KIB
MARKER = b"PLAINTEXT-MARKER-7f3a"
CARRIER_FIELD = 536870911


def payload(size: int, seed: int = 7) -> bytes:
    return random.Random(seed).randbytes(size)


@pytest.fixture(scope="module", params=ENCRYPTION_TYPES, ids=str)
def pair(request: pytest.FixtureRequest) -> tuple[NodePolicy, NodePolicy]:
    return Setup(encryption=request.param).pair()


# --- seal then open --------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, KIB, MIB, 8 * MIB], ids=["0B", "1KiB", "1MiB", "8MiB"])
def test_a_message_opens_to_the_bytes_sealed_in_both_directions(
        pair: tuple[NodePolicy, NodePolicy], size: int) -> None:
    outbound, inbound = connect(*pair, NodeState())
    message = payload(size)
    assert inbound.open_request(outbound.seal_request(message)) == message
    assert outbound.open_response(inbound.seal_response(message)) == message


def test_every_position_of_a_stream_opens_in_order(pair: tuple[NodePolicy, NodePolicy]) -> None:
    outbound, inbound = connect(*pair, NodeState())
    for position in range(1, 21):
        request = payload(position * 37, seed=position)
        assert inbound.open_request(outbound.seal_request(request)) == request
    for position in range(1, 6):
        response = payload(position, seed=-position)
        assert outbound.open_response(inbound.seal_response(response)) == response


# --- the carrier -----------------------------------------------------------------------------


def test_any_protobuf_class_keeps_a_carried_record_and_writes_it_back_unchanged() -> None:
    outbound, inbound = connect(*Setup().pair(), NodeState())
    message = payload(3000)
    sealed = outbound.seal_request(message)
    unrelated = pb.Key.FromString(sealed)  # an application's generated class stands in
    assert unrelated.name == "" and unrelated.secret == b""
    carried = unrelated.SerializeToString()
    assert carried == sealed
    assert inbound.open_request(carried) == message


def test_the_carrier_is_protobuf_field_536870911() -> None:
    record = b"\x02\x02\x00" + bytes(40)
    fields = UnknownFieldSet(pb.Key.FromString(carry(record)))
    assert [fields[i].field_number for i in range(len(fields))] == [CARRIER_FIELD]
    assert fields[0].data == record
    assert carry(record).startswith(CARRIER_TAG)
    assert uncarry(carry(record), 1 << 20) == record


@pytest.mark.parametrize("garbage", [
    b"", b"\x00", b"hello world", bytes(range(256)),
    pb.Key(name="not-a-carrier").SerializeToString(),
    CARRIER_TAG, CARRIER_TAG + b"\x05\x02\x02",
], ids=["empty", "zero", "text", "bytes", "other-message", "tag-only", "length-differs"])
def test_bytes_that_carry_no_record_are_malformed(garbage: bytes) -> None:
    outbound, inbound = connect(*Setup().pair(), NodeState())
    refused(Reason.MALFORMED, lambda: inbound.open_request(garbage))
    refused(Reason.MALFORMED, lambda: outbound.open_response(garbage))


def test_a_record_of_protocol_version_1_is_refused_naming_the_version() -> None:
    _, inbound = connect(*Setup().pair(), NodeState())
    v1_envelope = b"\x08\x01\x12\x04abcd" + bytes(20)  # field 1 varint: a v1 envelope
    error = refused(Reason.UNAUTHENTICATED, lambda: inbound.open_request(carry(v1_envelope)))
    assert "protocol version 1" in error.detail and "version 2" in error.detail


def test_a_record_of_another_version_is_refused() -> None:
    outbound, inbound = connect(*Setup().pair(), NodeState())
    record = bytearray(outbound.seal_request(b"v2")[len(CARRIER_TAG) + 1:])
    record[0] = 3
    error = refused(Reason.UNAUTHENTICATED, lambda: inbound.open_request(carry(bytes(record))))
    assert "not of protocol version 2" in error.detail


def test_a_record_shorter_than_its_header_and_tag_is_refused() -> None:
    _, inbound = connect(*Setup().pair(), NodeState())
    error = refused(Reason.UNAUTHENTICATED,
                    lambda: inbound.open_request(carry(b"\x02\x02\x00" + bytes(15))))
    assert "cut short" in error.detail


def test_a_record_of_another_type_among_messages_is_refused() -> None:
    outbound, inbound = connect(*Setup().pair(), NodeState())
    head = Direction(outbound.session.request, outbound.call_number, clear=False,
                     max_bytes=MIB).seal(HEAD, b"", position=1)
    error = refused(Reason.UNAUTHENTICATED, lambda: inbound.open_request(carry(head)))
    assert "HEAD record where DATA or END was due" in error.detail


# --- compression -----------------------------------------------------------------------------


def flags_of(sealed: bytes) -> int:
    return uncarry(sealed, 64 * MIB)[2]


@pytest.mark.parametrize("algorithm", ["gzip", "zstd"])
def test_compression_shrinks_large_messages_and_the_flags_name_the_codec(algorithm: str) -> None:
    outbound, inbound = connect(
        *Setup(compress={"algorithm": algorithm, "min_bytes": 512}).pair(), NodeState())
    message = b"the same words again and again " * 4000
    sealed = outbound.seal_request(message)
    assert len(sealed) < len(message) // 10
    assert flags_of(sealed) & CODEC_MASK == {"gzip": spb.CODEC_GZIP,
                                             "zstd": spb.CODEC_ZSTD}[algorithm]
    assert inbound.open_request(sealed) == message


def test_the_callee_compresses_responses_with_its_own_codec() -> None:
    outbound, inbound = connect(
        *Setup(compress={"algorithm": "zstd", "min_bytes": 0}).pair(), NodeState())
    message = b"an answer repeated " * 1000
    sealed = inbound.seal_response(message)
    assert flags_of(sealed) & CODEC_MASK == spb.CODEC_ZSTD
    assert outbound.open_response(sealed) == message


def test_messages_below_min_bytes_travel_uncompressed() -> None:
    outbound, inbound = connect(
        *Setup(compress={"algorithm": "zstd", "min_bytes": 4096}).pair(), NodeState())
    sealed = outbound.seal_request(b"a" * 4095)
    assert flags_of(sealed) & CODEC_MASK == spb.CODEC_NONE
    assert inbound.open_request(sealed) == b"a" * 4095


def test_a_message_compression_does_not_shrink_travels_uncompressed() -> None:
    outbound, inbound = connect(
        *Setup(compress={"algorithm": "gzip", "min_bytes": 0}).pair(), NodeState())
    message = payload(2000)  # random bytes do not compress
    sealed = outbound.seal_request(message)
    assert flags_of(sealed) & CODEC_MASK == spb.CODEC_NONE
    assert inbound.open_request(sealed) == message


# --- encryption and CLEAR mode ---------------------------------------------------------------


@pytest.mark.parametrize("encryption", ["aes-256-gcm", "chacha20-poly1305"])
def test_encrypted_messages_never_carry_the_plaintext(encryption: str) -> None:
    outbound, inbound = connect(*Setup(encryption=encryption).pair(), NodeState())
    assert MARKER not in outbound.seal_request(MARKER * 10)
    assert MARKER not in inbound.seal_response(MARKER * 10)


def test_without_an_encryption_key_messages_travel_flagged_clear() -> None:
    outbound, inbound = connect(*Setup(encryption=None).pair(), NodeState())
    sealed = outbound.seal_request(MARKER)
    assert MARKER in sealed
    assert flags_of(sealed) & CLEAR
    assert inbound.open_request(sealed) == MARKER


def test_a_clear_message_in_a_session_that_encrypts_is_refused() -> None:
    outbound, inbound = connect(*Setup(encryption="aes-256-gcm").pair(), NodeState())
    downgraded = Direction(outbound.session.request, outbound.call_number, clear=True,
                           max_bytes=MIB).seal_message(b"downgraded", None)
    error = refused(Reason.UNAUTHENTICATED, lambda: inbound.open_request(downgraded))
    assert "not encrypted" in error.detail


# --- sizes -----------------------------------------------------------------------------------


def test_a_sealed_message_over_the_size_limit_is_malformed() -> None:
    setup = Setup()
    caller, callee = setup.caller_policy(), setup.callee_policy(max_message_bytes=64 * KIB)
    outbound, inbound = connect(caller, callee, NodeState())
    assert inbound.open_request(outbound.seal_request(payload(64 * KIB))) == payload(64 * KIB)
    error = refused(Reason.MALFORMED,
                    lambda: inbound.open_request(outbound.seal_request(payload(200 * KIB))))
    assert "limit" in error.detail


@pytest.mark.parametrize("algorithm", ["gzip", "zstd"])
def test_a_message_that_inflates_past_the_size_limit_is_malformed(algorithm: str) -> None:
    setup = Setup(compress={"algorithm": algorithm, "min_bytes": 0})
    caller, callee = setup.caller_policy(), setup.callee_policy(max_message_bytes=64 * KIB)
    outbound, inbound = connect(caller, callee, NodeState())
    sealed = outbound.seal_request(b"z" * MIB)  # a few hundred bytes on the wire
    assert len(sealed) < 64 * KIB
    error = refused(Reason.MALFORMED, lambda: inbound.open_request(sealed))
    assert "limit" in error.detail


# --- a record opens only where it was sealed ---------------------------------------------------


def test_a_duplicated_message_is_refused() -> None:
    outbound, inbound = connect(*Setup().pair(), NodeState())
    sealed = outbound.seal_request(b"pay once")
    assert inbound.open_request(sealed) == b"pay once"
    refused(Reason.UNAUTHENTICATED, lambda: inbound.open_request(sealed))


@pytest.mark.parametrize("encryption", ["aes-256-gcm", None])
def test_a_message_ahead_of_its_position_is_refused_and_the_stream_goes_on(
        encryption: str | None) -> None:
    outbound, inbound = connect(*Setup(encryption=encryption).pair(), NodeState())
    first, second = outbound.seal_request(b"one"), outbound.seal_request(b"two")
    refused(Reason.UNAUTHENTICATED, lambda: inbound.open_request(second))
    assert inbound.open_request(first) == b"one"
    assert inbound.open_request(second) == b"two"


@pytest.mark.parametrize("encryption", ["aes-256-gcm", None])
def test_a_message_moved_to_another_call_of_its_session_is_refused(
        encryption: str | None) -> None:
    caller, callee = Setup(encryption=encryption).pair()
    state = NodeState()
    session = open_session(caller, callee, state)
    first, _ = connect(caller, callee, state, session=session)
    _, second = connect(caller, callee, state, session=session)
    refused(Reason.UNAUTHENTICATED,
            lambda: second.open_request(first.seal_request(b"for the first call")))


@pytest.mark.parametrize("encryption", ["aes-256-gcm", None])
def test_a_message_moved_to_another_session_is_refused(encryption: str | None) -> None:
    caller, callee = Setup(encryption=encryption).pair()
    state = NodeState()
    first, _ = connect(caller, callee, state)
    _, other = connect(caller, callee, state)  # a new session: call number 1 again
    assert first.call_number == other.call_number == 1
    refused(Reason.UNAUTHENTICATED, lambda: other.open_request(first.seal_request(b"mine")))


@pytest.mark.parametrize("encryption", ["aes-256-gcm", None])
def test_a_message_moved_to_the_other_direction_is_refused(encryption: str | None) -> None:
    outbound, inbound = connect(*Setup(encryption=encryption).pair(), NodeState())
    refused(Reason.UNAUTHENTICATED,
            lambda: outbound.open_response(outbound.seal_request(b"a request")))
    refused(Reason.UNAUTHENTICATED,
            lambda: inbound.open_request(inbound.seal_response(b"a response")))


def test_a_direction_seals_each_position_once() -> None:
    _, inbound = connect(*Setup().pair(), NodeState())
    direction = Direction(inbound.session.request, 9, clear=False, max_bytes=MIB)
    records = [direction.seal(DATA, b"same") for _ in range(3)]
    assert len(set(records)) == 3
    assert direction.position == 4
