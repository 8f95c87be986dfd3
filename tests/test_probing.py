"""Probing (issue 13, point 6; docs/security.md, "Hardening"): a client without keys learns
nothing of a callee's allow list from its answers.

Version 1 answered a call header with an unknown key id `unauthenticated` for callers an allow
rule named and `denied` for others. In version 2 a caller proves itself in the handshake
before anything else, so these tests send handshakes a probing client can make to a real
in-proxy and to a real embedded server (`python -m server_svc`), and compare the answers
whole (status code, details, trailers): an unknown caller, a caller no rule names (signing
with its real key), an allowed caller's name with a key id it does not have, and an allowed
caller's key id with a bad signature all get one answer. A CALL record in a session the
callee never opened names no caller at all; made up for an allowed caller or for one no rule
names, it gets one answer too.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import grpc
import pytest
from support.dataplane import (
    CALLEE,
    CALLER,
    STRANGER,
    DataplanePolicy,
    Proxies,
    channel,
    free_address,
    made_up_session,
    out_node,
    start_file_stack,
)
from support.server_helpers import Processes
from support.upstream_app import UNARY, UpstreamProcess

from fastproxy.pipeline.handshake import CLIENT_CONTEXT, OPEN_METHOD
from fastproxy.pipeline.keys import Ephemeral, Signer
from fastproxy.pipeline.metadata import CALL_KEY, HELLO_KEY
from fastproxy.v1 import session_pb2 as spb

POLICY = DataplanePolicy()
Answer = tuple[grpc.StatusCode, str, tuple[tuple[str, str | bytes], ...]]


@pytest.fixture(scope="module")
def upstream() -> Iterator[UpstreamProcess]:
    with UpstreamProcess(name="song") as process:
        yield process


@pytest.fixture(scope="module", params=["in-proxy", "embedded server"])
def callee(request: pytest.FixtureRequest, upstream: UpstreamProcess,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The address of song_service's in-node: an in-proxy, or an embedded server."""
    directory = tmp_path_factory.mktemp("probing")
    if request.param == "in-proxy":
        proxies = Proxies(directory)
        try:
            yield start_file_stack(proxies, upstream.address, directory, callers=(),
                                   policy=POLICY).inproxy.address
        finally:
            proxies.stop_all()
        return
    policy_file = directory / "policy.yaml"
    policy_file.write_text(POLICY.yaml_text())
    processes = Processes(directory)
    try:
        yield processes.start("server_svc", free_address(), "--service", CALLEE,
                              "--policy", str(policy_file)).address
    finally:
        processes.stop_all()


def hello(caller: str, key_id: str, secret: bytes, *, bad_signature: bool = False) -> bytes:
    """A client hello as anyone can make one: `caller`'s name, signed with `secret` under
    `key_id` (an HMAC identity, as the policy's callers have)."""
    body = spb.ClientHello(
        version=2, caller=caller, callee=CALLEE, identity_key=key_id,
        ephemeral=Ephemeral().public, random=os.urandom(32),
        timestamp_ms=int(time.time() * 1000), suite=spb.AEAD_SUITE_AES_256_GCM,
        psk="song-enc-v1").SerializeToString()
    signature = Signer(key_id, caller, hmac_secret=secret).sign(CLIENT_CONTEXT + body, CALLEE)
    if bad_signature:
        signature = bytes(len(signature))
    return spb.SignedHello(hello=body, signature=signature).SerializeToString()


def answer_to(address: str, request: bytes) -> Answer:
    with channel(address) as ch, pytest.raises(grpc.RpcError) as raised:
        ch.unary_unary(OPEN_METHOD)(b"", metadata=((HELLO_KEY, request),), timeout=10)
    error = raised.value
    return error.code(), error.details() or "", tuple(error.trailing_metadata() or ())


def test_every_hello_a_client_without_keys_can_make_gets_one_answer(callee: str) -> None:
    probes = {
        "unknown caller": hello("nobody_service", "nobody-id", os.urandom(32)),
        "caller no rule names, its real key": hello(
            STRANGER, "stranger-id", POLICY.secrets["stranger-id"]),
        "allowed caller, a key id it does not have": hello(CALLER, "chat-id-v9",
                                                           os.urandom(32)),
        "allowed caller, its key id, a key it is not": hello(CALLER, "chat-id",
                                                             os.urandom(32)),
        "allowed caller, its key, a bad signature": hello(
            CALLER, "chat-id", POLICY.secrets["chat-id"], bad_signature=True),
        "caller no rule names, a bad signature": hello(
            STRANGER, "stranger-id", POLICY.secrets["stranger-id"], bad_signature=True),
    }
    answers = {probe: answer_to(callee, request) for probe, request in probes.items()}
    assert len(set(answers.values())) == 1, answers
    code, details, trailers = next(iter(answers.values()))
    assert code == grpc.StatusCode.UNAUTHENTICATED
    assert details == "handshake refused: the hello is not signed by a caller this service knows"
    assert dict(trailers) == {"fastproxy-error": "unauthenticated", "fastproxy-proxy": "in"}
    # The genuine hello of the allowed caller opens a session (the probes were well made).
    with channel(callee) as ch:
        ch.unary_unary(OPEN_METHOD)(b"", metadata=((HELLO_KEY, hello(
            CALLER, "chat-id", POLICY.secrets["chat-id"])),), timeout=10)


def test_a_call_in_a_session_the_callee_never_opened_gets_one_answer(callee: str) -> None:
    """Sealed in a made-up session by an allowed caller's node, or random bytes in a CALL
    record's shape: the record names a session, never a caller."""
    node = out_node(POLICY.yaml_text(), CALLER)
    made_up = node.outbound(node.route(UNARY), made_up_session(node), UNARY, (), time.time())
    random_record = bytes((2, 1, 0)) + os.urandom(16 + 8 + 64)
    answers = []
    for metadata, message in ((made_up.metadata, made_up.seal_request(b"probe", final=True)),
                              (((CALL_KEY, random_record),), b"probe")):
        with channel(callee) as ch, pytest.raises(grpc.RpcError) as raised:
            ch.unary_unary(UNARY)(message, metadata=metadata, timeout=10)
        error = raised.value
        answers.append((error.code(), error.details(), tuple(error.trailing_metadata() or ())))
    assert answers[0] == answers[1]
    assert answers[0][0] == grpc.StatusCode.UNAUTHENTICATED
    assert ("fastproxy-session", "unknown") in answers[0][2]
