"""Sessions of protocol version 2 between the proxies (docs/protocol.md, section 3).

`SessionBook` is the out-proxy's: one session per (channel, destination), opened with a
`/fastproxy.v1.Session/Open` call on the very channel the calls will use, so that calls reach
the instance that holds the session even behind `--workers` (SO_REUSEPORT hands each
connection to one process). Concurrent calls wait for one handshake. `SessionService` is the
in-proxy's end of the handshake. The hello travels in the request metadata
(`fastproxy-hello-bin`) and the answer in the trailers, around one empty message each way,
so that any stub of the app's (any message class, any RPC kind) can carry a handshake.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import grpc

from fastproxy.hosting.refusal import HostRole, handshake_failure, refuse
from fastproxy.node.holder import PolicyHolder
from fastproxy.pipeline.handshake import OPEN_METHOD, CallerHandshake, CallerSession
from fastproxy.pipeline.metadata import HELLO_KEY, hello_of
from fastproxy.pipeline.node_policy import NodePolicy, NodeState
from fastproxy.pipeline.reasons import FastProxyError
from fastproxy.pipeline.stages import Destination

HANDSHAKE_TIMEOUT_S = 5.0


class SessionBook:
    """The out-proxy's sessions, by (channel, destination service). A session that is due
    (docs/protocol.md, 3: limits and rekeying) keeps serving while the next one opens aside,
    and `warm` opens one aside before calls need it (on a tunnel's connection while the
    tunnel opens): a call waits for a handshake only when there is no usable session.

    Sessions are not opened when a policy arrives: a connection attempt to an in-proxy that is
    not up yet would put the channel in grpc's reconnect backoff, and calls made in the
    second after it comes up would fail fast."""

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
            if session.due(now):
                self._opened(key, policy, destination, channel, None)
            return session
        return await asyncio.shield(self._opened(key, policy, destination, channel, timeout))

    def warm(self, policy: NodePolicy, destination: Destination,
             channel: grpc.aio.Channel) -> None:
        """Opens a session with `destination` on `channel` aside, unless one serves or is
        opening. A failure is left for the next call to meet (and report)."""
        key = (id(channel), destination.name)
        session = self._sessions.get(key)
        now = self._clock()
        if session is None or not policy.caller.serves(session, destination, now) \
                or session.due(now):
            self._opened(key, policy, destination, channel, None)

    def forget(self, channel: grpc.aio.Channel, session: CallerSession) -> None:
        """The callee no longer knows `session`: the next call opens a new one."""
        key = (id(channel), session.callee)
        if self._sessions.get(key) is session:
            del self._sessions[key]

    def _opened(self, key: tuple[int, str], policy: NodePolicy, destination: Destination,
                channel: grpc.aio.Channel, timeout: float | None
                ) -> asyncio.Future[CallerSession]:
        """The handshake opening `key`'s next session: the one under way, or a new one. Its
        session replaces the book's when it succeeds."""
        opening = self._opening.get(key)
        if opening is None:
            opening = asyncio.ensure_future(self._open(policy, destination, channel, timeout))
            self._opening[key] = opening

            def done(finished: asyncio.Future[CallerSession]) -> None:
                self._opening.pop(key, None)
                if not finished.cancelled() and finished.exception() is None:
                    self._sessions[key] = finished.result()
            opening.add_done_callback(done)
        return opening

    async def confirm_lost(self, policy: NodePolicy, destination: Destination,
                           channel: grpc.aio.Channel, lost: CallerSession,
                           timeout: float | None) -> bool:
        """After the callee answered "unknown session" for a call in `lost` (an answer it
        cannot seal, so a relay could forge it after the call was forwarded): opens the next
        session with a hello naming `lost`; True when the callee's signed answer says it
        would refuse a call in `lost`, so the call was not forwarded and may be sent again
        (in the new session, which the book keeps either way)."""
        handshake = policy.caller.handshake(destination, self._clock(),
                                            lost_session=lost.session_id)
        self._sessions[(id(channel), destination.name)] = await self._exchange(
            policy, handshake, destination, channel, timeout)
        return handshake.lost_refused

    async def _open(self, policy: NodePolicy, destination: Destination,
                    channel: grpc.aio.Channel, timeout: float | None) -> CallerSession:
        return await self._exchange(policy, policy.caller.handshake(destination, self._clock()),
                                    destination, channel, timeout)

    async def _exchange(self, policy: NodePolicy, handshake: CallerHandshake,
                        destination: Destination, channel: grpc.aio.Channel,
                        timeout: float | None) -> CallerSession:
        limit = HANDSHAKE_TIMEOUT_S if timeout is None else min(timeout, HANDSHAKE_TIMEOUT_S)
        call = channel.unary_unary(OPEN_METHOD, None, None)(
            b"", metadata=((HELLO_KEY, handshake.request),), timeout=limit)
        # the next handshake's key, made while this one waits for its answer
        asyncio.get_running_loop().call_soon(policy.caller.spare.refill)
        try:
            await call
            answer = hello_of(await call.trailing_metadata())
        except grpc.aio.AioRpcError as failed:
            raise handshake_failure(destination.name, failed.code(), failed.details()) from None
        self.handshakes += 1
        return handshake.finish(answer, destination.verifiers, self._clock())


class SessionService(grpc.GenericRpcHandler):
    """The in-proxy's end of `Session/Open` (register it before the forwarding handler).
    Requests come as a stream (none or one) and one answer is sent, so a caller may send
    the hello through whatever stub it has; that costs about what a unary call costs (a
    stream-stream handler cost 0.3 ms more per handshake). The request stream is not read:
    a message the caller's stub sent says nothing, and waiting for it and for the
    half-close cost 0.15 ms per handshake (docs/benchmarks.md)."""

    def __init__(self, service: str, holder: PolicyHolder[NodePolicy], state: NodeState,
                 clock: Callable[[], float] = time.time) -> None:
        self._service = service
        self._holder = holder
        self._state = state
        self._clock = clock
        self._handler = grpc.stream_unary_rpc_method_handler(self._open)

    def service(self, handler_call_details: grpc.HandlerCallDetails
                ) -> grpc.RpcMethodHandler | None:
        return self._handler if handler_call_details.method == OPEN_METHOD else None

    async def _open(self, requests: AsyncIterator[bytes],
                    context: grpc.aio.ServicerContext) -> bytes:
        try:
            hello = hello_of(context.invocation_metadata())
            # the key agreement and the next answer's key once the answer is on its way
            answer = self._holder.require().accept(hello, self._clock(), self._state,
                                                   asyncio.get_running_loop().call_soon)
        except FastProxyError as refused:  # one audit line, as for a refused call
            policy = self._holder.current
            refusal = refuse(refused, HostRole.IN, service=self._service, other="",
                             method=OPEN_METHOD,
                             revision=policy.revision if policy is not None else 0,
                             peer=context.peer() or "")
            await context.abort(refusal.code, refusal.details, refusal.trailers)
        context.set_trailing_metadata(((HELLO_KEY, answer),))
        return b""
