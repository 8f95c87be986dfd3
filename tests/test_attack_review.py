"""A security review's attacks on the handshake, aimed at its three least reviewed changes:
the callee answering before it makes its keys (`defer`, `KeyAgreement`), X25519 keys made
ahead of the handshakes that use them (`SpareEphemeral`), and a `Session/Open` handler that
no longer reads its request stream (docs/protocol.md, 3; docs/security.md, P2, P4 and
"Hardening" 5).

A test that FAILS shows a violation of a claimed property (its docstring names which); a test
that passes shows an attack refused as claimed, on ground the other attack tests do not cover.
First at the sans-IO core, then against a real in-proxy process.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from support.core_policies import CALLEE, METHOD, T0, Later, Setup, connect, open_session, refused
from support.dataplane import (
    FileStack,
    Proxies,
    channel,
    made_up_session,
    new_call,
    out_node,
    reason_of,
    reply_of,
    start_file_stack,
)
from support.upstream_app import UNARY, UpstreamProcess

from fastproxy.pipeline import keys
from fastproxy.pipeline.handshake import CLIENT_CONTEXT, OPEN_METHOD
from fastproxy.pipeline.metadata import HELLO_KEY, hello_of
from fastproxy.pipeline.node_policy import NodeState
from fastproxy.pipeline.reasons import FastProxyError, Reason
from fastproxy.v1 import session_pb2 as spb

# A point of order 8 on Curve25519: any exchange with it gives no shared secret.
LOW_ORDER_POINT = bytes.fromhex(
    "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800")
# The order of the Ed25519 base point: S and S + L verify alike where S < L is not checked.
ED25519_L = 2**252 + 27742317777372353535851937790883648493


def padded(signed_hello: bytes, tag: int = 0) -> bytes:
    """`signed_hello` with an unknown protobuf field (number 3, length-delimited) appended:
    what an on-path attacker can do to any captured hello or answer without any key."""
    return signed_hello + bytes((0x1A, 1, tag & 0xFF))


def answer_ephemeral(answer: bytes) -> bytes:
    return spb.ServerHello.FromString(spb.SignedHello.FromString(answer).hello).ephemeral


def hello_ephemeral(request: bytes) -> bytes:
    return spb.ClientHello.FromString(spb.SignedHello.FromString(request).hello).ephemeral


# --- replayed hellos, re-encoded ------------------------------------------------------------


def test_a_replayed_hello_with_an_unknown_field_appended_opens_no_second_session() -> None:
    """VIOLATES docs/security.md "Hardening" 5 and protocol.md 3 ("B refuses a hello that
    opened a session it still holds: a replayed hello opens no second session"). The replay
    check keys on H(signed hello bytes), and `_signed`'s canonical-encoding check lets an
    unknown field through (protobuf keeps it and writes it back unchanged), so an on-path
    attacker turns one captured hello into as many "new" hellos as it likes: each one opens a
    session in the share of the caller the hello names."""
    caller, callee = Setup().pair()
    state = NodeState()
    handshake = caller.caller.handshake(caller.route(METHOD), T0)
    callee.accept(handshake.request, T0, state)
    for tag in range(3):
        refused(Reason.UNAUTHENTICATED,
                lambda tag=tag: callee.accept(padded(handshake.request, tag), T0 + 1, state))
    assert len(state.sessions) == 1


def test_an_on_path_replayer_cannot_push_a_callers_session_out_with_one_captured_hello(
) -> None:
    """VIOLATES docs/security.md "Hardening" 5 (sessions: "a replay opens no second one";
    a flood "costs the flooder its own sessions"). An on-path attacker with one captured hello
    of chat_service replays it re-encoded `max_sessions` times: chat_service then holds the
    most sessions, so its least recently used one, the genuine session in use, is forgotten,
    and its next call is refused as an unknown session. The attacker needs no key at all."""
    caller, callee = Setup().pair()
    state = NodeState(max_sessions=4)
    handshake = caller.caller.handshake(caller.route(METHOD), T0)
    answer = callee.accept(handshake.request, T0, state)
    session = handshake.finish(answer, caller.route(METHOD).verifiers, T0)
    connect(caller, callee, state, session=session)
    for tag in range(4):  # each refused as a replay, if the claim held
        with contextlib.suppress(FastProxyError):
            callee.accept(padded(handshake.request, tag), T0 + 1, state)
    connect(caller, callee, state, session=session)  # "unknown session" today


def test_an_ed25519_hello_whose_signature_was_made_malleable_is_refused() -> None:
    """An on-path attacker adds L to the S half of a captured Ed25519 signature (the same
    point, a signature some verifiers accept) to make a hello of new bytes, hence a new
    digest the replay check has not seen: refused, the verifier checks S < L. And the same
    hello with its hello field written twice (a second encoding of the same message) is
    refused by the canonical-encoding check."""
    setup = Setup(caller_identity="ed25519")
    caller, callee = setup.pair()
    state = NodeState()
    handshake = caller.caller.handshake(caller.route(METHOD), T0)
    callee.accept(handshake.request, T0, state)
    signed = spb.SignedHello.FromString(handshake.request)
    s = int.from_bytes(signed.signature[32:], "little") + ED25519_L
    assert s < 2**256
    malleable = spb.SignedHello(hello=signed.hello,
                                signature=signed.signature[:32] + s.to_bytes(32, "little"))
    error = refused(Reason.UNAUTHENTICATED,
                    lambda: callee.accept(malleable.SerializeToString(), T0 + 1, state))
    assert "not signed by a caller" in error.detail
    again = spb.SignedHello(hello=signed.hello).SerializeToString()  # the hello field alone
    twice = again + handshake.request  # the hello field twice, then the signature
    refused(Reason.UNAUTHENTICATED, lambda: callee.accept(twice, T0 + 1, state))
    assert len(state.sessions) == 1


def test_an_answer_with_an_unknown_field_appended_is_refused_by_the_caller() -> None:
    """FAILS on the current code: the claim broken is `_signed`'s own ("anything beside the
    hello and its signature would change the transcript, hence the keys, without failing
    here: refused here instead"), at the caller's end. An on-path attacker appends an unknown
    field to the callee's answer: the caller accepts it and derives keys from a transcript
    the callee never saw, so every call of that session fails as "does not open" (not
    "unknown session", which would make the caller open a new one) until the caller rekeys
    at 80% of the lifetime. Impact: a denial of service that outlives the one tampered
    message (docs/security.md puts denial of service out of scope)."""
    caller, callee = Setup().pair()
    state = NodeState()
    destination = caller.route(METHOD)
    handshake = caller.caller.handshake(destination, T0)
    answer = callee.accept(handshake.request, T0, state)
    refused(Reason.UNAUTHENTICATED,
            lambda: handshake.finish(padded(answer), destination.verifiers, T0))


# --- keys made ahead, and refused hellos ----------------------------------------------------


def test_a_hello_refused_as_a_replay_spends_no_key_and_no_agreement(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """FAILS on the current code; the claim broken is the project's (protocol.md 3: the
    next ephemeral key is made "after each handshake, off the call's path";
    tests/test_handshake_off_path.py: "none of it spent on a refused hello"), not a
    security.md property. A hello refused as a replay still takes the key made ahead (and
    schedules its X25519 agreement for a session that is never kept), but schedules no
    refill: the next genuine handshake makes its key on its own path. Each replay an
    on-path attacker sends costs the callee an agreement it never needed."""
    caller, callee = Setup().pair()
    state = NodeState()
    first = caller.caller.handshake(caller.route(METHOD), T0)
    later = Later()
    callee.accept(first.request, T0, state, defer=later)
    later.run()  # the session's keys and the next spare key
    made: list[int] = []
    generate = keys.X25519PrivateKey.generate
    monkeypatch.setattr(keys.X25519PrivateKey, "generate",
                        staticmethod(lambda: made.append(1) or generate()))
    refused(Reason.UNAUTHENTICATED, lambda: callee.accept(first.request, T0 + 1, state,
                                                          defer=later))
    assert later.pending == []  # no agreement left for a session that was never kept
    second = caller.caller.handshake(caller.route(METHOD), T0 + 2)
    made.clear()
    callee.accept(second.request, T0 + 2, state, defer=later)
    assert made == []  # the genuine handshake's key was made ahead, not on its path


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_keys_made_ahead_are_not_shared_by_a_process_and_its_fork() -> None:
    """FAILS on the current code. VIOLATES protocol.md 3 / security.md P2 ("each [ephemeral
    key] is used for one handshake"; "never uses one for two handshakes"). The key made
    ahead lives in the compiled policy (`CallerSide.spare`, `CalleeSide.spare`): an app that
    loads its policy and then forks workers (gunicorn --preload, multiprocessing's fork) hands
    every worker the same X25519 private key, and each worker's first handshake (caller's
    hello, callee's answer) uses it. Before keys were made ahead, each handshake made its own
    after the fork."""
    setup = Setup()
    caller, callee = setup.pair()
    destination = caller.route(METHOD)

    def first_keys(stamp: float) -> bytes:
        handshake = caller.caller.handshake(destination, stamp)
        answer = callee.accept(caller.caller.handshake(destination, stamp).request, stamp,
                               NodeState())
        return hello_ephemeral(handshake.request) + answer_ephemeral(answer)

    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the forked worker: its first handshakes, then out at once
        try:
            os.write(write_end, first_keys(T0))
        finally:
            os._exit(0)
    os.close(write_end)
    try:
        mine = first_keys(T0)
        deadline = time.monotonic() + 10
        theirs = b""
        while len(theirs) < 64 and time.monotonic() < deadline:
            chunk = os.read(read_end, 64 - len(theirs))
            if not chunk:
                break
            theirs += chunk
    finally:
        os.close(read_end)
        os.waitpid(pid, 0)
    assert len(theirs) == 64
    assert mine[:32] != theirs[:32], "a caller's hello key reused by its fork"
    assert mine[32:] != theirs[32:], "a callee's answer key reused by its fork"


def in_a_fork(work: Callable[[], bytes]) -> bytes:
    """What `work` returns when run in a child forked from this process (which runs
    nothing else and leaves at once)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.write(write_end, work())
        finally:
            os._exit(0)
    os.close(write_end)
    try:
        with os.fdopen(read_end, "rb") as pipe:
            return pipe.read()
    finally:
        os.waitpid(pid, 0)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_sessions_are_not_carried_into_a_forked_process() -> None:
    """Found with the review above: a session opened before a fork would serve both
    processes. The caller's two copies would count the same call numbers (the same nonces
    under the same key: AES-GCM's one fatal misuse), and the callee's copies would each take
    a call once (a call replayed to the other copy accepted). A forked process opens
    sessions of its own and forgets the ones it inherited."""
    caller, callee = Setup().pair()
    state = NodeState()
    destination = caller.route(METHOD)
    session = open_session(caller, callee, state)
    connect(caller, callee, state, session=session)  # call 1, in this process

    def in_child() -> bytes:
        serves = caller.caller.serves(session, destination, T0)
        held = state.sessions.find(session.session_id, T0)
        return bytes((serves, held is not None))

    assert in_a_fork(in_child) == bytes((False, False))
    assert caller.caller.serves(session, destination, T0)  # the parent's are unchanged
    assert state.sessions.find(session.session_id, T0) is not None


# --- against a real in-proxy ----------------------------------------------------------------


MAX_SESSIONS = 4


@pytest.fixture(scope="module")
def upstream() -> Iterator[UpstreamProcess]:
    with UpstreamProcess(name="song") as process:
        yield process


@pytest.fixture(scope="module")
def stack(upstream: UpstreamProcess, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[FileStack]:
    directory: Path = tmp_path_factory.mktemp("attack-review")
    proxies = Proxies(directory)
    try:
        yield start_file_stack(proxies, upstream.address, directory, callers=(),
                               extra=("--max-sessions", str(MAX_SESSIONS)))
    finally:
        proxies.stop_all()


def open_with(ch: grpc.Channel, request: bytes) -> tuple[bytes, grpc.Call]:
    return ch.unary_unary(OPEN_METHOD).with_call(b"", metadata=((HELLO_KEY, request),),
                                                 timeout=10)


def test_an_in_proxy_answers_no_re_encoded_replay_of_a_hello_it_holds(
        stack: FileStack) -> None:
    """VIOLATES docs/security.md "Hardening" 5 against a real in-proxy: an on-path attacker
    re-sends chat_service's captured hello with an unknown field appended, MAX_SESSIONS
    times; each is answered OK (a replay should be refused UNAUTHENTICATED) and chat_service's
    genuine session, in use, is forgotten: its next call is refused as an unknown session."""
    address = stack.inproxy.address
    chat = out_node(stack.policy.yaml_text())
    destination = chat.route(UNARY)
    with channel(address) as ch:
        handshake = chat.caller.handshake(destination, time.time())
        _, rpc = open_with(ch, handshake.request)
        session = handshake.finish(hello_of(rpc.trailing_metadata()), destination.verifiers,
                                   time.time())
        call = new_call(chat, address, session=session)
        reply, rpc = ch.unary_unary(UNARY).with_call(
            call.seal_request(b"before", final=True), metadata=call.metadata, timeout=10)
        assert reply_of(call, reply, rpc) == b"before"
        answered = 0
        for tag in range(MAX_SESSIONS):
            try:
                open_with(ch, padded(handshake.request, tag))
                answered += 1
            except grpc.RpcError as error:
                assert error.code() == grpc.StatusCode.UNAUTHENTICATED
        again = new_call(chat, address, session=session)
        try:
            reply, rpc = ch.unary_unary(UNARY).with_call(
                again.seal_request(b"after", final=True), metadata=again.metadata, timeout=10)
            after = reply_of(again, reply, rpc)
        except grpc.RpcError as error:
            after = f"{error.code().name}: {error.details()}".encode()
    assert (answered, after) == (0, b"after")


def test_concurrent_handshakes_at_an_in_proxy_each_get_an_answer_key_of_their_own(
        stack: FileStack) -> None:
    """Thirty hellos sent at once (one in-proxy loop, one key made ahead, refilled with
    `call_soon`) are answered with thirty different X25519 keys: no two handshakes take the
    same key made ahead; each opens a session that serves a call."""
    address = stack.inproxy.address
    chat = out_node(stack.policy.yaml_text())
    destination = chat.route(UNARY)
    handshakes = [chat.caller.handshake(destination, time.time()) for _ in range(30)]
    with channel(address) as ch, ThreadPoolExecutor(max_workers=30) as pool:
        rpcs = list(pool.map(lambda h: open_with(ch, h.request)[1], handshakes))
        answers = [hello_of(rpc.trailing_metadata()) for rpc in rpcs]
        assert len({answer_ephemeral(answer) for answer in answers}) == 30
        served = 0
        for handshake, answer in zip(handshakes, answers, strict=True):
            session = handshake.finish(answer, destination.verifiers, time.time())
            call = new_call(chat, address, session=session)
            try:
                reply, rpc = ch.unary_unary(UNARY).with_call(
                    call.seal_request(b"mine", final=True), metadata=call.metadata,
                    timeout=10)
            except grpc.RpcError as error:  # pushed out by the later ones (MAX_SESSIONS)
                assert "unknown or expired session" in (error.details() or "")
                continue
            assert reply_of(call, reply, rpc) == b"mine"
            served += 1
        assert 1 <= served <= MAX_SESSIONS


def test_a_low_order_hello_at_an_in_proxy_opens_a_session_whose_calls_are_refused(
        stack: FileStack) -> None:
    """A caller the in-proxy knows signs a hello whose ephemeral key is a point of order 8.
    The in-proxy answers before making its keys (the answer does not depend on them), and
    then refuses every call of that session UNAUTHENTICATED ("no shared secret"), whatever
    keys the caller guesses (an all-zero shared secret would make the keys public), and
    each time, not only the first."""
    address = stack.inproxy.address
    chat = out_node(stack.policy.yaml_text())
    destination = chat.route(UNARY)
    genuine = spb.SignedHello.FromString(
        chat.caller.handshake(destination, time.time()).request)
    hello = spb.ClientHello.FromString(genuine.hello)
    hello.ephemeral = LOW_ORDER_POINT
    body = hello.SerializeToString()
    assert chat.caller.signer is not None
    request = spb.SignedHello(hello=body, signature=chat.caller.signer.sign(
        CLIENT_CONTEXT + body, CALLEE)).SerializeToString()
    with channel(address) as ch:
        _, rpc = open_with(ch, request)
        answer = spb.ServerHello.FromString(
            spb.SignedHello.FromString(hello_of(rpc.trailing_metadata())).hello)
        assert answer.client_hello_digest == hashlib.sha256(request).digest()
        guess = made_up_session(chat)
        guess.session_id = answer.session_id
        for _ in range(2):
            call = new_call(chat, address, session=guess)
            with pytest.raises(grpc.RpcError) as raised:
                ch.unary_unary(UNARY)(call.seal_request(b"x", final=True),
                                      metadata=call.metadata, timeout=10)
            assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert reason_of(raised.value) == "unauthenticated"
            assert "no shared secret" in (raised.value.details() or "")


def test_a_handshake_whose_request_stream_never_ends_is_answered_and_ends(
        stack: FileStack) -> None:
    """`Session/Open` no longer reads its request stream: a caller (or anyone) that sends the
    hello on a stream of messages it never half-closes gets its answer and the call's end at
    once, the in-proxy holding nothing for the stream; the messages change nothing (the
    answer is to the hello in the metadata) and the session serves a call."""
    address = stack.inproxy.address
    chat = out_node(stack.policy.yaml_text())
    destination = chat.route(UNARY)
    handshake = chat.caller.handshake(destination, time.time())
    release = threading.Event()

    def requests() -> Iterator[bytes]:
        for index in range(50):
            yield b"x" * 1024 + bytes((index,))
        release.wait(10)  # never half-closes while the answer is awaited

    with channel(address) as ch:
        started = time.monotonic()
        rpc = ch.stream_stream(OPEN_METHOD)(requests(), metadata=((HELLO_KEY,
                                                                   handshake.request),),
                                            timeout=10)
        try:
            responses = list(rpc)
            answer = hello_of(rpc.trailing_metadata())
            elapsed = time.monotonic() - started
        finally:
            release.set()
        assert responses == [b""] and rpc.code() == grpc.StatusCode.OK
        assert elapsed < 5
        session = handshake.finish(answer, destination.verifiers, time.time())
        call = new_call(chat, address, session=session)
        reply, unary_rpc = ch.unary_unary(UNARY).with_call(
            call.seal_request(b"streamed", final=True), metadata=call.metadata, timeout=10)
        assert reply_of(call, reply, unary_rpc) == b"streamed"
