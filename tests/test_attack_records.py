"""Attacks after the handshake (docs/security.md P3, P4; docs/protocol.md sections 4-6), by a
reviewer: what an on-path intermediary between the proxies can do with the entries the
protocol leaves unsealed (`fastproxy-kind`, `fastproxy-session`), and the `fastproxy-`
names a refusal carries, which must stay sealed.

Between real processes: client -> out-proxy (`--tunnel off`, so each call is its own stream
an intermediary sees) -> `HookRelay` -> in-proxy -> the test upstream (no server reflection:
the general case, where the out-proxy learns kinds from the in-proxy's trailer).

A test that fails here shows a violation of the claim its docstring names.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator

import grpc
import pytest
from support.core_policies import METHOD, T0, Setup, connect, open_session, refused
from support.dataplane import CALLER, Proxies, channel, free_address, start_file_stack
from support.relay import LoopbackRelay, relayable
from support.upstream_app import BIDI, CLIENT_STREAM, CONTROL_ID, UNARY, UpstreamProcess

from fastproxy.pipeline.metadata import KIND_KEY, SESSION_KEY
from fastproxy.pipeline.node_policy import NodeState
from fastproxy.pipeline.reasons import Reason
from proxy_svc.upstream import StatusLog

NOT_FOUND = 5
CALL_TIMEOUT_S = 10.0


async def _passed(requests: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    async for message in requests:
        yield message


class HookRelay(LoopbackRelay):
    """An intermediary between the proxies: forwards every call unchanged, except calls of
    `test.v1.Echo` while `mode` is set:
    - `kind_unary`: adds the in-proxy's kind trailer `fastproxy-kind: unary` to an OK answer
      (an entry outside every digest);
    - `forge_unknown_session`: lets the call reach the in-proxy and its upstream, waits for
      the answer, and answers instead, unsealed, what a callee that does not know the session
      answers (`UNAUTHENTICATED`, `fastproxy-session: unknown`). One call only."""

    def __init__(self, target: str) -> None:
        super().__init__(target)
        self.mode: str | None = None
        self.forged = 0

    async def _relay(self, method: str, requests: AsyncIterator[bytes],
                     context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        mode = self.mode if method.startswith("/test.v1.Echo/") else None
        if mode == "forge_unknown_session":
            self.mode = None  # this call only: its retry passes unchanged
        call = self._channel.stream_stream(method)(
            _passed(requests), metadata=relayable(context.invocation_metadata()),
            timeout=context.time_remaining())
        statuses = StatusLog(call)
        responses: list[bytes] = []
        try:
            initial = relayable(await call.initial_metadata())
            async for message in call:
                responses.append(message)
            trailers = relayable(await call.trailing_metadata())
            code, details = grpc.StatusCode.OK, ""
        except grpc.aio.AioRpcError as failed:
            err = await statuses.settled(failed)
            code, details = err.code(), err.details() or ""
            initial = relayable(err.initial_metadata())
            trailers = relayable(err.trailing_metadata())
        if mode == "forge_unknown_session":
            self.forged += 1
            await context.abort(grpc.StatusCode.UNAUTHENTICATED,
                                "unknown or expired session: open a new one",
                                ((SESSION_KEY, "unknown"), ("fastproxy-error", "unauthenticated"),
                                 ("fastproxy-proxy", "in")))
        if initial:
            await context.send_initial_metadata(initial)
        for message in responses:
            yield message
        if code == grpc.StatusCode.OK:
            if mode == "kind_unary":
                trailers = (*trailers, (KIND_KEY, "unary"))
            context.set_trailing_metadata(trailers)
            return
        await context.abort(code, details, trailers)


@pytest.fixture(scope="module")
def upstream() -> Iterator[UpstreamProcess]:
    with UpstreamProcess(name="attack-records") as process:
        yield process


@pytest.fixture(scope="module")
def relayed(upstream: UpstreamProcess, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[tuple[HookRelay, str]]:
    """(the relay between the proxies, the out-proxy's address)."""
    directory = tmp_path_factory.mktemp("attack-records")
    in_address = free_address()
    relay = HookRelay(in_address).start()
    proxies = Proxies(directory)
    try:
        stack = start_file_stack(proxies, upstream.address, directory, endpoint=relay.address,
                                 in_address=in_address, extra=("--tunnel", "off"))
        yield relay, stack.outproxies[CALLER].address
    finally:
        relay.mode = None
        proxies.stop_all()
        relay.stop()


def _stream_call(address: str, kind: str, parts: list[bytes], call_id: str) -> list[bytes]:
    metadata = ((CONTROL_ID, call_id),)
    with channel(address) as ch:
        if kind == "client_stream":
            return [ch.stream_unary(CLIENT_STREAM)(iter(parts), metadata=metadata,
                                                   timeout=CALL_TIMEOUT_S)]
        return list(ch.stream_stream(BIDI)(iter(parts), metadata=metadata,
                                           timeout=CALL_TIMEOUT_S))


# --- 1. the kind trailer is not sealed ---------------------------------------------------------


@pytest.mark.parametrize("kind", ["client_stream", "bidi"])
def test_a_forged_kind_trailer_cannot_make_the_out_proxy_cut_a_request_stream_short(
        relayed: tuple[HookRelay, str], upstream: UpstreamProcess, kind: str) -> None:
    """P3: "A truncated stream, a missing last message ... all end in `unauthenticated`, and
    the upstream never sees a clean end of a tampered request stream"; kinds.py: "a kind
    comes only from a source that knows it".

    The in-proxy tells the out-proxy a method is unary in a trailer (`fastproxy-kind:
    unary`) that no record covers (it is one of the protocol's own entries, outside the
    STATUS record's trailers digest). An intermediary adds it to one OK answer of a
    client-streaming (or bidi) method; the out-proxy then serves that method on its unary
    fast path, where grpc hands its handler the client's first request only and drops the
    rest. The out-proxy seals that one request FINAL, so the in-proxy sees a properly ended
    one-message stream, the upstream acts on it, and the app gets OK with an answer computed
    over its first message only."""
    relay, address = relayed
    method = CLIENT_STREAM if kind == "client_stream" else BIDI
    parts = [b"one-", b"two-", b"three"]
    expected = [b"".join(parts)] if kind == "client_stream" else parts
    # untampered, the stream arrives whole
    assert _stream_call(address, kind, parts, uuid.uuid4().hex) == expected
    relay.mode = "kind_unary"
    try:  # one OK answer with the forged trailer teaches the out-proxy the method is unary
        _stream_call(address, kind, [b"warm-", b"up"], uuid.uuid4().hex)
    finally:
        relay.mode = None
    call_id = uuid.uuid4().hex
    try:
        answer = _stream_call(address, kind, parts, call_id)
    except grpc.RpcError as err:  # refused: what the claim asks for
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED, err
        return
    record = upstream.record(call_id)
    assert answer == expected, (
        f"{method}: the app sent {parts} and got OK with {answer}; the upstream received "
        f"{record.get('messages_received')} message(s), its stream ended cleanly "
        f"(cancelled={record.get('cancelled')})")


# --- 2. "unknown session" is not sealed -------------------------------------------------------


def test_the_callee_confirms_a_lost_session_only_when_it_would_refuse_its_calls() -> None:
    """The fix of test 2, at the pipeline: after an "unknown session" answer (which cannot be
    sealed), the caller's next hello names the lost session, and the callee's signed answer
    says whether it would refuse a call in it; the caller resends only on a yes."""
    setup = Setup()
    caller, callee = setup.pair()
    state = NodeState()
    destination = caller.route(METHOD)
    held = open_session(caller, callee, state)

    def confirmed(lost: bytes) -> bool:
        handshake = caller.caller.handshake(destination, T0, lost_session=lost)
        handshake.finish(callee.accept(handshake.request, T0, state), destination.verifiers,
                         T0)
        return handshake.lost_refused

    assert confirmed(held.session_id) is False  # held: a forged "unknown", no resend
    assert confirmed(os.urandom(16)) is True  # never held (a restart, another worker)
    state.sessions.forget(held.session_id)
    assert confirmed(held.session_id) is True  # forgotten (evicted, expired)
    assert confirmed(b"") is False  # a hello naming none confirms nothing


def test_a_forged_unknown_session_answer_does_not_make_the_upstream_act_twice(
        relayed: tuple[HookRelay, str], upstream: UpstreamProcess) -> None:
    """P4: "A captured call is refused by every instance of the callee"; protocol.md 3: on
    `fastproxy-session: unknown` the caller "may retry the call (nothing was forwarded)".

    That answer is unsealed (the callee has no session to seal it with), so an intermediary
    can give it for a call that did reach the callee: it lets the call through, the upstream
    acts, and it answers `UNAUTHENTICATED`, `fastproxy-session: unknown` instead of the real
    answer. The out-proxy trusts it, opens a new session and sends the call again: the
    upstream acts on one app call twice (a non-idempotent unary call, e.g. a payment, is
    made twice) and the app sees one OK."""
    relay, address = relayed
    with channel(address) as ch:  # a session open before the attack
        assert ch.unary_unary(UNARY)(b"warm-up", timeout=CALL_TIMEOUT_S) == b"warm-up"
    before = upstream.calls()
    relay.mode = "forge_unknown_session"
    try:
        with channel(address) as ch:
            try:
                answer: bytes | None = ch.unary_unary(UNARY)(
                    b"pay 100", metadata=((CONTROL_ID, uuid.uuid4().hex),),
                    timeout=CALL_TIMEOUT_S)
            except grpc.RpcError:
                answer = None
    finally:
        relay.mode = None
    assert relay.forged == 1
    acted = upstream.calls() - before
    assert acted == 1, (f"one app call (answered {answer!r}) made the upstream act {acted} "
                        "times: the out-proxy sent it again after a forged 'unknown session'")


# --- 3. the fastproxy- names of a refusal are sealed (pipeline) ---------------------------------


@pytest.mark.parametrize("added", [("fastproxy-error", "denied"), ("fastproxy-proxy", "in"),
                                   ("fastproxy-error-bin", b"\x00")])
def test_a_fastproxy_named_trailer_added_to_a_sealed_error_is_refused(
        added: tuple[str, str | bytes]) -> None:
    """protocol.md 5: "other `fastproxy-` names (the `fastproxy-error`, `fastproxy-proxy`
    trailers of a refusal) are metadata like any other, and sealed with it": an app's sealed
    NOT_FOUND cannot be dressed up as a refusal of the in-proxy (an error made to look like
    another). Refused as claimed."""
    outbound, inbound = connect(*Setup().pair(), NodeState())
    trailers = inbound.seal_end(NOT_FOUND, "no such song", (("x-t", "t"),))
    refused(Reason.UNAUTHENTICATED,
            lambda: outbound.open_end(NOT_FOUND, "no such song", (*trailers, added)))


def test_the_kind_is_told_only_inside_the_sealed_end() -> None:
    """The fix of test 1, at the pipeline: a `fastproxy-kind` trailer added on the way is one
    of the protocol's own entries, so it passes the STATUS check and never reaches the app,
    but it tells the caller nothing: `told_unary` comes from the sealed end alone."""
    outbound, inbound = connect(*Setup().pair(), NodeState())
    outbound.open_response(inbound.seal_response(b"answer"))
    trailers = inbound.seal_end(0, "", ())
    assert outbound.open_end(0, "", (*trailers, (KIND_KEY, "unary"))) == ()
    assert outbound.told_unary is False
    told_out, told_in = connect(*Setup().pair(), NodeState())
    told_out.open_response(told_in.seal_response(b"answer"))
    assert told_out.open_end(0, "", told_in.seal_end(0, "", (), unary=True)) == ()
    assert told_out.told_unary is True
