"""Credential metadata (docs/protocol.md, section 5): `authorization`, `proxy-authorization`,
`cookie`, `set-cookie` and the names a callee lists in `secret_metadata` travel inside the
CALL, HEAD and STATUS records, encrypted even without an encryption key, and are restored on
the other side; one arriving in the clear was added on the way and is refused."""

from __future__ import annotations

import pytest
from support.core_policies import METHOD, T0, Setup, connect, open_session, refused

from fastproxy.pipeline.metadata import Metadata, value_bytes
from fastproxy.pipeline.node_policy import NodeState
from fastproxy.pipeline.reasons import Reason

TOKEN = "Bearer tok-3b9f1c0d7e"
REQUEST = (("x-a", "1"), ("authorization", TOKEN), ("cookie", "session=c00k1e"),
           ("x-api-key", "k3y-71d2"), ("proxy-authorization", "Basic cHJveHk="))
SECRETS = REQUEST[1:]


def sent_bytes(metadata: Metadata) -> bytes:
    return b"\n".join(key.encode() + b":" + value_bytes(value) for key, value in metadata)


@pytest.mark.parametrize("encryption", ["aes-256-gcm", None])
def test_request_credentials_never_travel_in_the_clear(encryption: str | None) -> None:
    caller, callee = Setup(encryption=encryption, secret_metadata=["x-api-key"]).pair()
    outbound, _ = connect(caller, callee, NodeState(), metadata=REQUEST)
    assert [key for key, _ in outbound.metadata] == ["x-a", "fastproxy-call-bin"]
    wire = sent_bytes(outbound.metadata)
    for key, value in SECRETS:
        assert value.encode() not in wire and key.encode() not in wire


@pytest.mark.parametrize("encryption", ["aes-256-gcm", None])
def test_request_credentials_are_restored_in_order_on_the_callees_side(
        encryption: str | None) -> None:
    caller, callee = Setup(encryption=encryption, secret_metadata=["x-api-key"]).pair()
    _, inbound = connect(caller, callee, NodeState(), metadata=REQUEST)
    assert inbound.wire_metadata == (("x-a", "1"),)
    assert inbound.restored == SECRETS


def test_a_name_the_callee_does_not_list_travels_as_ordinary_metadata() -> None:
    caller, callee = Setup().pair()
    outbound, inbound = connect(caller, callee, NodeState(), metadata=REQUEST)
    assert ("x-api-key", "k3y-71d2") in outbound.metadata
    assert ("x-api-key", "k3y-71d2") in inbound.wire_metadata


@pytest.mark.parametrize("name", ["authorization", "cookie", "x-api-key"])
def test_a_credential_added_in_the_clear_on_the_way_is_refused(name: str) -> None:
    caller, callee = Setup(secret_metadata=["x-api-key"]).pair()
    state = NodeState()
    session = open_session(caller, callee, state)
    outbound = caller.outbound(caller.route(METHOD), session, METHOD, (("x-a", "1"),), T0)
    forged = (*outbound.metadata, (name, "forged by the relay"))
    error = refused(Reason.UNAUTHENTICATED, lambda: callee.inbound(METHOD, forged, T0, state))
    assert "in the clear" in error.detail


def test_response_header_credentials_travel_in_the_head_record_and_are_restored() -> None:
    outbound, inbound = connect(*Setup().pair(), NodeState())
    sent = inbound.seal_head((("x-h", "v"), ("set-cookie", "id=s3cr3t")))
    assert b"s3cr3t" not in sent_bytes(sent) and b"set-cookie" not in sent_bytes(sent)
    assert outbound.open_head(sent) == (("x-h", "v"), ("set-cookie", "id=s3cr3t"))


def test_trailer_credentials_travel_in_the_status_record_and_are_restored() -> None:
    outbound, inbound = connect(*Setup(secret_metadata=["x-api-key"]).pair(), NodeState())
    sent = inbound.seal_end(0, "", (("x-t", "t"), ("x-api-key", "k3y-in-trailer")))
    assert b"k3y-in-trailer" not in sent_bytes(sent)
    assert outbound.open_end(0, "", sent) == (("x-t", "t"), ("x-api-key", "k3y-in-trailer"))


def test_a_credential_added_in_the_clear_to_response_headers_is_refused() -> None:
    outbound, inbound = connect(*Setup().pair(), NodeState())
    sent = inbound.seal_head((("x-h", "v"),))
    refused(Reason.UNAUTHENTICATED,
            lambda: outbound.open_head((*sent, ("set-cookie", "id=forged"))))


def test_a_credential_added_in_the_clear_to_trailers_is_refused() -> None:
    outbound, inbound = connect(*Setup().pair(), NodeState())
    sent = inbound.seal_end(0, "", ())
    refused(Reason.UNAUTHENTICATED,
            lambda: outbound.open_end(0, "", (*sent, ("set-cookie", "id=forged"))))
