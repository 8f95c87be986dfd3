"""Sessions of protocol version 2 between the proxies (docs/protocol.md, section 3).

`SessionBook` is the out-proxy's: one session per (channel, destination), opened with a
`/fastproxy.v1.Session/Open` call on the very channel the calls will use, so that calls reach
the instance that holds the session even behind `--workers` (SO_REUSEPORT hands each
connection to one process). Concurrent calls wait for one handshake. `SessionService` is the
in-proxy's end of the handshake.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from fastproxy.hosting.refusal import STATUS_OF_REASON, HostRole, refusal_trailers
from fastproxy.node.holder import PolicyHolder
from fastproxy.pipeline.handshake import CallerSession
from fastproxy.pipeline.node_policy import NodePolicy, NodeState
from fastproxy.pipeline.reasons import FastProxyError, Reason
from fastproxy.pipeline.records import carry, uncarry
from fastproxy.pipeline.stages import Destination

_log = logging.getLogger("fastproxy.proxy")

OPEN_METHOD = "/fastproxy.v1.Session/Open"
HANDSHAKE_TIMEOUT_S = 5.0
MAX_HELLO_BYTES = 16 * 1024


class SessionBook:
    """The out-proxy's sessions, by (channel, destination service)."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._sessions: dict[tuple[int, str], CallerSession] = {}
        self._opening: dict[tuple[int, str], asyncio.Future[CallerSession]] = {}
        self.handshakes = 0

    async def session(self, policy: NodePolicy, destination: Destination,
                      channel: grpc.aio.Channel, timeout: float | None) -> CallerSession:
        key = (id(channel), destination.name)
        session = self._sessions.get(key)
        now = self._clock()
        if session is not None and policy.caller.serves(session, destination, now):
            return session
        opening = self._opening.get(key)
        if opening is None:
            opening = asyncio.ensure_future(self._open(policy, destination, channel, timeout))
            self._opening[key] = opening
            opening.add_done_callback(lambda _done: self._opening.pop(key, None))
        session = await asyncio.shield(opening)
        self._sessions[key] = session
        return session

    def forget(self, channel: grpc.aio.Channel, session: CallerSession) -> None:
        """The callee no longer knows `session`: the next call opens a new one."""
        key = (id(channel), session.callee)
        if self._sessions.get(key) is session:
            del self._sessions[key]

    async def _open(self, policy: NodePolicy, destination: Destination,
                    channel: grpc.aio.Channel, timeout: float | None) -> CallerSession:
        handshake = policy.caller.handshake(destination, self._clock())
        limit = HANDSHAKE_TIMEOUT_S if timeout is None else min(timeout, HANDSHAKE_TIMEOUT_S)
        try:
            answer = await channel.unary_unary(OPEN_METHOD, None, None)(
                carry(handshake.request), timeout=limit)
        except grpc.aio.AioRpcError as failed:
            raise _handshake_failed(destination.name, failed) from None
        self.handshakes += 1
        return handshake.finish(uncarry(answer, MAX_HELLO_BYTES), destination.verifiers,
                                self._clock())


def _handshake_failed(callee: str, failed: grpc.aio.AioRpcError) -> FastProxyError:
    code = failed.code()
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return FastProxyError(Reason.UNAUTHENTICATED,
                              f"{callee} refused the session: {failed.details()}")
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return FastProxyError(Reason.DEADLINE, f"no session with {callee} in time")
    return FastProxyError(Reason.UNAVAILABLE,
                          f"no session with {callee} ({code.name}: {failed.details()})")


class SessionService(grpc.GenericRpcHandler):
    """The in-proxy's end of `Session/Open` (register it before the forwarding handler). Any
    RPC kind is answered, so a caller may send the hello through whatever stub it has."""

    def __init__(self, holder: PolicyHolder[NodePolicy], state: NodeState,
                 clock: Callable[[], float] = time.time) -> None:
        self._holder = holder
        self._state = state
        self._clock = clock
        self._handler = grpc.stream_stream_rpc_method_handler(self._open)

    def service(self, handler_call_details: grpc.HandlerCallDetails
                ) -> grpc.RpcMethodHandler | None:
        return self._handler if handler_call_details.method == OPEN_METHOD else None

    async def _open(self, requests: AsyncIterator[bytes],
                    context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        answer = await answer_hello(self._holder, self._state, requests, self._clock())
        if isinstance(answer, FastProxyError):
            _log.info("session refused to %s: %s", context.peer(), answer.detail)
            await context.abort(STATUS_OF_REASON[answer.reason], answer.detail,
                                refusal_trailers(answer, HostRole.IN))
            return
        yield answer


async def answer_hello(holder: PolicyHolder[NodePolicy], state: NodeState,
                       requests: AsyncIterator[bytes], now: float) -> bytes | FastProxyError:
    """The carrier answering the first message of `requests` (a hello), or the refusal."""
    try:
        hello: Any = None
        async for message in requests:
            if hello is None:
                hello = message
        if hello is None:
            raise FastProxyError(Reason.UNAUTHENTICATED, "handshake refused: no hello")
        answer = holder.require().accept(uncarry(hello, MAX_HELLO_BYTES), now, state)
    except FastProxyError as refused:
        return refused
    return carry(answer)
