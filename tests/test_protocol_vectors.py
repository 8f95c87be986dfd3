"""The implementation of protocol version 2 against tests/vectors/v2.json, which a second
implementation written from docs/protocol.md alone (tests/vectors/generate_v2.py) computed:
every byte produced matches, and every record given opens."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from fastproxy.pipeline.authz import AllowList, CompiledAllowRule, MethodMatcher
from fastproxy.pipeline.handshake import CallerHandshake, HelloPolicy, accept_hello
from fastproxy.pipeline.keys import Ephemeral, Signer, Verifier, pair_key
from fastproxy.pipeline.metadata import SECRET_KEYS, metadata_digest
from fastproxy.pipeline.node_policy import NodeState
from fastproxy.pipeline.records import DATA, Direction, carry
from fastproxy.pipeline.stages import (
    CalleeSide,
    CallerSide,
    Destination,
    InboundCall,
    OutboundCall,
)
from fastproxy.v1 import session_pb2 as spb

VECTORS: dict[str, Any] = json.loads(
    (Path(__file__).parent / "vectors" / "v2.json").read_text())
IN, OUT = VECTORS["inputs"], VECTORS["outputs"]


def _fixed_random(values: dict[int, bytes]) -> Any:
    return lambda size: values[size]


def _b(name: str) -> bytes:
    return bytes.fromhex(IN[name])


@pytest.fixture(scope="module")
def handshake() -> dict[str, Any]:
    now = IN["now_ms"] / 1000
    caller_signer = Signer(IN["caller_key"], IN["caller"], hmac_secret=_b("caller_hmac_secret"))
    callee_signer = Signer(IN["callee_key"], IN["callee"],
                           ed25519_seed=_b("callee_ed25519_seed"))
    client = CallerHandshake(
        caller=IN["caller"], callee=IN["callee"], signer=caller_signer,
        suite=spb.AEAD_SUITE_AES_256_GCM, psk_id=IN["psk_key"], psk=_b("psk"), now=now,
        ephemeral=Ephemeral.from_bytes(_b("client_ephemeral")),
        random=_fixed_random({32: _b("client_random")}))
    policy = HelloPolicy(
        service=IN["callee"], signer=callee_signer,
        callers={IN["caller"]: {IN["caller_key"]: Verifier(
            IN["caller_key"], hmac_key=bytes.fromhex(OUT["pair_key"]))}},
        suite=spb.AEAD_SUITE_AES_256_GCM, psks={IN["psk_key"]: _b("psk")},
        lifetime_s=IN["lifetime_s"], max_calls=IN["max_calls"])
    answer, callee_session = accept_hello(
        client.request, policy, now, ephemeral=Ephemeral.from_bytes(_b("server_ephemeral")),
        random=_fixed_random({16: _b("session_id")}))
    caller_session = client.finish(answer, {IN["callee_key"]: callee_signer.verifier_for(
        IN["caller"])}, now)
    return {"now": now, "client": client, "answer": answer, "callee": callee_session,
            "caller": caller_session, "policy": policy}


def test_the_pair_key_is_derived_as_the_spec_says() -> None:
    assert pair_key(_b("caller_hmac_secret"), IN["caller"], IN["callee"]).hex() == OUT["pair_key"]


def test_both_hellos_are_byte_for_byte_the_vectors(handshake: dict[str, Any]) -> None:
    assert handshake["client"].request.hex() == OUT["signed_client_hello"]
    assert handshake["answer"].hex() == OUT["signed_server_hello"]


def test_both_sides_derive_the_vector_session(handshake: dict[str, Any]) -> None:
    caller, callee = handshake["caller"], handshake["callee"]
    assert caller.session_id.hex() == callee.session_id.hex() == IN["session_id"]
    # The keys themselves are not kept as bytes; a record sealed by one side with them is
    # the vector's and opens on the other side (the tests below).
    assert not caller.clear and not callee.clear


def test_the_request_metadata_digest_is_the_vectors() -> None:
    metadata = tuple(tuple(entry) for entry in IN["request_metadata"])
    assert metadata_digest(metadata, SECRET_KEYS).hex() == OUT["request_metadata_digest"]


def _destination() -> Destination:
    return Destination(name=IN["callee"], endpoints=(), timeout_ms=0, retry=None, verifiers={},
                       suite=spb.AEAD_SUITE_AES_256_GCM, psk_id=IN["psk_key"], psk=_b("psk"),
                       compressor=None, secret_keys=SECRET_KEYS)


def test_the_call_and_its_records_are_the_vectors(handshake: dict[str, Any]) -> None:
    side = CallerSide(IN["caller"], None, {}, 30.0, 1 << 20)
    metadata = tuple(tuple(entry) for entry in IN["request_metadata"])
    call = OutboundCall(side, _destination(), handshake["caller"], IN["method"], metadata,
                        handshake["now"])
    assert call.call_number == IN["call_number"]
    record = dict(call.metadata)["fastproxy-call-bin"]
    assert isinstance(record, bytes) and record.hex() == OUT["call_record"]
    assert "authorization" not in dict(call.metadata)  # it travels inside the record
    sealed = call.seal_request(IN["request"].encode(), final=True)
    assert sealed.endswith(bytes.fromhex(OUT["data_final_record"]))


def test_the_callee_opens_the_vector_call_and_seals_the_vector_answer(
        handshake: dict[str, Any]) -> None:
    state = NodeState()
    state.sessions.add(handshake["callee"])
    rule = CompiledAllowRule(0, IN["caller"], ("*",), MethodMatcher.compile(["*"]), None)
    side = CalleeSide(IN["callee"], {IN["caller"]: {IN["caller_key"]: Verifier(
        IN["caller_key"], hmac_key=bytes.fromhex(OUT["pair_key"]))}}, AllowList((rule,)), 0,
        1 << 20, handshake["policy"], window_s=1e12)
    wire = (("x-a", "1"), ("traceparent", "00-changed-on-the-way"),
            ("fastproxy-call-bin", bytes.fromhex(OUT["call_record"])))
    call = InboundCall.admit(side, IN["method"], wire, handshake["now"], state)
    assert call.restored == (("authorization", "Bearer t"),)
    assert call.open_request(carry(bytes.fromhex(OUT["data_final_record"]))) == b"hello"
    call.finish_requests()
    head = dict(call.seal_head(tuple(tuple(e) for e in IN["response_headers"])))
    assert head["fastproxy-head-bin"] == bytes.fromhex(OUT["head_record"])
    response = call.seal_response(IN["response"].encode())
    assert response.endswith(bytes.fromhex(OUT["response_record"]))
    end = dict(call.seal_end(0, "", tuple(tuple(e) for e in IN["response_trailers"])))
    assert end["fastproxy-end-bin"] == bytes.fromhex(OUT["status_record"])


def test_the_clear_and_end_records_open_at_their_positions(handshake: dict[str, Any]) -> None:
    session = handshake["callee"]
    clear = Direction(session.request, IN["call_number"], clear=True, max_bytes=1 << 20)
    assert clear.open(bytes.fromhex(OUT["data_clear_record"]), (DATA,), "vector") == (
        DATA, 8, b"hello")
    requests = Direction(session.request, IN["call_number"], clear=False, max_bytes=1 << 20)
    assert requests.open_message(carry(bytes.fromhex(OUT["data_final_record"])),
                                 "vector") == b"hello"
    # END after one message, at position 2 (a fresh direction whose first DATA opened)
    ended = Direction(session.request, IN["call_number"], clear=False, max_bytes=1 << 20,
                      position=2)
    assert ended.open_message(carry(bytes.fromhex(OUT["end_record_after_one"])), "v") is None
