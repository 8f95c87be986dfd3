"""Security of the data plane, end to end (protocol version 2, docs/security.md): what
travels between the proxies is sealed, credentials included; a real in-proxy refuses every
tampered, replayed, misplaced or held-back call and record; a captured call replayed to any
instance of the callee (the same one, another one, the same one after a restart) never
reaches the upstream; and the allow rules and rate limits hold.

The out-proxies (chat_service, metered_service, narrow_service, stranger_service) and the
in-proxy of song_service run from one `--policy` file; song_service's endpoint in the policy
is a `RecordingRelay` in the test process that records the raw bytes and relays them to the
real in-proxy; the out-proxies run with `--tunnel off`, so that every call travels on a stream
of its own, which these tests capture, tamper with and replay (the same properties of calls
carried on the tunnel: `test_tunnel.py`, `test_tunnel_any_kind.py`). Crafted calls go
straight to the in-proxy, with bytes the relay captured or
sealed here by the sans-IO core from chat_service's own snapshot, in sessions opened here
with `Session/Open` (a session lives in the in-proxy process that accepted it).
"""

from __future__ import annotations

import os
import queue
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import grpc
import pytest
from support.dataplane import (
    CALLEE,
    CALLER,
    KINDS,
    METERED,
    NARROW,
    SERVING,
    STRANGER,
    DataplanePolicy,
    FileStack,
    Metadata,
    Proxies,
    RecordingRelay,
    RelayedCall,
    call_kind,
    channel,
    free_address,
    made_up_session,
    new_call,
    open_session,
    out_node,
    poll,
    random_payload,
    reason_of,
    relayed_file_stack,
)
from support.upstream_app import (
    BIDI,
    CLIENT_STREAM,
    CONTROL_ECHO,
    CONTROL_ID,
    CONTROL_STALL_EACH_MS,
    UNARY,
    UpstreamProcess,
)

from fastproxy.pipeline.handshake import OPEN_METHOD
from fastproxy.pipeline.metadata import (
    CALL_KEY,
    END_KEY,
    HEAD_KEY,
    REQUEST_DROPPED_KEYS,
    SESSION_KEY,
)
from fastproxy.pipeline.node_policy import NodePolicy
from fastproxy.pipeline.stages import OutboundCall

MARKER = b"PLAINTEXT-MARKER-7f3a"
# song_service lists this response/request entry as a credential of its own (secret_metadata)
SERVICE_SECRET = "x-echo-token"
POLICY = DataplanePolicy(secret_metadata=(SERVICE_SECRET,))


@pytest.fixture(scope="module")
def upstream() -> Iterator[UpstreamProcess]:
    with UpstreamProcess(name="song") as process:
        yield process


@pytest.fixture(scope="module")
def relay_and_stack(upstream: UpstreamProcess, tmp_path_factory: pytest.TempPathFactory
                    ) -> Iterator[tuple[RecordingRelay, FileStack]]:
    with relayed_file_stack(upstream.address, tmp_path_factory.mktemp("security"),
                            (CALLER, METERED, NARROW, STRANGER), POLICY,
                            extra=("--tunnel", "off")) as relay_and_stack:
        yield relay_and_stack


@pytest.fixture(scope="module")
def relay(relay_and_stack: tuple[RecordingRelay, FileStack]) -> RecordingRelay:
    return relay_and_stack[0]


@pytest.fixture(scope="module")
def stack(relay_and_stack: tuple[RecordingRelay, FileStack]) -> FileStack:
    return relay_and_stack[1]


@pytest.fixture(scope="module")
def chat(stack: FileStack) -> NodePolicy:
    return out_node(stack.policy.yaml_text())


def new_id() -> str:
    return uuid.uuid4().hex


# --- crafted calls --------------------------------------------------------------------


def crafted_call(in_address: str, method: str, metadata: Metadata,
                 messages: Sequence[bytes]) -> tuple[list[bytes], Any]:
    """Sends raw messages straight to the in-proxy (stream-stream works for every kind);
    returns the raw replies and grpc's call (headers, status, trailers)."""
    with channel(in_address) as ch:
        rpc = ch.stream_stream(method)(iter(messages), metadata=tuple(metadata), timeout=5)
        return list(rpc), rpc


def crafted_refusal(in_address: str, method: str, metadata: Metadata,
                    messages: Sequence[bytes], sealed_for: OutboundCall | None = None
                    ) -> grpc.RpcError:
    """The error ending a crafted call. With `sealed_for`: a refusal of a call that opened,
    so its STATUS record is sealed for that call, after the responses that came before it
    (the refusal is the in-proxy's own: an intermediary cannot make one up)."""
    replies: list[bytes] = []
    with channel(in_address) as ch, pytest.raises(grpc.RpcError) as raised:
        for reply in ch.stream_stream(method)(iter(messages), metadata=tuple(metadata),
                                              timeout=5):
            replies.append(reply)
    err = raised.value
    if sealed_for is not None:
        sealed_for.open_head(tuple(err.initial_metadata() or ()))
        for reply in replies:
            sealed_for.open_response(reply)
        sealed_for.open_end(err.code().value[0], err.details() or "",
                            tuple(err.trailing_metadata() or ()))
    return err


def sealed_stream(call: OutboundCall, messages: Sequence[bytes]) -> list[bytes]:
    """The requests of a stream as they travel: each message sealed, then the END record."""
    sealed = [call.seal_request(message) for message in messages]
    end = call.end_requests()
    return [*sealed, *([end] if end is not None else [])]


def opened_replies(call: OutboundCall, replies: list[bytes], rpc: Any) -> list[bytes]:
    """The replies of a crafted call, its head and end checked as the out-proxy checks them."""
    call.open_head(tuple(rpc.initial_metadata() or ()))
    opened = [call.open_response(reply) for reply in replies]
    call.open_end(rpc.code().value[0], rpc.details() or "", tuple(rpc.trailing_metadata() or ()))
    return opened


def unauthenticated_by_the_in_proxy(err: grpc.RpcError) -> grpc.RpcError:
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED, (err.code(), err.details())
    assert reason_of(err) == "unauthenticated", err.details()
    assert dict(err.trailing_metadata() or ())["fastproxy-proxy"] == "in"
    return err


# --- what travels between the proxies -------------------------------------------------


def _raw(value: str | bytes) -> bytes:
    return value if isinstance(value, bytes) else value.encode()


def test_no_plaintext_marker_travels_between_the_proxies(stack: FileStack, relay: RecordingRelay,
                                                         upstream: UpstreamProcess) -> None:
    """Neither payloads nor credential metadata (`authorization`, `cookie`, the service's
    own `secret_metadata`) travel in the clear, either way; the app and the upstream see
    them unchanged."""
    small = b"hello " + MARKER
    large = MARKER * 200  # compressible: gzip runs before encryption
    marker = MARKER.decode()
    credentials = (("authorization", f"Bearer {marker}"), ("cookie", f"sid={marker}"),
                   (SERVICE_SECRET, f"token-{marker}"))
    before = len(relay.calls)
    ids: list[str] = []
    with channel(stack.outproxies[CALLER].address) as ch:
        for kind in KINDS:
            for payload in (small, large):
                ids.append(new_id())
                responses, rpc = call_kind(ch, kind, payload, (
                    (CONTROL_ID, ids[-1]), (CONTROL_ECHO, "1"), *credentials))
                assert all(MARKER in response for response in responses)
                # The service's own credential came back (echoed), restored for the app.
                for seen in (rpc.initial_metadata(), rpc.trailing_metadata()):
                    assert (SERVICE_SECRET, f"token-{marker}") in tuple(seen), kind
    relayed = relay.calls[before:]
    app_calls = [call for call in relayed if call.method != OPEN_METHOD]
    assert len(app_calls) == 8
    for call in app_calls:
        assert call.requests and call.responses
        names = {key for key, _ in call.metadata}
        assert not names & {"authorization", "cookie", SERVICE_SECRET}, names
        assert CALL_KEY in names
        assert HEAD_KEY in {key for key, _ in call.initial}  # the echoed entries, sealed
        assert END_KEY in {key for key, _ in call.trailers}
    for call in relayed:  # session handshakes included
        for message in (*call.requests, *call.responses):
            assert MARKER not in message
        for _, value in (*call.metadata, *call.initial, *call.trailers):
            assert MARKER not in _raw(value)
    for call_id in ids:  # the upstream got the credentials, restored by the in-proxy
        seen = upstream.wait_record(call_id, "done")["metadata"]
        for entry in credentials:
            assert entry in seen, (entry, seen)


@pytest.mark.parametrize("direction", ["request", "response"])
def test_a_message_changed_between_the_proxies_is_unauthenticated(
        stack: FileStack, relay: RecordingRelay, upstream: UpstreamProcess,
        direction: str) -> None:
    """A man in the middle flips a byte: the in-proxy refuses a request, the out-proxy a
    response; either way the app gets `unauthenticated` naming the proxy that refused."""
    call_id = new_id()
    with channel(stack.outproxies[CALLER].address) as ch:
        call_kind(ch, "unary", b"a session first")  # the handshake is not what is flipped
        setattr(relay, f"flip_{direction}s", True)
        try:
            with pytest.raises(grpc.RpcError) as raised:
                call_kind(ch, "bidi", b"tampered with", ((CONTROL_ID, call_id),))
        finally:
            setattr(relay, f"flip_{direction}s", False)
    assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert reason_of(raised.value) == "unauthenticated"
    trailers = dict(raised.value.trailing_metadata())
    assert trailers["fastproxy-proxy"] == ("in" if direction == "request" else "out")
    if direction == "request":  # no tampered message reached the app
        assert upstream.wait_record(call_id, "done").get("messages_received", 0) == 0


# --- crafted calls straight to the in-proxy -------------------------------------------


def test_a_correctly_sealed_crafted_call_is_answered(stack: FileStack, chat: NodePolicy) -> None:
    address = stack.inproxy.address
    call = new_call(chat, address)
    replies, rpc = crafted_call(address, UNARY, call.metadata, sealed_stream(call, [b"crafted"]))
    assert opened_replies(call, replies, rpc) == [b"crafted"]
    # A sender that knows the method takes one request flags it final: no END record.
    call = new_call(chat, address)
    replies, rpc = crafted_call(address, UNARY, call.metadata,
                                [call.seal_request(b"final", final=True)])
    assert opened_replies(call, replies, rpc) == [b"final"]


def test_one_flipped_byte_is_unauthenticated(stack: FileStack, chat: NodePolicy) -> None:
    address = stack.inproxy.address
    for where in ("middle", "end"):
        call = new_call(chat, address)
        sealed = bytearray(call.seal_request(random_payload(2048, seed=7)))
        index = len(sealed) // 2 if where == "middle" else len(sealed) - 1
        sealed[index] ^= 0x01
        unauthenticated_by_the_in_proxy(crafted_refusal(
            address, UNARY, call.metadata, [bytes(sealed), call.end_requests() or b""], call))
    # A byte of the CALL record (the call header) itself.
    call = new_call(chat, address)
    metadata = dict(call.metadata)
    record = bytearray(metadata[CALL_KEY])  # type: ignore[arg-type]
    record[-1] ^= 0x01
    metadata[CALL_KEY] = bytes(record)
    unauthenticated_by_the_in_proxy(crafted_refusal(
        address, UNARY, tuple(metadata.items()), sealed_stream(call, [b"m"])))


def _replayable(captured: RelayedCall) -> Metadata:
    """The captured request metadata, as an attacker sends it again (grpc sets its own
    transport headers)."""
    return tuple((key, value) for key, value in captured.metadata
                 if key not in REQUEST_DROPPED_KEYS and not key.startswith(":"))


def capture(relay: RecordingRelay, out_address: str, kind: str) -> tuple[str, RelayedCall]:
    """A call of `kind` made through the out-proxy, as the relay between the proxies
    captured it (its upstream record under a fresh `x-test-id`)."""
    call_id = new_id()
    with channel(out_address) as ch:
        call_kind(ch, kind, b"to be replayed " + call_id.encode(), ((CONTROL_ID, call_id),))
    found = [call for call in list(relay.calls) if (CONTROL_ID, call_id) in call.metadata]
    assert len(found) == 1, f"the relay saw the {kind} call {len(found)} times"
    assert any(key == CALL_KEY for key, _ in found[0].metadata)
    return call_id, found[0]


def replay_refused(address: str, captured: RelayedCall, call_id: str,
                   upstream: UpstreamProcess) -> grpc.RpcError:
    """Replays `captured` verbatim to `address`: `unauthenticated`, and the upstream never
    receives it (its record of the original call is unchanged, no call arrived)."""
    original = upstream.wait_record(call_id, "done")
    assert original["messages_received"] >= 1
    calls_before = upstream.calls()
    err = unauthenticated_by_the_in_proxy(crafted_refusal(
        address, captured.method, _replayable(captured), captured.requests))
    assert upstream.calls() == calls_before
    assert upstream.record(call_id) == original
    return err


@pytest.mark.parametrize("kind", KINDS)
def test_a_replayed_call_is_unauthenticated(stack: FileStack, relay: RecordingRelay,
                                            upstream: UpstreamProcess, kind: str) -> None:
    """A call captured between the proxies, replayed to the same in-proxy at once (its
    session still open there, well within any time window): its call number was seen."""
    call_id, captured = capture(relay, stack.outproxies[CALLER].address, kind)
    err = replay_refused(stack.inproxy.address, captured, call_id, upstream)
    assert "replayed" in (err.details() or "")
    assert (SESSION_KEY, "unknown") not in tuple(err.trailing_metadata())


def test_a_call_replayed_to_another_instance_of_the_callee_is_unauthenticated(
        stack: FileStack, relay: RecordingRelay, upstream: UpstreamProcess,
        chat: NodePolicy, tmp_path: Path) -> None:
    """A second in-proxy of song_service, from the same policy file (the same keys): it
    never saw the captured calls' session, so it refuses them as of an unknown session."""
    captured = [capture(relay, stack.outproxies[CALLER].address, kind)
                for kind in ("unary", "bidi")]
    proxies = Proxies(tmp_path)
    try:
        second = proxies.start("in", CALLEE, free_address(), policy=stack.policy_path,
                               upstream=upstream.address)
        for call_id, relayed in captured:
            err = replay_refused(second.address, relayed, call_id, upstream)
            assert (SESSION_KEY, "unknown") in tuple(err.trailing_metadata())
        # It is a working instance: a call in a session of its own is answered.
        call = new_call(chat, second.address)
        replies, rpc = crafted_call(second.address, UNARY, call.metadata,
                                    sealed_stream(call, [b"own session"]))
        assert opened_replies(call, replies, rpc) == [b"own session"]
    finally:
        proxies.stop_all()


def test_a_call_replayed_to_the_in_proxy_after_a_restart_is_unauthenticated(
        upstream: UpstreamProcess, tmp_path: Path) -> None:
    """The in-proxy stopped and started again at the same address: sessions lived in its
    memory only, so the captured calls' session is unknown; the out-proxy opens a new one."""
    with relayed_file_stack(upstream.address, tmp_path, (CALLER,),
                            extra=("--tunnel", "off")) as (relay, stack):
        out = stack.outproxies[CALLER].address
        captured = [capture(relay, out, kind) for kind in ("unary", "bidi")]
        assert stack.inproxy.terminate() == 0
        stack.inproxy.start().wait_status(SERVING)
        for call_id, relayed in captured:
            err = replay_refused(stack.inproxy.address, relayed, call_id, upstream)
            assert (SESSION_KEY, "unknown") in tuple(err.trailing_metadata())
        # The out-proxy learns its session is gone and opens a new one; a call it was
        # already streaming is answered UNAVAILABLE, "try again" (docs/security.md).
        with channel(out) as ch:
            try:
                call_kind(ch, "unary", b"the session is gone")
            except grpc.RpcError as err:
                assert err.code() == grpc.StatusCode.UNAVAILABLE, err
            assert call_kind(ch, "unary", b"after the restart")[0] == [b"after the restart"]


def test_a_call_in_a_session_the_in_proxy_never_opened_is_unauthenticated(
        stack: FileStack, chat: NodePolicy) -> None:
    call = new_call(chat, stack.inproxy.address, session=made_up_session(chat))
    err = unauthenticated_by_the_in_proxy(crafted_refusal(
        stack.inproxy.address, UNARY, call.metadata, sealed_stream(call, [b"m"])))
    assert (SESSION_KEY, "unknown") in tuple(err.trailing_metadata())


def test_a_replayed_message_within_a_call_is_unauthenticated(stack: FileStack,
                                                             chat: NodePolicy) -> None:
    call = new_call(chat, stack.inproxy.address, BIDI)
    first = call.seal_request(b"once")
    unauthenticated_by_the_in_proxy(crafted_refusal(
        stack.inproxy.address, BIDI, call.metadata, [first, first], call))


def test_a_call_moved_to_another_method_is_unauthenticated(stack: FileStack,
                                                           chat: NodePolicy) -> None:
    call = new_call(chat, stack.inproxy.address, UNARY)
    unauthenticated_by_the_in_proxy(crafted_refusal(
        stack.inproxy.address, CLIENT_STREAM, call.metadata, sealed_stream(call, [b"m"]),
        call))


def test_a_message_moved_to_another_method_is_unauthenticated(stack: FileStack,
                                                              chat: NodePolicy) -> None:
    """A message sealed for a Unary call, moved into a ClientStream call of the same
    session: another call number, so it does not open there."""
    session = open_session(chat, stack.inproxy.address)
    sealed_for_unary = new_call(chat, "", UNARY, session=session).seal_request(b"m")
    target = new_call(chat, "", CLIENT_STREAM, session=session)
    unauthenticated_by_the_in_proxy(crafted_refusal(
        stack.inproxy.address, CLIENT_STREAM, target.metadata,
        [sealed_for_unary, target.end_requests() or b""], target))


def test_a_message_moved_to_another_call_is_unauthenticated(stack: FileStack,
                                                            chat: NodePolicy) -> None:
    """Into another call of the same session (another call number), or of another session
    (other keys): it does not open."""
    address = stack.inproxy.address
    session = open_session(chat, address)
    for elsewhere in (new_call(chat, "", UNARY, session=session),
                      new_call(chat, address, UNARY)):
        sealed_elsewhere = elsewhere.seal_request(b"m")
        target = new_call(chat, "", UNARY, session=session)
        unauthenticated_by_the_in_proxy(crafted_refusal(
            address, UNARY, target.metadata, [sealed_elsewhere], target))


def test_a_message_moved_to_another_stream_position_is_unauthenticated(
        stack: FileStack, chat: NodePolicy) -> None:
    call = new_call(chat, stack.inproxy.address, BIDI)
    first = call.seal_request(b"first")
    second = call.seal_request(b"second")
    unauthenticated_by_the_in_proxy(crafted_refusal(
        stack.inproxy.address, BIDI, call.metadata, [second, first], call))


def test_a_response_reflected_back_as_a_request_is_unauthenticated(
        stack: FileStack, chat: NodePolicy) -> None:
    """A record moved to the other direction: the in-proxy's first response of a Bidi call,
    sent back to it as the call's next request, does not open (each direction has its own
    key)."""
    call = new_call(chat, stack.inproxy.address, BIDI)
    replies: queue.Queue[bytes] = queue.Queue()

    def requests() -> Iterator[bytes]:
        yield call.seal_request(b"echo me")
        yield replies.get(timeout=5)

    with channel(stack.inproxy.address) as ch, pytest.raises(grpc.RpcError) as raised:
        for reply in ch.stream_stream(BIDI)(requests(), metadata=call.metadata, timeout=5):
            assert call.open_response(reply) == b"echo me"
            replies.put(reply)
    unauthenticated_by_the_in_proxy(raised.value)
    call.open_end(raised.value.code().value[0], raised.value.details() or "",
                  tuple(raised.value.trailing_metadata()))


def test_a_request_stream_cut_short_is_unauthenticated_and_cancelled_upstream(
        stack: FileStack, chat: NodePolicy, upstream: UpstreamProcess) -> None:
    """The last message and the END record dropped on the way: the in-proxy refuses the
    call at the half-close (sealed) and cancels the upstream call instead of half-closing it.
    (The upstream stalls after each message: grpc.aio ends a server's request iterator as
    at a half-close when a cancel arrives between reads, so only a cancel arriving during
    an await is told apart by the test upstream.)"""
    call_id = new_id()
    call = new_call(chat, stack.inproxy.address, BIDI, metadata=(
        (CONTROL_ID, call_id), (CONTROL_STALL_EACH_MS, "3000")))
    sealed = sealed_stream(call, [b"one", b"two"])
    echoed = threading.Event()

    def requests() -> Iterator[bytes]:
        yield sealed[0]
        echoed.wait(5)  # the upstream has the first message: now the half-close

    with channel(stack.inproxy.address) as ch, pytest.raises(grpc.RpcError) as raised:
        for reply in ch.stream_stream(BIDI)(requests(), metadata=call.metadata, timeout=5):
            assert call.open_response(reply) == b"one"
            echoed.set()
    err = unauthenticated_by_the_in_proxy(raised.value)
    assert "cut short" in (err.details() or "")
    call.open_end(err.code().value[0], err.details() or "", tuple(err.trailing_metadata()))
    record = upstream.wait_record(call_id, "cancelled")
    assert (record["messages_received"], record["cancelled"]) == (1, True)


def test_request_metadata_changed_between_the_proxies_is_unauthenticated(
        stack: FileStack, chat: NodePolicy, upstream: UpstreamProcess) -> None:
    """An entry added, changed or removed on the way, or a credential added in the clear
    (the digest leaves credentials out: they travel in the CALL record)."""
    address = stack.inproxy.address
    for change in ("added", "changed", "removed", "credential added"):
        call_id = new_id()
        call = new_call(chat, address, metadata=((CONTROL_ID, call_id), ("x-role", "reader")))
        metadata = {
            "added": (*call.metadata, ("x-role", "admin")),
            "changed": tuple((k, "admin" if k == "x-role" else v) for k, v in call.metadata),
            "removed": tuple((k, v) for k, v in call.metadata if k != "x-role"),
            "credential added": (*call.metadata, ("authorization", "Bearer attacker")),
        }[change]
        unauthenticated_by_the_in_proxy(crafted_refusal(
            address, UNARY, metadata, sealed_stream(call, [b"m"]), call))
        assert upstream.record(call_id) == {}, change


def test_a_call_held_back_too_long_is_unauthenticated(stack: FileStack,
                                                      chat: NodePolicy) -> None:
    """A CALL record sealed more than 30 s ago (a call an intermediary held back), or for
    more than 30 s ahead."""
    for skew_s in (-60.0, 60.0):
        call = new_call(chat, stack.inproxy.address, now=time.time() + skew_s)
        err = unauthenticated_by_the_in_proxy(crafted_refusal(
            stack.inproxy.address, UNARY, call.metadata, sealed_stream(call, [b"m"]), call))
        assert "too old or too far ahead" in (err.details() or "")


def test_a_call_signed_with_an_unknown_key_is_unauthenticated(stack: FileStack) -> None:
    """A caller proves its identity in the session handshake: a hello signed with a key
    song_service does not accept for chat_service (an unknown key name, or the right name
    with another secret) opens no session, so no call."""
    policy = stack.policy
    rogues = (
        out_node(policy.yaml_text().replace("chat-id", "chat-rogue")),
        out_node(policy.with_(secrets={**policy.secrets, "chat-id": os.urandom(32)})
                 .yaml_text()),
    )
    def refused_handshakes() -> list[str]:
        return [line for line in stack.inproxy.log().splitlines()
                if "call refused" in line and OPEN_METHOD in line]

    before = len(refused_handshakes())
    for rogue in rogues:
        with pytest.raises(grpc.RpcError) as raised:
            open_session(rogue, stack.inproxy.address)
        unauthenticated_by_the_in_proxy(raised.value)
    # each refused handshake is one audit line, as a refused call is
    poll(lambda: len(refused_handshakes()) >= before + 2, 5, "two audit lines")
    lines = refused_handshakes()[before:]
    assert len(lines) == 2 and all("unauthenticated" in line for line in lines), lines


def test_a_version_1_call_header_is_unauthenticated(stack: FileStack) -> None:
    v1_header = b"\x08\x01\x12\x0cchat_service"
    err = unauthenticated_by_the_in_proxy(crafted_refusal(
        stack.inproxy.address, UNARY, ((CALL_KEY, v1_header),), [b"\x08\x01"]))
    assert "version 1" in (err.details() or "")


def test_garbage_instead_of_a_sealed_message_is_malformed(stack: FileStack,
                                                          chat: NodePolicy) -> None:
    call = new_call(chat, stack.inproxy.address)
    err = crafted_refusal(stack.inproxy.address, UNARY, call.metadata,
                          [b"garbage\xff\x00 not sealed"], call)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert reason_of(err) == "malformed"


# --- allow rules and rate limits ------------------------------------------------------


def test_a_caller_outside_its_method_pattern_is_denied(stack: FileStack) -> None:
    with channel(stack.outproxies[NARROW].address) as ch:
        assert call_kind(ch, "unary", b"allowed")[0] == [b"allowed"]
        with pytest.raises(grpc.RpcError) as raised:
            call_kind(ch, "bidi", b"not allowed")
    assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert reason_of(raised.value) == "denied"


def test_a_caller_no_rule_names_is_denied_by_its_own_out_proxy(stack: FileStack) -> None:
    """Denied means denied: the caller's out-proxy knows the service exists (not its keys or
    endpoints) and answers `denied` naming caller, callee and method; a gRPC service nobody
    serves stays `no_route`."""
    with channel(stack.outproxies[STRANGER].address) as ch:
        with pytest.raises(grpc.RpcError) as raised:
            call_kind(ch, "unary", b"hello?")
        with pytest.raises(grpc.RpcError) as unknown:
            ch.unary_unary("/nobody.v1.Serves/This")(b"?", timeout=5)
    assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert reason_of(raised.value) == "denied"
    trailers = dict(raised.value.trailing_metadata())
    assert trailers.get("fastproxy-proxy") == "out"
    assert trailers.get("fastproxy-rule") == "none"
    details = raised.value.details() or ""
    assert STRANGER in details and CALLEE in details and UNARY in details
    assert "policy revision" in details
    assert unknown.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert reason_of(unknown.value) == "no_route"


def test_rate_limit_lets_at_most_burst_plus_rps_through_in_one_second(stack: FileStack) -> None:
    calls = 30
    with channel(stack.outproxies[METERED].address) as ch:
        method = ch.unary_unary(UNARY)
        start = time.monotonic()
        futures: list[Future[bytes]] = []
        for index in range(calls):  # spread over half a second
            time.sleep(max(0.0, start + index / 60 - time.monotonic()))
            futures.append(method.future(b"x", timeout=10))
        sending_took = time.monotonic() - start
        outcomes: list[str] = []
        for future in futures:
            try:
                future.result()
                outcomes.append("ok")
            except grpc.RpcError as err:
                assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                outcomes.append(str(reason_of(err)))
    assert sending_took < 1.0
    passed = outcomes.count("ok")
    assert 5 <= passed <= 15, outcomes
    assert outcomes.count("rate_limited") == calls - passed
