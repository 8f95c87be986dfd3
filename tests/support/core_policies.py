"""Policies for the sans-IO core tests, built through the real path: YAML text ->
`load_policy` -> `scope_snapshot` -> `NodePolicy.from_snapshot`.

The caller is `chat_service` (its out-node), the callee `song_service` (its in-node),
serving the gRPC service `demo.v1.Echo`; `extra_callers` adds services with identities of
their own (rules naming them, or "*", let them call).

`open_session` runs a handshake in process as the hosts do (`caller.handshake` ->
`callee.accept` -> `finish`); `connect` starts one call on both sides in a session;
`refused` asserts the contracted reason of a refusal.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import pytest
import yaml

from fastproxy.pipeline.handshake import CallerSession
from fastproxy.pipeline.metadata import Metadata
from fastproxy.pipeline.node_policy import NodePolicy, NodeState
from fastproxy.pipeline.reasons import FastProxyError, Reason
from fastproxy.pipeline.stages import InboundCall, OutboundCall
from fastproxy.policy import load_policy
from fastproxy.policy.scope import scope_snapshot
from fastproxy.v1 import policy_pb2 as pb

CALLER = "chat_service"
CALLEE = "song_service"
METHOD = "/demo.v1.Echo/Say"
OTHER_METHOD = "/demo.v1.Echo/Shout"
T0 = 1_750_000_000.0  # a fixed simulated clock

SIGNING_TYPES = ("hmac-sha256", "ed25519")
ENCRYPTION_TYPES = ("aes-256-gcm", "chacha20-poly1305", None)


def material(name: str) -> bytes:
    """Deterministic 32-byte test material per key name (never a real secret)."""
    return hashlib.sha256(name.encode()).digest()


def secret_for(name: str) -> str:
    """`material(name)` as the policy writes it."""
    return "base64:" + base64.b64encode(material(name)).decode()


def key_entry(name: str, key_type: str) -> dict[str, str]:
    material = "private" if key_type == "ed25519" else "secret"
    return {"type": key_type, material: secret_for(name)}


@dataclass
class Setup:
    """A two-service policy; every field is a knob a test may turn."""

    caller_identity: str = "hmac-sha256"
    callee_identity: str = "hmac-sha256"
    encryption: str | None = "aes-256-gcm"
    compress: dict[str, object] | None = None
    rules: Sequence[Mapping[str, object]] = field(
        default_factory=lambda: [{"caller": CALLER, "methods": ["/demo.v1.Echo/*"]}])
    endpoints: list[str] = field(default_factory=lambda: ["127.0.0.1:9101"])
    # key rotation: which key each side uses, and which others it accepts
    enc_key: str = "song-enc-v1"
    enc_accept: Sequence[str] = ()
    caller_key: str = "chat-id-v1"
    caller_accept: Sequence[str] = ()
    timeout_ms: int = 2000
    secret_metadata: Sequence[str] = ()  # song_service's own credential metadata names
    extra_callers: Sequence[str] = ()  # more services with an identity (key "<name>-id")

    def yaml_text(self) -> str:
        keys: dict[str, object] = {}
        for name in (self.caller_key, *self.caller_accept):
            keys[name] = key_entry(name, self.caller_identity)
        keys["song-id-v1"] = key_entry("song-id-v1", self.callee_identity)
        song: dict[str, object] = {
            "grpc_services": ["demo.v1.Echo"],
            "endpoints": self.endpoints,
            "identity": {"key": "song-id-v1"},
            "timeout_ms": self.timeout_ms,
            "allow": [dict(rule) for rule in self.rules],
        }
        if self.encryption is not None:
            for name in (self.enc_key, *self.enc_accept):
                keys[name] = key_entry(name, self.encryption)
            song["encrypt"] = {"key": self.enc_key, "accept": list(self.enc_accept)}
        if self.compress is not None:
            song["compress"] = self.compress
        if self.secret_metadata:
            song["secret_metadata"] = list(self.secret_metadata)
        chat: dict[str, object] = {
            "identity": {"key": self.caller_key, "accept": list(self.caller_accept)},
        }
        services: dict[str, object] = {CALLEE: song, CALLER: chat}
        for name in self.extra_callers:
            keys[f"{name}-id"] = key_entry(f"{name}-id", self.caller_identity)
            services[name] = {"identity": {"key": f"{name}-id"}}
        document = {"version": 1, "keys": keys, "services": services}
        return yaml.safe_dump(document)

    def caller_policy(self, service: str = CALLER) -> NodePolicy:
        snapshot = scope_snapshot(load_policy(self.yaml_text()), pb.ROLE_OUT, service)
        return NodePolicy.from_snapshot(snapshot)

    def callee_policy(self, *, max_message_bytes: int | None = None) -> NodePolicy:
        snapshot = scope_snapshot(load_policy(self.yaml_text()), pb.ROLE_IN, CALLEE)
        if max_message_bytes is None:
            return NodePolicy.from_snapshot(snapshot)
        return NodePolicy.from_snapshot(snapshot, max_message_bytes=max_message_bytes)

    def pair(self) -> tuple[NodePolicy, NodePolicy]:
        return self.caller_policy(), self.callee_policy()


def open_session(caller: NodePolicy, callee: NodePolicy, state: NodeState,
                 method: str = METHOD, now: float = T0) -> CallerSession:
    """A session of `caller` with `callee`, whose side is kept in `state`: the handshake
    passed in process as `Session/Open` would pass it."""
    destination = caller.route(method)
    handshake = caller.caller.handshake(destination, now)
    answer = callee.accept(handshake.request, now, state)
    return handshake.finish(answer, destination.verifiers, now)


def connect(caller: NodePolicy, callee: NodePolicy, state: NodeState,
            method: str = METHOD, now: float = T0, *, metadata: Metadata = (),
            session: CallerSession | None = None) -> tuple[OutboundCall, InboundCall]:
    """Starts one call on both sides (in `session`, or a new one), its CALL record and
    metadata passed as the transport would."""
    if session is None:
        session = open_session(caller, callee, state, method, now)
    outbound = caller.outbound(caller.route(method), session, method, metadata, now)
    inbound = callee.inbound(method, outbound.metadata, now, state)
    return outbound, inbound


def refused(reason: Reason, action: Callable[[], object]) -> FastProxyError:
    """The refusal `action` raises, asserted to carry `reason`."""
    with pytest.raises(FastProxyError) as caught:
        action()
    assert caught.value.reason is reason, caught.value
    return caught.value


class Later:
    """A `defer` (a host loop's `call_soon`) that keeps what it is given until `run`."""

    def __init__(self) -> None:
        self.pending: list[Callable[[], None]] = []

    def __call__(self, work: Callable[[], None]) -> None:
        self.pending.append(work)

    def run(self) -> None:
        pending, self.pending = self.pending, []
        for work in pending:
            work()
