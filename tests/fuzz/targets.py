"""Fuzz targets: the parsers that take bytes from the network or from operators (issue 13,
point 9; docs/security.md, "Hardening").

Each target takes one input and must either accept it or refuse it with the error its
caller turns into the contracted answer (`REFUSALS`): any other exception is a bug, and so is
an input that takes unbounded time or memory (the runner bounds both). Sessions, keys and the
clock are fixed here, so that the seeds in `corpus/` (written by `make_corpus.py`) are
valid inputs the fuzzer mutates from, and any failure replays.

- `call`: a `TunnelCall` message (a call's method, metadata with its CALL record, request),
  as the callee admits the call (`InboundCall.admit`), opens its request and seals an answer
  with the metadata it got;
- `response`: a `TunnelReply` message (code, details, headers, trailers, message), as the
  caller opens a response in its session (HEAD, DATA and STATUS records);
- `hello`: a signed hello, as the callee answers it and the caller takes it as an answer;
- `tunnel`: one `Tunnel/Carry` stream message, as the in-proxy reads its frames
  (`frames_of`) and makes each carried call's context;
- `snapshot`: a `SignedSnapshot` or a `PolicySnapshot`, as a node verifies and compiles
  what the Center (or its cache) gave it;
- `policy`: policy YAML, as `load_policy` reads it for the Center and `--policy`;
- `sealed`: what only a peer holding the session's keys can send, sealed here around the
  fuzzer's bytes (a fuzzer cannot get past an AEAD by mutating): a CALL record's `CallHead`,
  a request or response DATA record with any flags (codec, FINAL, CLEAR) and payload
  (decompression included), a HEAD record's `ResponseHead`, a STATUS record's `ResponseEnd`.
  The first byte picks which, the second the flags.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import sys
from collections.abc import Callable
from pathlib import Path

from google.protobuf.message import DecodeError

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests/: `support`

from support.core_policies import CALLER, METHOD, T0, Setup

from fastproxy.pipeline.handshake import CalleeSession, CallerSession, CallWindow
from fastproxy.pipeline.keys import Ephemeral, nonce
from fastproxy.pipeline.metadata import CALL_KEY, END_KEY, HEAD_KEY
from fastproxy.pipeline.node_policy import NodePolicy, NodePolicyError, NodeState
from fastproxy.pipeline.reasons import FastProxyError
from fastproxy.pipeline.records import CALL, DATA, HEAD, STATUS, Direction, carry, header
from fastproxy.policy import load_policy
from fastproxy.policy.schema import PolicyError
from fastproxy.policy.scope import scope_snapshot
from fastproxy.policy.signing import SnapshotError, verify_snapshot
from fastproxy.v1 import policy_pb2 as pb
from fastproxy.v1 import tunnel_pb2 as tpb
from proxy_svc.tunnel import CarriedCallContext, TunnelViolation, frames_of
from proxy_svc.tunnel import metadata_of as frame_metadata

NOW = T0
# What each target's callers turn into a contracted answer; anything else is a crash.
REFUSALS: tuple[type[BaseException], ...] = (
    FastProxyError, TunnelViolation, PolicyError, SnapshotError, NodePolicyError)


def fixed(label: str, size: int = 32) -> bytes:
    return hashlib.sha256(b"fastproxy fuzz " + label.encode()).digest()[:size]


SETUP = Setup(
    rules=[{"caller": CALLER, "methods": ["/demo.v1.Echo/*"],
            "rate_limit": {"rps": 1000, "burst": 1000}}],
    compress={"algorithm": "gzip", "min_bytes": 16}, secret_metadata=("x-token",))
LIMIT = 1 << 20  # the nodes' largest message: a decompression bomb stops here


def scoped(role: int, service: str) -> pb.PolicySnapshot:
    return scope_snapshot(load_policy(SETUP.yaml_text()), role, service)


CALLER_NODE = NodePolicy.from_snapshot(scoped(pb.ROLE_OUT, CALLER), max_message_bytes=LIMIT)
CALLEE_NODE = NodePolicy.from_snapshot(scoped(pb.ROLE_IN, "song_service"),
                                       max_message_bytes=LIMIT)
DESTINATION = CALLER_NODE.route(METHOD)


def _open_fixed_session() -> tuple[CallerSession, CalleeSession, bytes, bytes]:
    """One session, the same every run: (caller's half, callee's half, hello, answer)."""
    handshake = CALLER_NODE.caller.handshake(
        DESTINATION, NOW, ephemeral=Ephemeral.from_bytes(fixed("caller ephemeral")),
        random=lambda size: fixed("caller random", size))
    state = NodeState()
    answer = CALLEE_NODE.callee.accept(
        handshake.request, NOW, state, ephemeral=Ephemeral.from_bytes(fixed("callee eph")),
        random=lambda size: fixed("callee random", size))
    caller_session = handshake.finish(answer, DESTINATION.verifiers, NOW)
    found = state.sessions.find(caller_session.session_id, NOW)
    assert found is not None
    return caller_session, found, handshake.request, answer


CALLER_SESSION, CALLEE_SESSION, HELLO, ANSWER = _open_fixed_session()


def fresh_callee_state() -> NodeState:
    """A callee's state holding the fixed session, with no call number seen yet."""
    session = copy.copy(CALLEE_SESSION)
    session.window = CallWindow()
    state = NodeState()
    state.sessions.add(session)
    return state


def fresh_caller_session() -> CallerSession:
    session = copy.copy(CALLER_SESSION)
    session.next_call = 1
    return session


# --- the targets --------------------------------------------------------------------------


def call(data: bytes) -> None:
    try:
        carried = tpb.TunnelCall.FromString(data)
    except DecodeError:
        return  # not an input of this target (the tunnel target takes any bytes)
    metadata = frame_metadata(carried.metadata)
    inbound = CALLEE_NODE.inbound(carried.method, metadata, NOW, fresh_callee_state())
    inbound.open_request(carried.message, single=True)
    inbound.finish_requests()
    inbound.seal_head(metadata)
    inbound.seal_response(carried.message)
    inbound.seal_end(carried.timeout_us % 17, carried.method, metadata)


def response(data: bytes) -> None:
    try:
        reply = tpb.TunnelReply.FromString(data)
    except DecodeError:
        return
    outbound = CALLER_NODE.outbound(DESTINATION, fresh_caller_session(), METHOD, (), NOW)
    outbound.open_head(frame_metadata(reply.initial_metadata))
    if reply.code == 0:  # an answer with a message (as a tunnel reply, or a unary call's)
        outbound.open_response(reply.message)
    outbound.open_end(reply.code, reply.details, frame_metadata(reply.trailing_metadata))


def hello(data: bytes) -> None:
    with contextlib.suppress(FastProxyError):
        CALLEE_NODE.accept(data, NOW, NodeState())
    CALLER_NODE.caller.handshake(DESTINATION, NOW).finish(data, DESTINATION.verifiers, NOW)


def tunnel(data: bytes) -> None:
    for frame in frames_of(data):
        if frame.WhichOneof("body") == "call":
            context = CarriedCallContext(frame.call, "ipv4:127.0.0.1:1", 0.0)
            context.invocation_metadata()
            context.time_remaining()


def snapshot(data: bytes) -> None:
    try:
        signed = pb.SignedSnapshot.FromString(data)
    except DecodeError:
        signed = None
    if signed is not None:
        with contextlib.suppress(SnapshotError):
            verify_snapshot(signed)
    try:
        parsed = pb.PolicySnapshot.FromString(data)
    except DecodeError:
        return
    NodePolicy.from_snapshot(parsed)


def policy(data: bytes) -> None:
    load_policy(data, environ={})


CALL_SEALED, REQUEST_SEALED, RESPONSE_SEALED, HEAD_SEALED, END_SEALED = range(5)


def sealed(data: bytes) -> None:
    what, flags, plaintext = (data[0] % 5 if data else 0), (data[1] if len(data) > 1 else 0), \
        data[2:]
    session = fresh_caller_session()
    if what == CALL_SEALED:
        number = session.take_call_number()
        prefix = header(CALL) + session.session_id + number.to_bytes(8, "big")
        record = prefix + session.request.seal(nonce(number, 0), plaintext, prefix)
        CALLEE_NODE.inbound(METHOD, ((CALL_KEY, record),), NOW, fresh_callee_state())
        return
    outbound = CALLER_NODE.outbound(DESTINATION, session, METHOD, (), NOW)
    if what == REQUEST_SEALED:
        inbound = CALLEE_NODE.inbound(METHOD, outbound.metadata, NOW, fresh_callee_state())
        requests = Direction(session.request, outbound.call_number, clear=False, max_bytes=LIMIT)
        inbound.open_request(carry(requests.seal(DATA, plaintext, flags & 0x0F)), single=True)
        return
    responses = Direction(session.response, outbound.call_number, clear=False, max_bytes=LIMIT)
    if what == RESPONSE_SEALED:
        outbound.open_response(carry(responses.seal(DATA, plaintext, flags & 0x0F)))
    elif what == HEAD_SEALED:
        outbound.open_head((("x-a", "1"), (HEAD_KEY, responses.seal(HEAD, plaintext, position=0))))
    else:
        outbound.open_end(flags, "", ((END_KEY, responses.seal(STATUS, plaintext)),))


TARGETS: dict[str, Callable[[bytes], None]] = {
    "call": call, "response": response, "hello": hello, "tunnel": tunnel,
    "snapshot": snapshot, "policy": policy, "sealed": sealed,
}


def run_one(name: str, data: bytes) -> None:
    """One input through one target; raises only what is a bug."""
    with contextlib.suppress(*REFUSALS):
        TARGETS[name](data)
