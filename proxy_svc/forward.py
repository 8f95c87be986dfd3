"""The transparent forwarding handler: every method of every service, raw bytes both ways.

One handler serves both roles. What differs between the out-proxy and the in-proxy is the
`CallPlan` its `Role` makes for each call (`proxy_svc.plan`): the parties, where the call
goes, its deadline cap, the metadata the pipeline adds, and what happens to each request and
response message (seal or open).

Every RPC kind is a stream of length-prefixed messages on the wire, and the proxy cannot tell
the kind from a method name, so a call is forwarded as stream-stream unless its method is
known to be unary: the upstream call is `channel.stream_stream(method)` fed by the client's
request stream, and its responses are written back one by one. A unary or client-streaming
upstream answers one message, a server-streaming one many; the client sees the same messages,
metadata, status and trailers as from the upstream directly.

A call of a method whose kind is not known (an upstream without server reflection) whose
client sent one request and half-closed (`_peek`: the end follows the request at once, as
from every unary and server-streaming client) takes the single-request path (`_single`):
the upstream call is `unary_stream` (request and half-close in one batch; any number of
responses, whatever the method's kind), carried on the tunnel as an `any_kind` call where
one is open (`proxy_svc.tunnel`). Calls that stream requests take the stream path. A method
seen streaming (two requests, or two responses on the single-request path) is known to
stream (`KindExchange.streams`) and takes the stream path at once from then on.

The unary fast path: a method known to be unary (`proxy_svc.kinds`) is served by a unary
handler with a `unary_unary` upstream call, which sends message and half-close in one batch
and needs no generators. Measured on the 2-core box (pass-through, 100-byte unary calls, 32
in flight, CPU of the proxy process per call): stream path about 0.75 ms, unary path about
0.49 ms; sealed hop with h2load, 1 KiB: 1.20 -> 0.78 ms (docs/benchmarks.md). The out-proxy
carries fast-path calls over a tunnel when one is open (`proxy_svc.tunnel`); the in-proxy
serves each carried call through the same `_unary`, with a context that stands in for grpc's.

Both paths admit a call the same way (`_admit`: plan, endpoint, telemetry, kind, deadline,
metadata) and end a failed one the same way (`_pass_failure`, `_refuse`). Upstream failures:
UNAVAILABLE while the channel is not READY is the transport's and becomes our `unavailable`;
DEADLINE_EXCEEDED once the timeout we set has run out is our `deadline`; every other status
(including an app's own UNAVAILABLE) passes through unchanged.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import grpc

from fastproxy.hosting.drain import drain
from fastproxy.hosting.refusal import HostRole, refuse
from fastproxy.pipeline.metadata import SESSION_KEY, Metadata, forwarded_response_metadata
from fastproxy.pipeline.reasons import FastProxyError, Reason
from fastproxy.pipeline.records import DATA, FINAL, uncarry
from fastproxy.pipeline.stages import UNKNOWN_SESSION
from proxy_svc.kinds import KindExchange, MethodKinds
from proxy_svc.observe import CallObserver, CallRecord
from proxy_svc.plan import CallPlan, Role
from proxy_svc.tunnel import MAX_REQUEST_BYTES, CarriedCallContext, TunnelBroken, TunnelCall
from proxy_svc.upstream import StatusLog, UpstreamPool

# grpc's sync server reports ~9.2e18 s remaining for "no deadline"; anything this large is none.
_log = logging.getLogger("proxy_svc.forward")
_NO_DEADLINE_ABOVE_S = 1e8
# The deadline timer fires at or after the deadline we computed; allow for clock granularity.
_DEADLINE_SLACK_S = 0.002
# A cancelled call this close to its deadline was ended by it (the client's timer fires and
# resets the stream a little before ours would: the deadline crossed the wire).
_DEADLINE_NEAR_S = 0.05
# After a call's first request, how long its end (the client's half-close) may take to show
# for the call to take the single-request path: a unary or server-streaming client sends
# both at once, so its end is there as soon as grpc hands it over.
EOF_WAIT_S = 0.005


async def _no_requests() -> AsyncIterator[bytes]:
    return
    yield b""  # pragma: no cover - makes this an (empty) async generator


async def _only(message: bytes) -> AsyncIterator[bytes]:
    yield message


def _final_data(message: bytes) -> bool:
    """Whether a sealed request is a DATA record flagged FINAL (read from its clear header:
    only a routing hint, opening it checks the header)."""
    try:
        record = uncarry(message, len(message))
    except FastProxyError:
        return False
    return len(record) > 3 and record[1] == DATA and bool(record[2] & FINAL)


def call_timeout(remaining_s: float | None, cap_ms: int | None) -> float | None:
    """The upstream's timeout: what the client has left, capped by the service's timeout."""
    if remaining_s is not None and remaining_s > _NO_DEADLINE_ABOVE_S:
        remaining_s = None
    cap_s = cap_ms / 1000 if cap_ms else None
    if remaining_s is None:
        return cap_s
    remaining_s = max(remaining_s, 0.0)
    return remaining_s if cap_s is None else min(remaining_s, cap_s)


@dataclass(slots=True)
class _Admitted:
    """A call the role admitted, ready to go upstream."""

    plan: CallPlan
    timeout: float | None
    metadata: Metadata  # what the upstream call sends
    asked: bool  # the caller asked to be told the method's kind
    started: float = 0.0  # monotonic time the upstream call started
    head_done: bool = False  # the upstream's headers were handled (and sent, if any)


class _RequestPump:
    """Feeds the client's messages, transformed, to the upstream call, then what the plan
    sends once the client half-closed, keeping a pipeline error for the handler (grpc would
    swallow it and only cancel the upstream call, which is what a tampered stream needs:
    the upstream never sees it end cleanly)."""

    __slots__ = ("_plan", "_requests", "error")

    def __init__(self, requests: AsyncIterator[bytes], plan: CallPlan) -> None:
        self._requests = requests
        self._plan = plan
        self.error: FastProxyError | None = None

    async def messages(self) -> AsyncIterator[bytes]:
        try:
            async for message in self._requests:
                forwarded = self._plan.request(message)
                if forwarded is not None:
                    yield forwarded
            last = self._plan.requests_done()
            if last is not None:
                yield last
        except FastProxyError as err:
            self.error = err
            raise


def _lost_session(failed: grpc.aio.AioRpcError) -> bool:
    """The callee answered that it does not know the call's session (docs/protocol.md, 3)."""
    return (failed.code() == grpc.StatusCode.UNAUTHENTICATED
            and (SESSION_KEY, UNKNOWN_SESSION) in tuple(failed.trailing_metadata() or ()))


_RETRY = object()  # the callee lost the session: open a new one and send the call again


class ForwardingHandler(grpc.GenericRpcHandler):
    """Takes every method; register it after any service of the proxy's own (health,
    sessions, tunnel).

    A method in `kinds.unary` is served on the unary fast path (`_unary`), every other one on
    the stream path (`_forward`). `exchange` is what this side does about kinds (the in-proxy
    tells them, the out-proxy learns them: `proxy_svc.kinds`)."""

    def __init__(self, side: Role, pool: UpstreamPool,
                 clock: Callable[[], float] = time.time,
                 observer: CallObserver | None = None,
                 exchange: KindExchange | None = None) -> None:
        self._side = side
        self._pool = pool
        self._clock = clock
        self._exchange = exchange if exchange is not None else KindExchange()
        # Audit lines always; spans and metrics only when `observer.active` (decided once
        # here, so with telemetry off a call does no telemetry work at all).
        self._observer = observer or CallObserver(side.role, "")
        self._handle = self._forward_observed if self._observer.active else self._forward
        self._handle_unary = self._unary_observed if self._observer.active else self._unary
        self._handle_any = self._any_observed if self._observer.active else self._carried_any
        self._unary_handlers: dict[str, grpc.RpcMethodHandler] = {}
        self._callables: dict[tuple[int, str, bool], Any] = {}
        # the out-proxy seals the one request of a single-request call FINAL itself; the
        # in-proxy takes that path only for a request so sealed, and checks its end
        self._seals_final = side.role is HostRole.OUT

    @property
    def kinds(self) -> MethodKinds:
        return self._exchange.kinds

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        method: str = handler_call_details.method
        if method in self._exchange.kinds.unary:
            handler = self._unary_handlers.get(method)
            if handler is None:
                handler = grpc.unary_unary_rpc_method_handler(
                    functools.partial(self._handle_unary, method))
                self._unary_handlers[method] = handler
            return handler
        return grpc.stream_stream_rpc_method_handler(
            functools.partial(self._handle, method))

    # --- with telemetry: a record around the call -------------------------------------

    async def _forward_observed(self, method: str, requests: AsyncIterator[bytes],
                                context: grpc.aio.ServicerContext) -> None:
        metadata: Metadata = tuple(context.invocation_metadata() or ())
        record = self._observer.begin(method, metadata, context.peer())
        try:
            await self._forward(method, requests, context, record, metadata)
        finally:
            self._observer.end(record, method)

    async def _unary_observed(self, method: str, request: bytes,
                              context: grpc.aio.ServicerContext) -> bytes | None:
        metadata: Metadata = tuple(context.invocation_metadata() or ())
        record = self._observer.begin(method, metadata, context.peer())
        try:
            return await self._unary(method, request, context, record, metadata)
        finally:
            self._observer.end(record, method)

    async def _any_observed(self, method: str, request: bytes,
                            context: CarriedCallContext) -> bytes | None:
        metadata: Metadata = tuple(context.invocation_metadata() or ())
        record = self._observer.begin(method, metadata, context.peer())
        try:
            await self._single(method, request, context, record, metadata)
            return None
        finally:
            self._observer.end(record, method)

    async def serve_carried(self, method: str, request: bytes,
                            context: CarriedCallContext) -> bytes | None:
        """A call a tunnel carried to this in-proxy, with the tunnel's context: the fast path,
        or for an `any_kind` call of a method not known unary the single-request path."""
        if context.any_kind and method not in self._exchange.kinds.unary:
            return await self._handle_any(method, request, context)
        return await self._handle_unary(method, request, context)

    async def _carried_any(self, method: str, request: bytes,
                           context: CarriedCallContext) -> bytes | None:
        """An `any_kind` carried call: its responses go back one at a time in `response`
        frames (the context holds the last for the reply)."""
        await self._single(method, request, context, None,
                           tuple(context.invocation_metadata() or ()))
        return None

    # --- the two paths -------------------------------------------------------------------

    async def _admit(self, method: str, metadata: Metadata, context: Any,
                     record: CallRecord | None, *, single: bool, carry: bool) -> _Admitted:
        """The role's plan for the call, its deadline and upstream metadata; raises
        `FastProxyError` when the call is refused."""
        asked = self._exchange.asked(metadata)
        if record is not None and record.forward_metadata is not None:
            metadata = record.forward_metadata
        timeout_left = context.time_remaining()
        plan = await self._side.begin(method, metadata, self._clock(), single=single,
                                      carry=carry, remaining_s=timeout_left)
        if plan.would_deny:
            self._observer.would_deny(record, plan, method, context.peer())
        if record is not None:
            plan = self._observer.admitted(record, plan)
        self._exchange.consider(method)
        return _Admitted(plan, call_timeout(timeout_left, plan.timeout_ms),
                         plan.metadata + self._exchange.request_entries, asked)

    def _start(self, method: str, call: _Admitted, message: bytes, *,
               any_kind: bool = False) -> Any:
        """The upstream call of the fast path (`any_kind` False: a known unary method) or of
        the single-request path (True: any number of responses): on the endpoint's tunnel
        when one is open, else a call of its own (`unary_unary` or `unary_stream`)."""
        call.started = time.monotonic()
        plan = call.plan
        if plan.link is not None:
            carried = plan.link.call(method, message, call.timeout, call.metadata,
                                     any_kind=any_kind)
            if carried is not None:
                return carried
        channel = plan.channel or self._pool.channel(plan.endpoint)
        key = (id(channel), method, any_kind)
        upstream = self._callables.get(key)
        if upstream is None:
            make = channel.unary_stream if any_kind else channel.unary_unary
            upstream = make(method, None, None)
            self._callables[key] = upstream
        return upstream(message, timeout=call.timeout, metadata=call.metadata)

    async def _unary(self, method: str, request: bytes, context: grpc.aio.ServicerContext,
                     record: CallRecord | None = None,
                     metadata: Metadata | None = None) -> bytes | None:
        """The fast path: the same stages as `_forward`, one message each way. `context` is
        grpc's, or a `CarriedCallContext` for a call a tunnel carried; `metadata` its
        invocation metadata when the caller already read it. A call whose session the
        callee lost is sent once more, in a new session (nothing was forwarded)."""
        if metadata is None:
            metadata = tuple(context.invocation_metadata() or ())
        carry = len(request) <= MAX_REQUEST_BYTES
        answer = await self._unary_once(method, request, context, record, metadata, carry,
                                        retry=True)
        if answer is _RETRY:
            answer = await self._unary_once(method, request, context, record, metadata, carry,
                                            retry=False)
        return answer  # type: ignore[return-value]

    async def _unary_once(self, method: str, request: bytes, context: Any,
                          record: CallRecord | None, metadata: Metadata, carry: bool,
                          retry: bool) -> bytes | object | None:
        admitted: _Admitted | None = None
        try:
            admitted = await self._admit(method, metadata, context, record, single=True,
                                         carry=carry)
            message = admitted.plan.request(request)
        except FastProxyError as err:
            await self._refuse(context, method, err, record, admitted)
            return None
        assert message is not None
        call = self._start(method, admitted, message)
        try:
            response = await call
            initial = forwarded_response_metadata(await call.initial_metadata())
            trailers = forwarded_response_metadata(await call.trailing_metadata())
        except grpc.aio.AioRpcError as failed:
            if retry and self._forget_lost_session(admitted.plan, failed):
                resend = await self._resend_lost(method, admitted, context, record)
                return _RETRY if resend else None
            self._exchange.failed(method, failed.code())
            await self._pass_failure(context, method, admitted, failed, record)
            return None
        except asyncio.CancelledError:
            # Our client went away (cancel or its deadline): so does the upstream call.
            call.cancel()
            remaining = context.time_remaining()
            if remaining is not None and remaining <= _DEADLINE_NEAR_S:
                self._exchange.ran_out_of_time(method, "the client's deadline ran out")
            raise
        self._pool.health.record_success(admitted.plan.endpoint)
        try:
            initial = admitted.plan.head(initial)
            answer = admitted.plan.response(response)
            trailers = self._trailers(method, admitted, grpc.StatusCode.OK, "", trailers,
                                      fast=True)
        except FastProxyError as err:
            await self._refuse(context, method, err, record, admitted)
            return None
        if initial:
            await context.send_initial_metadata(initial)
        if trailers:
            context.set_trailing_metadata(trailers)
        if record is not None:
            record.code = grpc.StatusCode.OK
        return answer

    async def _peek(self, method: str, requests: AsyncIterator[bytes],
                    context: grpc.aio.ServicerContext
                    ) -> tuple[bytes | None, AsyncIterator[bytes] | None]:
        """The call's first request, with None when the client half-closed right after it
        (the single-request path), else the requests to forward (the first one again).
        Reads with `context.read()` (what grpc's request iterator does, one layer less);
        `requests` goes on from there."""
        first = await context.read()
        if first is grpc.aio.EOF:
            return None, _no_requests()
        loop = asyncio.get_running_loop()
        second: asyncio.Future[Any] = loop.create_task(context.read())
        if not second.done():
            # Waits up to EOF_WAIT_S for the second read (asyncio.wait's work, less of it:
            # one future, one timer, one callback).
            waiter = loop.create_future()

            def release(_: object = None) -> None:
                if not waiter.done():
                    waiter.set_result(None)

            timer = loop.call_later(EOF_WAIT_S, release)
            second.add_done_callback(release)
            try:
                await waiter
            except asyncio.CancelledError:
                second.cancel()
                raise
            finally:
                timer.cancel()
                second.remove_done_callback(release)
        if second.done() and not second.cancelled() and second.exception() is None \
                and second.result() is grpc.aio.EOF:
            return first, None
        return first, self._replay(method, first, second, requests)

    async def _replay(self, method: str, first: bytes, second: asyncio.Future[Any],
                      rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """The requests again, from the first; a second one shows the method streams."""
        try:
            yield first
            message = await second
            if message is grpc.aio.EOF:
                return
            self._exchange.streams(method, "a call sent two requests")
            yield message
            async for message in rest:
                yield message
        finally:
            if not second.done():
                second.cancel()

    async def _forward(self, method: str, requests: AsyncIterator[bytes],
                       context: grpc.aio.ServicerContext,
                       record: CallRecord | None = None,
                       metadata: Metadata | None = None) -> None:
        """A call on a stream handler (grpc's reader/writer form: responses go out with
        `context.write`, no generator between grpc and the upstream call): the
        single-request path when the client sent one request and half-closed, else the
        stream path (at once for a method known to stream)."""
        if metadata is None:
            metadata = tuple(context.invocation_metadata() or ())
        if method not in self._exchange.kinds.streaming:
            first, replay = await self._peek(method, requests, context)
            if replay is None:
                assert first is not None
                if self._seals_final or _final_data(first):
                    await self._single(method, first, context, record, metadata)
                    return
                replay = _only(first)
            requests = replay
        await self._stream(method, requests, context, record, metadata)

    async def _stream(self, method: str, requests: AsyncIterator[bytes],
                      context: grpc.aio.ServicerContext, record: CallRecord | None,
                      metadata: Metadata) -> None:
        """The stream path: a `stream_stream` upstream call fed by the client's requests."""
        try:
            admitted = await self._admit(method, metadata, context, record, single=False,
                                         carry=False)
        except FastProxyError as err:
            await drain(requests)
            await self._refuse(context, method, err, record)
            return
        plan = admitted.plan
        pump = _RequestPump(requests, plan)
        admitted.started = time.monotonic()
        channel = plan.channel or self._pool.channel(plan.endpoint)
        call = channel.stream_stream(method, None, None)(
            pump.messages(), timeout=admitted.timeout, metadata=admitted.metadata)
        statuses = StatusLog(call)
        try:
            await self._responses(method, call, context, admitted, record)
        except grpc.aio.AioRpcError as failed:
            await self._stream_failed(context, method, requests, admitted, pump,
                                      await statuses.settled(failed), record)
        except FastProxyError as err:
            call.cancel()
            await self._refuse(context, method, err, record, admitted)
        except asyncio.CancelledError:
            if pump.error is not None:
                # grpc cancelled the upstream call when our request transform raised.
                await self._refuse(context, method, pump.error, record, admitted)
            # Our client went away (cancel or its deadline): so does the upstream call.
            call.cancel()
            raise
        finally:
            # Any exit other than a finished call.
            if not call.done():
                call.cancel()

    async def _single(self, method: str, first: bytes, context: Any,
                      record: CallRecord | None, metadata: Metadata) -> None:
        """The single-request path: the one request sent with the half-close, any number of
        responses back, each written to `context` (grpc's or a `CarriedCallContext`). A call
        whose session the callee lost before any answer is sent once more, in a new
        session."""
        for retry in (True, False):
            admitted = await self._single_admitted(method, first, context, record, metadata)
            if admitted is None:
                return
            if not await self._single_once(method, admitted, context, record, retry):
                return

    async def _single_admitted(self, method: str, first: bytes, context: Any,
                               record: CallRecord | None, metadata: Metadata
                               ) -> tuple[_Admitted, bytes] | None:
        """The admitted call and its request as it goes upstream; None once refused."""
        admitted: _Admitted | None = None
        try:
            admitted = await self._admit(
                method, metadata, context, record, single=self._seals_final,
                carry=self._seals_final and len(first) <= MAX_REQUEST_BYTES)
            message = admitted.plan.request(first)
            admitted.plan.requests_done()  # None here, or a refusal if not sealed FINAL
            if message is None:  # an END record alone: not what the path was chosen for
                raise FastProxyError(Reason.UNAUTHENTICATED, "no request before the end")
        except FastProxyError as err:
            await self._refuse(context, method, err, record, admitted)
            return None
        return admitted, message

    async def _single_once(self, method: str, admitted_call: tuple[_Admitted, bytes],
                           context: Any, record: CallRecord | None, retry: bool) -> bool:
        """One attempt of `_single`; True when the callee lost the session before
        answering (nothing was forwarded: the call may be sent again)."""
        admitted, message = admitted_call
        plan = admitted.plan
        call = self._start(method, admitted, message, any_kind=True)
        statuses = None if isinstance(call, TunnelCall) else StatusLog(call)
        answered = 0
        try:
            response = await call.read()
            initial = plan.head(forwarded_response_metadata(await call.initial_metadata()))
            admitted.head_done = True
            if initial:
                await context.send_initial_metadata(initial)
            while response is not grpc.aio.EOF:
                answered += 1
                await context.write(plan.response(response))
                response = await call.read()
            upstream_trailers = forwarded_response_metadata(await call.trailing_metadata())
        except grpc.aio.AioRpcError as failed:
            if statuses is not None:
                failed = await statuses.settled(failed)
            if retry and not admitted.head_done and self._forget_lost_session(plan, failed):
                return await self._resend_lost(method, admitted, context, record)
            await self._pass_failure(context, method, admitted, failed, record)
            return False
        except FastProxyError as err:
            call.cancel()
            await self._refuse(context, method, err, record, admitted)
            return False
        finally:
            if not call.done():
                call.cancel()  # our client went away, or any exit before the end
        if answered > 1:
            self._exchange.streams(method, "a call answered more than once")
        self._pool.health.record_success(plan.endpoint)
        try:
            trailers = self._trailers(method, admitted, grpc.StatusCode.OK, "",
                                      upstream_trailers, fast=False)
        except FastProxyError as err:
            await self._refuse(context, method, err, record, admitted)
            return False
        if trailers:
            context.set_trailing_metadata(trailers)
        if record is not None:
            record.code = grpc.StatusCode.OK
        return False

    async def _responses(self, method: str, call: Any, context: grpc.aio.ServicerContext,
                         admitted: _Admitted, record: CallRecord | None) -> None:
        """The upstream's headers and responses, transformed and written to our client,
        then its trailers once the stream ended OK; raises what the upstream call or the
        plan raise."""
        plan = admitted.plan
        initial = plan.head(forwarded_response_metadata(await call.initial_metadata()))
        admitted.head_done = True
        if initial:
            await context.send_initial_metadata(initial)
        write = context.write
        async for message in call:
            await write(plan.response(message))
        # The stream ended OK: the status is in.
        self._pool.health.record_success(plan.endpoint)
        trailers = self._trailers(method, admitted, grpc.StatusCode.OK, "",
                                  forwarded_response_metadata(await call.trailing_metadata()),
                                  fast=False)
        if trailers:
            context.set_trailing_metadata(trailers)
        if record is not None:
            record.code = grpc.StatusCode.OK

    def _trailers(self, method: str, call: _Admitted, code: grpc.StatusCode, details: str,
                  trailers: Metadata, *, fast: bool) -> Metadata:
        """The trailers our client receives for a call that ended with `code`: the kind
        exchange done, the end sealed (in-proxy) or checked (out-proxy)."""
        # The in-proxy tells an out-proxy that asked whether the method is unary inside the
        # sealed STATUS record; the out-proxy learns it only from there, once it opened.
        ended = call.plan.end(code.value[0], details, self._exchange.strip(trailers),
                              self._exchange.told(method, call.asked))
        self._exchange.settle(method, call.plan.told_unary(), fast=fast)
        return ended

    # --- how a call that did not end OK ends ----------------------------------------------

    async def _resend_lost(self, method: str, admitted: _Admitted, context: Any,
                           record: CallRecord | None) -> bool:
        """True when a call whose session the callee lost may be sent again; else the call
        was refused here."""
        refusal = await self._lost_unconfirmed(method, admitted.plan, context)
        if refusal is None:
            return True
        await self._refuse(context, method, refusal, record, admitted)
        return False

    async def _lost_unconfirmed(self, method: str, plan: CallPlan,
                                context: Any) -> FastProxyError | None:
        """None when the callee confirms, in the signed answer to the next handshake, that
        it would refuse a call in the lost session (the call was not forwarded: it may be
        sent again); else why the call ends here. The "unknown session" answer itself is
        not sealed: a relay could forge it after the upstream acted on the call."""
        confirm = getattr(self._side, "confirm_lost", None)
        if confirm is None or plan.outbound is None or plan.channel is None:
            return FastProxyError(Reason.UNAVAILABLE, "the in-proxy no longer knows this "
                                                      "call's session: try again")
        try:
            if await confirm(method, plan.channel, plan.outbound.session,
                             context.time_remaining()):
                return None
        except FastProxyError as err:
            return err
        return FastProxyError(Reason.UNAUTHENTICATED,
                              "an answer that the in-proxy lost this call's session was not "
                              "the in-proxy's (its signed answer says it holds the session): "
                              "changed on the way")

    def _forget_lost_session(self, plan: CallPlan, failed: grpc.aio.AioRpcError) -> bool:
        """True when the callee lost the call's session (which is then forgotten)."""
        if plan.outbound is None or not _lost_session(failed):
            return False
        sessions = getattr(self._side, "sessions", None)
        if sessions is not None and plan.channel is not None:
            sessions.forget(plan.channel, plan.outbound.session)
        return True

    async def _stream_failed(self, context: grpc.aio.ServicerContext, method: str,
                             requests: AsyncIterator[bytes], admitted: _Admitted,
                             pump: _RequestPump, failed: grpc.aio.AioRpcError,
                             record: CallRecord | None) -> None:
        if pump.error is not None:
            await drain(requests)
            await self._refuse(context, method, pump.error, record, admitted)
        elif self._forget_lost_session(admitted.plan, failed):
            # The requests are gone: the client may try again (a new session then).
            await self._refuse(context, method, FastProxyError(
                Reason.UNAVAILABLE, "the in-proxy no longer knows this call's session (did it "
                                    "restart?): try again"), record, admitted)
        elif failed.code() == grpc.StatusCode.OK:
            await self._ended_ok(context, method, admitted, failed, record)
        else:
            await self._pass_failure(context, method, admitted, failed, record)

    async def _ended_ok(self, context: grpc.aio.ServicerContext, method: str, call: _Admitted,
                        ended: grpc.aio.AioRpcError, record: CallRecord | None) -> None:
        """The upstream ended the call OK while a request of ours was still being written
        (a unary upstream answers after the last message, before the END record behind it
        arrives), and grpc.aio reported that write's failure instead (`StatusLog` kept the
        real status): the responses arrived, so the call ends as one that ended OK, its
        end checked or sealed as any other (a response lost on the way would not match)."""
        self._pool.health.record_success(call.plan.endpoint)
        try:
            if not call.head_done:
                initial = call.plan.head(forwarded_response_metadata(ended.initial_metadata()))
                call.head_done = True
                if initial:
                    await context.send_initial_metadata(initial)
            trailers = self._trailers(method, call, grpc.StatusCode.OK, "",
                                      forwarded_response_metadata(ended.trailing_metadata()),
                                      fast=False)
        except FastProxyError as err:
            await self._refuse(context, method, err, record, call)
            return
        if trailers:
            context.set_trailing_metadata(trailers)
        if record is not None:
            record.code = grpc.StatusCode.OK

    async def _pass_failure(self, context: grpc.aio.ServicerContext, method: str,
                            call: _Admitted, failed: grpc.aio.AioRpcError,
                            record: CallRecord | None) -> None:
        code = failed.code()
        timeout = call.timeout
        if (code == grpc.StatusCode.DEADLINE_EXCEEDED and timeout is not None
                and time.monotonic() - call.started >= timeout - _DEADLINE_SLACK_S):
            await self._refuse(context, method, FastProxyError(
                Reason.DEADLINE, f"upstream did not answer within {timeout:.3f}s"), record, call)
            return
        endpoint = call.plan.endpoint
        if isinstance(failed, TunnelBroken) or self._pool.is_transport_failure(endpoint, code):
            self._pool.health.record_transport_failure(endpoint, time.monotonic())
            await self._refuse(context, method, FastProxyError(
                Reason.UNAVAILABLE, f"upstream {endpoint} unreachable"), record, call)
            return
        self._pool.health.record_success(endpoint)
        details = failed.details() or ""
        initial: Metadata = ()
        try:
            if not call.head_done:
                initial = call.plan.head(forwarded_response_metadata(failed.initial_metadata()))
                call.head_done = True
            trailers = call.plan.end(code.value[0], details, self._exchange.strip(
                forwarded_response_metadata(failed.trailing_metadata())))
        except FastProxyError as err:
            await self._refuse(context, method, err, record, call)
            return
        if initial:
            await context.send_initial_metadata(initial)
        if record is not None:
            record.code = code
        # The upstream's own answer: code, details and trailers unchanged, none of ours.
        await context.abort(code, details, trailers)

    async def _refuse(self, context: grpc.aio.ServicerContext, method: str,
                      err: FastProxyError, record: CallRecord | None = None,
                      call: _Admitted | None = None) -> None:
        """Ends the call with our status and trailers, after its audit line (the parties
        come from the record when telemetry keeps one, else from the plan, when the call
        got that far). The in-proxy seals the refusal once the call was opened."""
        observer = self._observer
        if record is not None:
            other = record.caller if observer.role.guards else record.callee
        elif call is not None:
            other = call.plan.caller if observer.role.guards else call.plan.callee
        else:
            other = ""
        answer = refuse(err, observer.role, service=observer.service, other=other,
                        method=method, revision=observer.revision(), peer=context.peer() or "",
                        trace_id=record.trace_id_now() if record is not None else None)
        if record is not None:
            record.refused(err, answer.code)
        trailers: Metadata = answer.trailers
        seal = err.seal_end or (call.plan.seal_refusal if call is not None else None)
        if seal is not None:
            trailers = seal(answer.code.value[0], answer.details, trailers)
        try:
            await context.abort(answer.code, answer.details, trailers)
        except grpc.aio.AbortError:
            raise
        except Exception as gone:  # grpc's ExecuteBatchError
            # The call ended meanwhile (e.g. cut short while the server stops): nobody is
            # left to tell; the refusal's audit line is written.
            _log.debug("refusal of %s not sent: %r", method, gone)
