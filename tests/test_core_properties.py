"""Properties of the sans-IO core on generated inputs (protocol version 2).

Whatever arrives in place of a signed hello or a record, the core answers with what was
sealed or with a `FastProxyError` of a contracted reason, never another exception: any
single-bit change or truncation of a hello, a CALL, DATA, END, HEAD or STATUS record is
refused (UNAUTHENTICATED; MALFORMED where the carrier itself no longer parses), as is any
reordering of a stream and any record moved to another call, direction or session. Sealing
then opening gives back every message, with and without compression, encrypted or CLEAR;
a metadata entry added, removed or changed on the way is refused; credentials never travel
in the clear and are restored; the call-number window accepts each number once.

FASTPROXY_EXAMPLES sets the number of examples per property (default 150).
"""

from __future__ import annotations

import os
import string
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

import pytest
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from support.core_policies import (
    CALLEE,
    CALLER,
    METHOD,
    T0,
    Setup,
    connect,
    open_session,
)

from fastproxy.pipeline.handshake import CALL_WINDOW, CallWindow
from fastproxy.pipeline.metadata import CALL_KEY, END_KEY, HEAD_KEY, Metadata, value_bytes
from fastproxy.pipeline.node_policy import NodePolicy, NodePolicyError, NodeState
from fastproxy.pipeline.reasons import FastProxyError, Reason
from fastproxy.pipeline.records import SESSION_ID_BYTES, carry, uncarry
from fastproxy.pipeline.stages import InboundCall, OutboundCall
from fastproxy.policy import load_policy
from fastproxy.policy.scope import scope_snapshot
from fastproxy.v1 import policy_pb2 as pb

EXAMPLES = int(os.environ.get("FASTPROXY_EXAMPLES", "150"))
FAST = settings(max_examples=EXAMPLES, deadline=None,
                suppress_health_check=[HealthCheck.too_slow])
FEWER = settings(max_examples=max(10, EXAMPLES // 3), deadline=None,
                 suppress_health_check=[HealthCheck.too_slow])
MIB = 1 << 20
SECRET_NAME = "x-api-key"  # listed in the callee's secret_metadata


@cache
def policies(encryption: str | None = "aes-256-gcm", codec: str | None = None,
             identity: str = "hmac-sha256") -> tuple[NodePolicy, NodePolicy]:
    compress = None if codec is None else {"algorithm": codec, "min_bytes": 64}
    return Setup(caller_identity=identity, callee_identity=identity, encryption=encryption,
                 compress=compress, secret_metadata=[SECRET_NAME]).pair()


def refusal(action: Callable[[], object]) -> FastProxyError:
    """The FastProxyError `action` raises; fails if it raises nothing (another exception
    type propagates and fails the property too)."""
    try:
        action()
    except FastProxyError as error:
        return error
    raise AssertionError("accepted")


def app_part(metadata: Metadata, key: str) -> tuple[Metadata, bytes]:
    """(the entries but `key`, the record under `key`)."""
    record = dict(metadata)[key]
    assert isinstance(record, bytes)
    return tuple(entry for entry in metadata if entry[0] != key), record


encryptions = st.sampled_from(["aes-256-gcm", "chacha20-poly1305", None])
codecs = st.sampled_from([None, "gzip", "zstd"])
identities = st.sampled_from(["hmac-sha256", "ed25519"])


def repeated(chunk: bytes, times: int) -> bytes:
    return chunk * times


# random bytes, and repetitive ones that compression shrinks
payloads = st.one_of(st.binary(max_size=2048),
                     st.builds(repeated, st.binary(min_size=1, max_size=16),
                               st.integers(1, 1000)))
texts = st.text(alphabet=string.ascii_letters + string.digits + " -_.=/", max_size=24)
APP_NAMES = ("x-a", "x-b", "x-c-bin", "x-trace-id")


@st.composite
def entries(draw: st.DrawFn, names: tuple[str, ...] = APP_NAMES) -> tuple[str, str | bytes]:
    name = draw(st.sampled_from(names))
    value: str | bytes = draw(st.binary(max_size=24)) if name.endswith("-bin") else draw(texts)
    return name, value


app_metadata = st.lists(entries(), max_size=6).map(tuple)


# --- every record as sealed, and where it opens ------------------------------------------------


@dataclass
class Artifact:
    """Bytes one side sent, and how the other side takes them."""

    data: bytes
    take: Callable[[bytes], object]
    carrier_prefix: int = 0  # bytes of carrier framing before the record (DATA and END)


def _session_call(encryption: str | None) -> tuple[NodePolicy, NodePolicy, NodeState,
                                                   OutboundCall, InboundCall]:
    caller, callee = policies(encryption)
    state = NodeState()
    outbound, inbound = connect(caller, callee, state, metadata=(("x-a", "1"),))
    return caller, callee, state, outbound, inbound


def _carried(data: bytes, take: Callable[[bytes], object]) -> Artifact:
    return Artifact(data, take, len(data) - len(uncarry(data, 64 * MIB)))


def client_hello(encryption: str | None, message: bytes) -> Artifact:
    caller, callee = policies(encryption)
    handshake = caller.caller.handshake(caller.route(METHOD), T0)
    return Artifact(handshake.request, lambda b: callee.accept(b, T0, NodeState()))


def server_hello(encryption: str | None, message: bytes) -> Artifact:
    caller, callee = policies(encryption)
    destination = caller.route(METHOD)
    handshake = caller.caller.handshake(destination, T0)
    answer = callee.accept(handshake.request, T0, NodeState())
    return Artifact(answer, lambda b: handshake.finish(b, destination.verifiers, T0))


def call_record(encryption: str | None, message: bytes) -> Artifact:
    caller, callee = policies(encryption)
    state = NodeState()
    session = open_session(caller, callee, state)
    outbound = caller.outbound(caller.route(METHOD), session, METHOD,
                               (("x-a", "1"), ("authorization", "Bearer t")), T0)
    clear, record = app_part(outbound.metadata, CALL_KEY)
    return Artifact(record, lambda b: callee.inbound(METHOD, (*clear, (CALL_KEY, b)), T0, state))


def request_data(encryption: str | None, message: bytes) -> Artifact:
    *_, outbound, inbound = _session_call(encryption)
    return _carried(outbound.seal_request(message), inbound.open_request)


def response_data(encryption: str | None, message: bytes) -> Artifact:
    *_, outbound, inbound = _session_call(encryption)
    return _carried(inbound.seal_response(message), outbound.open_response)


def end_record(encryption: str | None, message: bytes) -> Artifact:
    *_, outbound, inbound = _session_call(encryption)
    inbound.open_request(outbound.seal_request(message))
    end = outbound.end_requests()
    assert end is not None
    return _carried(end, inbound.open_request)


def head_record(encryption: str | None, message: bytes) -> Artifact:
    *_, outbound, inbound = _session_call(encryption)
    clear, record = app_part(inbound.seal_head((("x-h", "v"), ("set-cookie", "s"))), HEAD_KEY)
    return Artifact(record, lambda b: outbound.open_head((*clear, (HEAD_KEY, b))))


def status_record(encryption: str | None, message: bytes) -> Artifact:
    *_, outbound, inbound = _session_call(encryption)
    outbound.open_response(inbound.seal_response(message))
    clear, record = app_part(inbound.seal_end(5, "not found", (("x-t", "t"),)), END_KEY)
    return Artifact(record, lambda b: outbound.open_end(5, "not found", (*clear, (END_KEY, b))))


ARTIFACTS: dict[str, Callable[[str | None, bytes], Artifact]] = {
    "client-hello": client_hello, "server-hello": server_hello, "CALL": call_record,
    "request-DATA": request_data, "response-DATA": response_data, "END": end_record,
    "HEAD": head_record, "STATUS": status_record,
}
CARRIED = ("request-DATA", "response-DATA", "END")


@FEWER
@pytest.mark.parametrize("kind", ARTIFACTS)
@given(encryption=encryptions, message=payloads)
def test_every_record_as_sealed_is_taken(kind: str, encryption: str | None,
                                         message: bytes) -> None:
    artifact = ARTIFACTS[kind](encryption, message)
    artifact.take(artifact.data)


@FAST
@pytest.mark.parametrize("kind", ARTIFACTS)
@given(encryption=encryptions, message=payloads, data=st.data())
def test_any_single_bit_change_is_refused(kind: str, encryption: str | None, message: bytes,
                                          data: st.DataObject) -> None:
    artifact = ARTIFACTS[kind](encryption, message)
    bit = data.draw(st.integers(0, len(artifact.data) * 8 - 1), label="bit")
    changed = bytearray(artifact.data)
    changed[bit // 8] ^= 1 << (bit % 8)
    error = refusal(lambda: artifact.take(bytes(changed)))
    in_carrier = bit // 8 < artifact.carrier_prefix
    assert error.reason is (Reason.MALFORMED if in_carrier else Reason.UNAUTHENTICATED), error


@pytest.mark.parametrize("kind", ARTIFACTS)
@pytest.mark.parametrize("encryption", ["aes-256-gcm", None])
def test_every_single_bit_change_of_one_record_is_refused(kind: str,
                                                          encryption: str | None) -> None:
    """The property above, every bit of one example each."""
    artifact = ARTIFACTS[kind](encryption, b"ping")
    for bit in range(len(artifact.data) * 8):
        changed = bytearray(artifact.data)
        changed[bit // 8] ^= 1 << (bit % 8)
        error = refusal(lambda c=bytes(changed): artifact.take(c))
        in_carrier = bit // 8 < artifact.carrier_prefix
        assert error.reason is (Reason.MALFORMED if in_carrier else Reason.UNAUTHENTICATED), (
            bit, error)


@FAST
@pytest.mark.parametrize("kind", ARTIFACTS)
@given(encryption=encryptions, message=payloads, data=st.data())
def test_any_truncation_is_refused(kind: str, encryption: str | None, message: bytes,
                                   data: st.DataObject) -> None:
    artifact = ARTIFACTS[kind](encryption, message)
    length = data.draw(st.integers(0, len(artifact.data) - 1), label="length")
    error = refusal(lambda: artifact.take(artifact.data[:length]))
    carried = artifact.carrier_prefix > 0
    assert error.reason is (Reason.MALFORMED if carried else Reason.UNAUTHENTICATED), error


@FAST
@pytest.mark.parametrize("kind", CARRIED)
@given(encryption=encryptions, message=payloads, data=st.data())
def test_any_truncated_record_in_a_well_formed_carrier_is_refused(
        kind: str, encryption: str | None, message: bytes, data: st.DataObject) -> None:
    artifact = ARTIFACTS[kind](encryption, message)
    record = uncarry(artifact.data, 64 * MIB)
    length = data.draw(st.integers(0, len(record) - 1), label="length")
    error = refusal(lambda: artifact.take(carry(record[:length])))
    assert error.reason is Reason.UNAUTHENTICATED, error


@st.composite
def edits(draw: st.DrawFn, original: bytes) -> bytes:
    """One to three edits: flip, overwrite, insert, delete, truncate or extend; never the
    original bytes."""
    out = bytearray(original)
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
    assume(bytes(out) != original)
    return bytes(out)


@FAST
@pytest.mark.parametrize("kind", [k for k in ARTIFACTS if not k.endswith("hello")])
@given(encryption=encryptions, message=payloads, data=st.data())
def test_any_edit_of_a_record_is_refused(kind: str, encryption: str | None, message: bytes,
                                         data: st.DataObject) -> None:
    """Records have no slack: unlike a protobuf message, no edit leaves them meaning the
    same. (A signed hello is a protobuf message; see the single-bit and truncation
    properties above.)"""
    artifact = ARTIFACTS[kind](encryption, message)
    error = refusal(lambda: artifact.take(data.draw(edits(artifact.data), label="edited")))
    allowed = {Reason.UNAUTHENTICATED, Reason.MALFORMED} if kind in CARRIED else {
        Reason.UNAUTHENTICATED}
    assert error.reason in allowed, error


# --- order, and records moved --------------------------------------------------------------------


@FAST
@pytest.mark.parametrize("direction", ["requests", "responses"])
@given(encryption=encryptions, messages=st.lists(payloads, min_size=2, max_size=5),
       data=st.data())
def test_two_swapped_messages_of_a_stream_are_refused(direction: str, encryption: str | None,
                                                      messages: list[bytes],
                                                      data: st.DataObject) -> None:
    *_, outbound, inbound = _session_call(encryption)
    take: Callable[[bytes], bytes | None]
    if direction == "requests":
        sealed, take = [outbound.seal_request(m) for m in messages], inbound.open_request
    else:
        sealed, take = [inbound.seal_response(m) for m in messages], outbound.open_response
    first = data.draw(st.integers(0, len(sealed) - 2), label="first")
    second = data.draw(st.integers(first + 1, len(sealed) - 1), label="second")
    sealed[first], sealed[second] = sealed[second], sealed[first]
    for position in range(first):
        assert take(sealed[position]) == messages[position]
    assert refusal(lambda: take(sealed[first])).reason is Reason.UNAUTHENTICATED


@dataclass
class World:
    """Two sessions of one caller with one callee: calls c1 and c2 in the first, d1 (whose
    call number is c1's) in the second."""

    callee: NodePolicy
    state: NodeState
    c1: tuple[OutboundCall, InboundCall]
    c2: tuple[OutboundCall, InboundCall]
    d1: tuple[OutboundCall, InboundCall]


def world(encryption: str | None) -> World:
    caller, callee = policies(encryption)
    state = NodeState()
    first = open_session(caller, callee, state)
    c1 = connect(caller, callee, state, session=first)
    c2 = connect(caller, callee, state, session=first)
    d1 = connect(caller, callee, state)
    assert c1[0].call_number == d1[0].call_number == 1
    return World(callee, state, c1, c2, d1)


def _move_request_data(w: World, target: str, message: bytes) -> Callable[[], object]:
    sealed = w.c1[0].seal_request(message)
    return {"call": lambda: w.c2[1].open_request(sealed),
            "session": lambda: w.d1[1].open_request(sealed),
            "direction": lambda: w.c1[0].open_response(sealed)}[target]


def _move_response_data(w: World, target: str, message: bytes) -> Callable[[], object]:
    sealed = w.c1[1].seal_response(message)
    return {"call": lambda: w.c2[0].open_response(sealed),
            "session": lambda: w.d1[0].open_response(sealed),
            "direction": lambda: w.c1[1].open_request(sealed)}[target]


def _move_end(w: World, target: str, message: bytes) -> Callable[[], object]:
    end = w.c1[0].end_requests()
    assert end is not None
    return {"call": lambda: w.c2[1].open_request(end),
            "session": lambda: w.d1[1].open_request(end),
            "direction": lambda: w.c1[0].open_response(end)}[target]


def _move_head(w: World, target: str, message: bytes) -> Callable[[], object]:
    sent = w.c1[1].seal_head((("x-h", message.hex()),))
    other = w.c2 if target == "call" else w.d1
    return lambda: other[0].open_head(sent)


def _move_status(w: World, target: str, message: bytes) -> Callable[[], object]:
    trailers = w.c1[1].seal_end(0, message.hex(), ())
    other = w.c2 if target == "call" else w.d1
    return lambda: other[0].open_end(0, message.hex(), trailers)


def _move_call(w: World, target: str, message: bytes) -> Callable[[], object]:
    clear, record = app_part(w.c1[0].metadata, CALL_KEY)
    if target == "session":  # named as a call of the other session
        moved = record[:3] + w.d1[0].session.session_id + record[3 + SESSION_ID_BYTES:]
    else:  # named as another, unused call number of its session
        at = 3 + SESSION_ID_BYTES
        moved = record[:at] + (7).to_bytes(8, "big") + record[at + 8:]
    return lambda: w.callee.inbound(METHOD, (*clear, (CALL_KEY, moved)), T0, w.state)


MOVES = {"request-DATA": _move_request_data, "response-DATA": _move_response_data,
         "END": _move_end, "HEAD": _move_head, "STATUS": _move_status, "CALL": _move_call}
MOVE_CASES = [(kind, target) for kind in MOVES for target in ("call", "session", "direction")
              if target != "direction" or kind in CARRIED]


@FEWER
@pytest.mark.parametrize(("kind", "target"), MOVE_CASES)
@given(encryption=encryptions, message=payloads)
def test_a_record_moved_to_another_call_session_or_direction_is_refused(
        kind: str, target: str, encryption: str | None, message: bytes) -> None:
    move = MOVES[kind](world(encryption), target, message)
    assert refusal(move).reason is Reason.UNAUTHENTICATED


# --- round trips -------------------------------------------------------------------------------


@FAST
@given(encryption=encryptions, codec=codecs, identity=identities,
       requests=st.lists(payloads, max_size=4), responses=st.lists(payloads, max_size=4),
       final=st.booleans())
def test_every_message_opens_to_the_bytes_sealed(
        encryption: str | None, codec: str | None, identity: str, requests: list[bytes],
        responses: list[bytes], final: bool) -> None:
    caller, callee = policies(encryption, codec, identity)
    outbound, inbound = connect(caller, callee, NodeState())
    for i, message in enumerate(requests):
        last = final and i == len(requests) - 1
        assert inbound.open_request(outbound.seal_request(message, final=last)) == message
    end = outbound.end_requests()
    if end is not None:
        assert inbound.open_request(end) is None
    inbound.finish_requests()
    for message in responses:
        assert outbound.open_response(inbound.seal_response(message)) == message
    trailers = inbound.seal_end(0, "", ())
    assert outbound.open_end(0, "", trailers) == ()


# --- metadata ----------------------------------------------------------------------------------


@st.composite
def changed(draw: st.DrawFn, metadata: Metadata) -> Metadata:
    """`metadata` with one entry added, removed or changed, or two values of one name
    swapped."""
    options = ["add"]
    if metadata:
        options += ["remove", "change"]
    pairs = [(i, j) for i in range(len(metadata)) for j in range(i + 1, len(metadata))
             if metadata[i][0] == metadata[j][0] and metadata[i][1] != metadata[j][1]]
    if pairs:
        options.append("reorder")
    how = draw(st.sampled_from(options), label="how")
    out = list(metadata)
    if how == "add":
        names = (*APP_NAMES, "x-new", "authorization", "cookie", "set-cookie", SECRET_NAME)
        out.insert(draw(st.integers(0, len(out))), draw(entries(names)))
    elif how == "remove":
        del out[draw(st.integers(0, len(out) - 1))]
    elif how == "change":
        at = draw(st.integers(0, len(out) - 1))
        name, value = out[at]
        new: str | bytes = (draw(st.binary(max_size=24)) if isinstance(value, bytes)
                            else draw(texts))
        assume(new != value)
        out[at] = (name, new)
    else:
        i, j = draw(st.sampled_from(pairs))
        out[i], out[j] = out[j], out[i]
    return tuple(out)


@FAST
@given(encryption=encryptions, metadata=app_metadata, data=st.data())
def test_request_metadata_changed_between_sealing_and_opening_is_refused(
        encryption: str | None, metadata: Metadata, data: st.DataObject) -> None:
    caller, callee = policies(encryption)
    state = NodeState()
    session = open_session(caller, callee, state)
    outbound = caller.outbound(caller.route(METHOD), session, METHOD, metadata, T0)
    clear, record = app_part(outbound.metadata, CALL_KEY)
    received = (*data.draw(changed(clear), label="received"), (CALL_KEY, record))
    error = refusal(lambda: callee.inbound(METHOD, received, T0, state))
    assert error.reason is Reason.UNAUTHENTICATED, error


@FAST
@given(encryption=encryptions, metadata=app_metadata, data=st.data())
def test_response_headers_changed_between_sealing_and_opening_are_refused(
        encryption: str | None, metadata: Metadata, data: st.DataObject) -> None:
    *_, outbound, inbound = _session_call(encryption)
    sent = inbound.seal_head(metadata)
    record = dict(sent).get(HEAD_KEY)
    clear = tuple(entry for entry in sent if entry[0] != HEAD_KEY)
    received = data.draw(changed(clear), label="received")
    if record is not None:
        received = (*received, (HEAD_KEY, record))
    error = refusal(lambda: outbound.open_head(received))
    assert error.reason is Reason.UNAUTHENTICATED, error


@FAST
@given(encryption=encryptions, metadata=app_metadata, data=st.data())
def test_trailers_changed_between_sealing_and_opening_are_refused(
        encryption: str | None, metadata: Metadata, data: st.DataObject) -> None:
    *_, outbound, inbound = _session_call(encryption)
    clear, record = app_part(inbound.seal_end(0, "", metadata), END_KEY)
    received = (*data.draw(changed(clear), label="received"), (END_KEY, record))
    error = refusal(lambda: outbound.open_end(0, "", received))
    assert error.reason is Reason.UNAUTHENTICATED, error


@FAST
@given(encryption=encryptions, code=st.integers(0, 16), details=texts, data=st.data())
def test_a_status_code_or_message_changed_between_sealing_and_opening_is_refused(
        encryption: str | None, code: int, details: str, data: st.DataObject) -> None:
    *_, outbound, inbound = _session_call(encryption)
    trailers = inbound.seal_end(code, details, ())
    other_code = data.draw(st.integers(0, 16), label="code")
    other_details = data.draw(texts, label="details")
    assume((other_code, other_details) != (code, details))
    error = refusal(lambda: outbound.open_end(other_code, other_details, trailers))
    assert error.reason is Reason.UNAUTHENTICATED, error


# --- credentials -------------------------------------------------------------------------------

tokens = st.text(alphabet=string.ascii_letters + string.digits, min_size=12, max_size=40)


@st.composite
def with_credentials(draw: st.DrawFn, names: tuple[str, ...]) -> tuple[Metadata, Metadata]:
    """(app metadata with credential entries mixed in, those credential entries in order)."""
    out = list(draw(app_metadata))
    secrets = []
    for name in draw(st.lists(st.sampled_from(names), min_size=1, max_size=4)):
        entry = (name, "cred-" + draw(tokens))
        out.insert(draw(st.integers(0, len(out))), entry)
        secrets.append(entry)
    return tuple(out), tuple(entry for entry in out if entry in secrets)


def sent_bytes(metadata: Metadata) -> bytes:
    return b"\n".join(key.encode() + b":" + value_bytes(value) for key, value in metadata)


def assert_hidden(sent: Metadata, secrets: Metadata) -> None:
    wire = sent_bytes(sent)
    for name, value in secrets:
        assert name not in {key for key, _ in sent}
        assert value_bytes(value) not in wire


REQUEST_SECRETS = ("authorization", "proxy-authorization", "cookie", SECRET_NAME)
RESPONSE_SECRETS = ("set-cookie", "authorization", SECRET_NAME)


@FAST
@given(encryption=encryptions, metadata=with_credentials(REQUEST_SECRETS))
def test_request_credentials_never_travel_in_the_clear_and_are_restored(
        encryption: str | None, metadata: tuple[Metadata, Metadata]) -> None:
    entries_, secrets = metadata
    caller, callee = policies(encryption)
    outbound, inbound = connect(caller, callee, NodeState(), metadata=entries_)
    assert_hidden(outbound.metadata, secrets)
    assert inbound.restored == secrets


@FAST
@given(encryption=encryptions, metadata=with_credentials(RESPONSE_SECRETS))
def test_response_header_credentials_never_travel_in_the_clear_and_are_restored(
        encryption: str | None, metadata: tuple[Metadata, Metadata]) -> None:
    entries_, secrets = metadata
    *_, outbound, inbound = _session_call(encryption)
    sent = inbound.seal_head(entries_)
    assert_hidden(sent, secrets)
    opened = outbound.open_head(sent)
    assert tuple(entry for entry in opened if entry in secrets) == secrets


@FAST
@given(encryption=encryptions, metadata=with_credentials(RESPONSE_SECRETS))
def test_trailer_credentials_never_travel_in_the_clear_and_are_restored(
        encryption: str | None, metadata: tuple[Metadata, Metadata]) -> None:
    entries_, secrets = metadata
    *_, outbound, inbound = _session_call(encryption)
    sent = inbound.seal_end(0, "", entries_)
    assert_hidden(sent, secrets)
    opened = outbound.open_end(0, "", sent)
    assert tuple(entry for entry in opened if entry in secrets) == secrets


# --- the call-number window --------------------------------------------------------------------


@FAST
@given(base=st.integers(0, 1 << 40), order=st.permutations(range(1, 200)))
def test_the_window_accepts_out_of_order_numbers_once_each(base: int,
                                                           order: list[int]) -> None:
    window = CallWindow()
    assert all(window.accept(base + n) for n in order)
    assert not any(window.accept(base + n) for n in order)


@FAST
@given(highest=st.integers(1, 1 << 40), below=st.integers(CALL_WINDOW, 1 << 41))
def test_the_window_refuses_numbers_at_or_beyond_its_width_below_the_highest(
        highest: int, below: int) -> None:
    window = CallWindow()
    assert window.accept(highest)
    assert not window.accept(highest - below)


# --- arbitrary input ---------------------------------------------------------------------------


@FAST
@given(encryption=encryptions, garbage=st.binary(max_size=2048))
def test_random_bytes_are_refused_with_a_contracted_reason(encryption: str | None,
                                                            garbage: bytes) -> None:
    caller, callee = policies(encryption)
    *_, outbound, inbound = _session_call(encryption)
    destination = caller.route(METHOD)
    handshake = caller.caller.handshake(destination, T0)
    takes: list[tuple[Callable[[], object], set[Reason]]] = [
        (lambda: inbound.open_request(garbage), {Reason.MALFORMED, Reason.UNAUTHENTICATED}),
        (lambda: outbound.open_response(garbage), {Reason.MALFORMED, Reason.UNAUTHENTICATED}),
        (lambda: callee.accept(garbage, T0, NodeState()), {Reason.UNAUTHENTICATED}),
        (lambda: handshake.finish(garbage, destination.verifiers, T0),
         {Reason.UNAUTHENTICATED}),
        (lambda: outbound.open_head((("x-h", "v"), (HEAD_KEY, garbage))),
         {Reason.UNAUTHENTICATED}),
        (lambda: outbound.open_end(0, "", ((END_KEY, garbage),)), {Reason.UNAUTHENTICATED}),
    ]
    for take, reasons in takes:
        assert refusal(take).reason in reasons


@FAST
@given(metadata=st.lists(st.tuples(st.sampled_from([CALL_KEY, "x-app", "x-bin"]),
                                   st.one_of(st.binary(max_size=64), st.text(max_size=64))),
                         max_size=3),
       method=st.text(max_size=40))
def test_random_metadata_and_methods_are_refused_with_a_contracted_reason(
        metadata: list[tuple[str, str | bytes]], method: str) -> None:
    caller, callee = policies()
    error = refusal(lambda: callee.inbound(method, tuple(metadata), T0, NodeState()))
    assert error.reason is Reason.UNAUTHENTICATED
    try:
        caller.route(method)
    except FastProxyError as refused:
        assert refused.reason is Reason.NO_ROUTE


@cache
def snapshot_bytes(role: int) -> bytes:
    setup = Setup(callee_identity="ed25519", compress={"algorithm": "gzip"},
                  secret_metadata=[SECRET_NAME],
                  rules=[{"caller": CALLER, "methods": ["*"],
                          "rate_limit": {"rps": 5, "burst": 2}}])
    service = CALLER if role == pb.ROLE_OUT else CALLEE
    snap = scope_snapshot(load_policy(setup.yaml_text()), role, service)
    return bytes(snap.SerializeToString())


@FAST
@given(role=st.sampled_from([pb.ROLE_IN, pb.ROLE_OUT]), data=st.data())
def test_edited_snapshots_compile_or_are_refused_with_a_clear_error(role: int,
                                                                   data: st.DataObject) -> None:
    damaged = data.draw(edits(snapshot_bytes(role)))
    snapshot = pb.PolicySnapshot()
    try:
        snapshot.ParseFromString(damaged)
    except DecodeError:  # not a snapshot at all: the node never compiles it
        return
    try:
        NodePolicy.from_snapshot(snapshot)
    except NodePolicyError as error:
        assert str(error)
