"""The transparent forwarding handler: every method of every service, raw bytes both ways.

One handler serves both roles. What differs between the out-proxy and the in-proxy is the
per-call `CallPlan` a `Role` (Strategy) makes: where the call goes, what deadline cap and
metadata it adds, and what happens to each request and response message (seal/open).

Every RPC kind is a stream of length-prefixed messages on the wire, and the proxy cannot tell
the kind from a method name, so a call is forwarded as stream-stream unless its method is
known to be unary: the upstream call is `channel.stream_stream(method)` fed by the client's
request stream, and its responses are written back one by one. A unary or client-streaming
upstream answers one message, a server-streaming one many; the client sees the same messages,
metadata, status and trailers as from the upstream directly.

The unary fast path: a method known to be unary (`proxy_svc.kinds`: from the upstream's server
reflection in the in-proxy, from the in-proxy's `fastproxy-kind` trailer in the out-proxy) is
served by a unary handler with a `unary_unary` upstream call, which sends message and
half-close in one batch and needs no generators. Same stages, metadata, status and errors.
Measured on the 2-core box (pass-through, 100-byte unary calls, 32 in flight, CPU of the proxy
process per call): stream path about 0.75 ms, unary path about 0.49 ms; sealed hop with
h2load, 1 KiB: 1.20 -> 0.78 ms (docs/benchmarks.md).

The tunnel: the out-proxy carries fast-path calls to an in-proxy over one long-lived stream
(`proxy_svc.tunnel`) when it can, and the in-proxy serves each carried call through the same
`_unary` (`serve_carried`), with a context that stands in for grpc's.

Upstream failures: UNAVAILABLE while the channel is not READY is the transport's and becomes
our `unavailable`; DEADLINE_EXCEEDED once the timeout we set has run out is our `deadline`;
every other status (including an app's own UNAVAILABLE) passes through unchanged.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

import grpc

from fastproxy.hosting.grpc_aio import drain, value_now
from fastproxy.pipeline.metadata import (
    Metadata,
    forwarded_request_metadata,
    forwarded_response_metadata,
)
from fastproxy.pipeline.reasons import FastProxyError, Reason
from proxy_svc.kinds import ASK_KIND, KIND_KEY, UNARY_KIND, MethodKinds, ReflectionLearner
from proxy_svc.observe import CallObserver, CallRecord
from proxy_svc.tunnel import FRAME_SLACK_BYTES, CarriedCallContext, TunnelBroken, Tunnels
from proxy_svc.upstream import DEFAULT_MAX_MESSAGE_BYTES, UpstreamPool

_log = logging.getLogger("fastproxy.proxy")

# grpc's sync server reports ~9.2e18 s remaining for "no deadline"; anything this large is none.
_NO_DEADLINE_ABOVE_S = 1e8
# The deadline timer fires at or after the deadline we computed; allow for clock granularity.
_DEADLINE_SLACK_S = 0.002
# A cancelled call this close to its deadline was ended by it (the client's timer fires and
# resets the stream a little before ours would: the deadline crossed the wire).
_DEADLINE_NEAR_S = 0.05


# --- what the security pipeline offers (implemented in fastproxy's pipeline) ------------


class OutboundCall(Protocol):
    """One call leaving a caller (out-proxy side), as the pipeline decided it."""

    @property
    def destination(self) -> str: ...
    @property
    def endpoints(self) -> tuple[str, ...]: ...
    @property
    def timeout_ms(self) -> int | None: ...
    def request_metadata(self) -> tuple[tuple[str, bytes], ...]: ...
    def seal_request(self, message: bytes) -> bytes: ...
    def open_response(self, message: bytes, now: float) -> bytes: ...


class InboundCall(Protocol):
    """One call reaching a callee (in-proxy side), as the pipeline accepted it."""

    @property
    def caller(self) -> str: ...
    @property
    def timeout_ms(self) -> int | None: ...
    def open_request(self, message: bytes, now: float) -> bytes: ...
    def seal_response(self, message: bytes) -> bytes: ...


class OutboundPolicy(Protocol):
    def outbound(self, method: str, now: float) -> OutboundCall: ...


class InboundPolicy(Protocol):
    def inbound(self, method: str, metadata: Metadata, now: float,
                state: Any) -> InboundCall: ...


P = TypeVar("P")
P_co = TypeVar("P_co", covariant=True)


class HoldsPolicy(Protocol[P_co]):
    """The one reference a new snapshot replaces; `None` until a policy is loaded."""

    @property
    def current(self) -> P_co | None: ...


class PolicyHolder(Generic[P]):
    """The simplest `HoldsPolicy`: assigning `current` swaps the policy in one step, and
    a call reads it once, so it sees one policy, never a mix. No lock on the hot path."""

    def __init__(self, current: P | None = None) -> None:
        self.current = current


# --- the Strategy: what one role does to one call -------------------------------------


class CallPlan(Protocol):
    """Decided once per call by a `Role`; may raise `FastProxyError` from any method."""

    @property
    def endpoints(self) -> tuple[str, ...]: ...
    @property
    def timeout_ms(self) -> int | None: ...
    @property
    def added_metadata(self) -> Metadata: ...
    def request(self, message: bytes, now: float) -> bytes: ...
    def response(self, message: bytes, now: float) -> bytes: ...


class Role(Protocol):
    """`name` is "in" or "out" (the `fastproxy-proxy` trailer of our errors)."""

    @property
    def name(self) -> str: ...
    def begin(self, method: str, metadata: Metadata, now: float) -> CallPlan: ...


@dataclass(frozen=True, slots=True)
class _OutboundPlan:
    call: OutboundCall
    endpoints: tuple[str, ...]
    timeout_ms: int | None
    added_metadata: Metadata

    def request(self, message: bytes, now: float) -> bytes:
        return self.call.seal_request(message)

    def response(self, message: bytes, now: float) -> bytes:
        return self.call.open_response(message, now)


@dataclass(frozen=True, slots=True)
class _InboundPlan:
    call: InboundCall
    endpoints: tuple[str, ...]
    timeout_ms: int | None
    added_metadata: Metadata = ()

    def request(self, message: bytes, now: float) -> bytes:
        return self.call.open_request(message, now)

    def response(self, message: bytes, now: float) -> bytes:
        return self.call.seal_response(message)


def _no_policy() -> FastProxyError:
    return FastProxyError(Reason.UNAVAILABLE, "no policy loaded yet")


class OutboundRole:
    """The out-proxy: route by method, seal requests, open responses, pick among endpoints."""

    name = "out"

    def __init__(self, holder: HoldsPolicy[OutboundPolicy]) -> None:
        self._holder = holder

    def begin(self, method: str, metadata: Metadata, now: float) -> CallPlan:
        policy = self._holder.current
        if policy is None:
            raise _no_policy()
        call = policy.outbound(method, now)
        return _OutboundPlan(call, call.endpoints, call.timeout_ms, call.request_metadata())


class InboundRole:
    """The in-proxy: open requests, authorize, rate-limit, seal responses; one upstream.
    `state` is the pipeline's per-process state (replay cache, rate limiters)."""

    name = "in"

    def __init__(self, holder: HoldsPolicy[InboundPolicy], upstream: str, state: Any) -> None:
        self._holder = holder
        self._endpoints = (upstream,)
        self._state = state

    def begin(self, method: str, metadata: Metadata, now: float) -> CallPlan:
        policy = self._holder.current
        if policy is None:
            raise _no_policy()
        call = policy.inbound(method, metadata, now, self._state)
        return _InboundPlan(call, self._endpoints, call.timeout_ms)


@dataclass(frozen=True, slots=True)
class PassThroughPlan:
    endpoints: tuple[str, ...]
    timeout_ms: int | None = None
    added_metadata: Metadata = ()

    def request(self, message: bytes, now: float) -> bytes:
        return message

    def response(self, message: bytes, now: float) -> bytes:
        return message


class PassThroughRole:
    """Forwards as is: for tests of the transport, and for measuring its own cost."""

    def __init__(self, name: str, endpoints: Sequence[str], timeout_ms: int | None = None):
        self.name = name
        self._plan = PassThroughPlan(tuple(endpoints), timeout_ms)

    def begin(self, method: str, metadata: Metadata, now: float) -> CallPlan:
        return self._plan


# --- the handler ----------------------------------------------------------------------


def call_timeout(remaining_s: float | None, cap_ms: int | None) -> float | None:
    """The upstream's timeout: what the client has left, capped by the service's timeout."""
    if remaining_s is not None and remaining_s > _NO_DEADLINE_ABOVE_S:
        remaining_s = None
    cap_s = cap_ms / 1000 if cap_ms else None
    if remaining_s is None:
        return cap_s
    remaining_s = max(remaining_s, 0.0)
    return remaining_s if cap_s is None else min(remaining_s, cap_s)


class _RequestPump:
    """Feeds the client's messages, transformed, to the upstream call, keeping a pipeline
    error for the handler (grpc would swallow it and only cancel the upstream call)."""

    __slots__ = ("_clock", "_plan", "_requests", "error")

    def __init__(self, requests: AsyncIterator[bytes], plan: CallPlan,
                 clock: Callable[[], float]) -> None:
        self._requests = requests
        self._plan = plan
        self._clock = clock
        self.error: FastProxyError | None = None

    async def messages(self) -> AsyncIterator[bytes]:
        try:
            async for message in self._requests:
                yield self._plan.request(message, self._clock())
        except FastProxyError as err:
            self.error = err
            raise


_CORE_WRITE_FAILURE = "Internal error from Core"
# How a unary call to a method that streams ends (grpc.aio 1.85): a streaming upstream's second
# message leaves the call waiting for its deadline; an upstream that no longer has the method
# or refuses the framing answers UNIMPLEMENTED or INTERNAL. Any of them drops the kind.
_MAYBE_WRONG_KIND = frozenset({grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.INTERNAL,
                               grpc.StatusCode.UNIMPLEMENTED})
# How long to wait for the status a peer really sent, once grpc has reported the above.
SETTLE_STATUS_S = 0.5


class _StatusLog:
    """Every status grpc.aio sets on an upstream call, in order.

    Why: when the upstream ends a call before reading all our request messages
    (UNIMPLEMENTED for a method it lacks, an early abort, an in-proxy refusal), a write of
    ours that was in flight fails, and grpc.aio (1.85, grpc/grpc#36066) sets the call's
    status to INTERNAL "Internal error from Core", before or after the status the upstream
    really sent, which may then be lost (measured: 40-60 of 100 calls to a missing method
    came back INTERNAL). grpc runs a call's done callbacks each time it sets a status, so
    recording them keeps the real one.
    """

    __slots__ = ("seen",)

    def __init__(self, call: Any) -> None:
        self.seen: list[tuple[grpc.StatusCode, str, Any]] = []
        call.add_done_callback(self._record)

    def _record(self, call: Any) -> None:
        code = value_now(call.code())
        if code is not None:
            self.seen.append((code, value_now(call.details()) or "",
                              value_now(call.trailing_metadata())))

    def _real(self) -> tuple[grpc.StatusCode, str, Any] | None:
        for code, details, trailers in self.seen:
            if code != grpc.StatusCode.INTERNAL or details != _CORE_WRITE_FAILURE:
                return code, details, trailers
        return None

    async def settled(self, failed: grpc.aio.AioRpcError,
                      limit_s: float = SETTLE_STATUS_S) -> grpc.aio.AioRpcError:
        """`failed`, or the status the upstream really sent when grpc reported its failed
        write instead (waiting up to `limit_s` for that status to arrive)."""
        if failed.code() != grpc.StatusCode.INTERNAL or failed.details() != _CORE_WRITE_FAILURE:
            return failed
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit_s
        real = self._real()
        while real is None and loop.time() < deadline:
            await asyncio.sleep(0.002)
            real = self._real()
        if real is None:
            return failed
        code, details, trailers = real
        return grpc.aio.AioRpcError(code, failed.initial_metadata(), trailers, details)


class ForwardingHandler(grpc.GenericRpcHandler):
    """Takes every method; register it after any service of the proxy's own (health).

    A method in `kinds.unary` is served on the unary fast path (`_unary`): a unary handler
    and a `unary_unary` upstream call, the same stages, metadata, status and errors as the
    stream path. Every other method takes the stream path. The in-proxy (`role.name ==
    "in"`) learns kinds with `learner` and tells them in the `KIND_KEY` trailer; the
    out-proxy (`"out"`) learns them from that trailer and strips it (see `proxy_svc.kinds`).
    """

    def __init__(self, role: Role, pool: UpstreamPool,
                 clock: Callable[[], float] = time.time,
                 observer: CallObserver | None = None,
                 kinds: MethodKinds | None = None,
                 learner: ReflectionLearner | None = None,
                 tunnels: Tunnels | None = None) -> None:
        self._role = role
        self._pool = pool
        self._clock = clock
        self.kinds = kinds if kinds is not None else MethodKinds()
        self._learner = learner
        self._tells_kind = role.name == "in"
        self._listens_kind = role.name == "out"
        # The out-proxy asks for the kind; the in-proxy answers only calls that asked, so an
        # embedded SDK or any other direct caller never sees our trailer.
        self._ask: Metadata = ((KIND_KEY, ASK_KIND),) if self._listens_kind else ()
        # Audit lines always; spans and metrics only when `observer.active` (decided once
        # here, so with telemetry off a call does no telemetry work at all).
        self._observer = observer or CallObserver(role.name, "")
        self._handle = self._forward_observed if self._observer.active else self._forward
        self._handle_unary = self._unary_observed if self._observer.active else self._unary
        self._unary_handlers: dict[str, grpc.RpcMethodHandler] = {}
        self._unary_callables: dict[tuple[str, str], Any] = {}
        self._tunnels = tunnels
        self.fast_calls = 0  # calls served on the unary fast path (for tests and debugging)

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        method: str = handler_call_details.method
        if method in self.kinds.unary:
            handler = self._unary_handlers.get(method)
            if handler is None:
                handler = grpc.unary_unary_rpc_method_handler(
                    functools.partial(self._handle_unary, method))
                self._unary_handlers[method] = handler
            return handler
        return grpc.stream_stream_rpc_method_handler(
            functools.partial(self._handle, method))

    def _trailers(self, method: str, trailers: Metadata, fast: bool, asked: bool) -> Metadata:
        """The upstream's trailers of a call that ended OK, with our kind entry handled: the
        in-proxy replaces any with its own knowledge (told only to a caller that `asked`),
        the out-proxy learns from it and strips it."""
        if self._tells_kind:
            if trailers and any(key == KIND_KEY for key, _ in trailers):
                trailers = tuple(entry for entry in trailers if entry[0] != KIND_KEY)
            if asked and method in self.kinds.unary:
                trailers = (*trailers, (KIND_KEY, UNARY_KIND))
            return trailers
        if self._listens_kind:
            told = False
            if trailers and any(key == KIND_KEY for key, _ in trailers):
                told = (KIND_KEY, UNARY_KIND) in trailers
                trailers = tuple(entry for entry in trailers if entry[0] != KIND_KEY)
            if told:
                self.kinds.learn(method, True, "the in-proxy's trailer")
            elif fast:
                self.kinds.forget(method, "the in-proxy no longer says it is unary")
        return trailers

    def _forget(self, method: str, why: str) -> None:
        self.kinds.forget(method, why)
        if self._learner is not None:
            self._learner.ask_again(method)

    def _ran_out_of_time(self, method: str, why: str) -> None:
        """A fast-path call ended by a deadline: the out-proxy forgets the kind (the in-proxy
        tells it again on the next call); the in-proxy, whose kinds come from reflection,
        keeps it and asks again (see `proxy_svc.kinds`)."""
        if self._learner is not None:
            self._learner.verify(method)
        else:
            self.kinds.forget(method, why)

    def _without_kind(self, metadata: Metadata) -> Metadata:
        if metadata and any(key == KIND_KEY for key, _ in metadata):
            return tuple(entry for entry in metadata if entry[0] != KIND_KEY)
        return metadata

    async def _forward_observed(self, method: str, requests: AsyncIterator[bytes],
                                context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        metadata: Metadata = tuple(context.invocation_metadata() or ())
        record = self._observer.begin(method, metadata, context.peer())
        try:
            async for message in self._forward(method, requests, context, record, metadata):
                yield message
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

    async def serve_carried(self, method: str, request: bytes,
                            context: CarriedCallContext) -> bytes | None:
        """A call a tunnel carried to this in-proxy: the fast path, with the tunnel's context."""
        return await self._handle_unary(method, request, context)

    def _start_unary(self, endpoint: str, method: str, message: bytes,
                     timeout: float | None, metadata: Metadata) -> Any:
        """The upstream call of the fast path: on the endpoint's tunnel when one is open,
        else a call of its own."""
        if self._tunnels is not None:
            carried = self._tunnels.call(endpoint, method, message, timeout, metadata)
            if carried is not None:
                return carried
        key = (endpoint, method)
        upstream = self._unary_callables.get(key)
        if upstream is None:
            upstream = self._pool.channel(endpoint).unary_unary(method, None, None)
            self._unary_callables[key] = upstream
        return upstream(message, timeout=timeout, metadata=metadata)

    async def _unary(self, method: str, request: bytes, context: grpc.aio.ServicerContext,
                     record: CallRecord | None = None,
                     metadata: Metadata | None = None) -> bytes | None:
        """The fast path: the same stages as `_forward`, one message each way. `context` is
        grpc's, or a `CarriedCallContext` for a call a tunnel carried; `metadata` its
        invocation metadata when the caller already read it."""
        self.fast_calls += 1
        if metadata is None:
            metadata = tuple(context.invocation_metadata() or ())
        asked = self._tells_kind and (KIND_KEY, ASK_KIND) in metadata
        plan: CallPlan | None = None
        try:
            plan = self._role.begin(method, metadata, self._clock())
            endpoint = self._pool.health.pick(plan.endpoints, time.monotonic())
            if record is not None:
                plan = self._observer.admitted(record, plan)
                if record.forward_metadata is not None:
                    metadata = record.forward_metadata
            message = plan.request(request, self._clock())
        except FastProxyError as err:
            await self._refuse(context, method, err, record, plan)
            return None
        if self._learner is not None and method not in self.kinds.unary:
            self._learner.consider(method)  # a carried call's method this process never saw
        timeout = call_timeout(context.time_remaining(), plan.timeout_ms)
        started = time.monotonic()
        call = self._start_unary(endpoint, method, message, timeout, forwarded_request_metadata(
            metadata, plan.added_metadata + self._ask))
        try:
            response = await call
            initial = forwarded_response_metadata(await call.initial_metadata())
            trailers = forwarded_response_metadata(await call.trailing_metadata())
        except grpc.aio.AioRpcError as failed:
            if failed.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                self._ran_out_of_time(method, "upstream answered DEADLINE_EXCEEDED")
            elif failed.code() in _MAYBE_WRONG_KIND:
                self._forget(method, f"upstream answered {failed.code().name}")
            initial = forwarded_response_metadata(failed.initial_metadata())
            if initial:
                await context.send_initial_metadata(initial)
            await self._pass_failure(context, method, endpoint, failed, timeout, started,
                                     record, plan)
            return None
        except asyncio.CancelledError:
            # Our client went away (cancel or its deadline): so does the upstream call.
            call.cancel()
            remaining = context.time_remaining()
            if remaining is not None and remaining <= _DEADLINE_NEAR_S:
                self._ran_out_of_time(method, "the client's deadline ran out")
            raise
        self._pool.health.record_success(endpoint)
        if initial:
            await context.send_initial_metadata(initial)
        try:
            answer = plan.response(response, self._clock())
        except FastProxyError as err:
            await self._refuse(context, method, err, record, plan)
            return None
        trailers = self._trailers(method, trailers, fast=True, asked=asked)
        if trailers:
            context.set_trailing_metadata(trailers)
        if record is not None:
            record.code = grpc.StatusCode.OK
        return answer

    async def _forward(self, method: str, requests: AsyncIterator[bytes],
                       context: grpc.aio.ServicerContext,
                       record: CallRecord | None = None,
                       metadata: Metadata | None = None) -> AsyncIterator[bytes]:
        if metadata is None:
            metadata = tuple(context.invocation_metadata() or ())
        asked = self._tells_kind and (KIND_KEY, ASK_KIND) in metadata
        try:
            plan = self._role.begin(method, metadata, self._clock())
            endpoint = self._pool.health.pick(plan.endpoints, time.monotonic())
        except FastProxyError as err:
            await drain(requests)
            await self._refuse(context, method, err, record)
            return
        if record is not None:
            plan = self._observer.admitted(record, plan)
            if record.forward_metadata is not None:
                metadata = record.forward_metadata
        if self._learner is not None:
            self._learner.consider(method)
        timeout = call_timeout(context.time_remaining(), plan.timeout_ms)
        pump = _RequestPump(requests, plan, self._clock)
        started = time.monotonic()
        call = self._pool.channel(endpoint).stream_stream(method, None, None)(
            pump.messages(), timeout=timeout,
            metadata=forwarded_request_metadata(metadata, plan.added_metadata + self._ask))
        statuses = _StatusLog(call)
        try:
            initial = forwarded_response_metadata(await call.initial_metadata())
            if initial:
                await context.send_initial_metadata(initial)
            async for message in call:
                yield plan.response(message, self._clock())
            # The stream ended OK: the status is in.
            self._pool.health.record_success(endpoint)
            trailers = self._trailers(
                method, forwarded_response_metadata(await call.trailing_metadata()),
                fast=False, asked=asked)
            if trailers:
                context.set_trailing_metadata(trailers)
            if record is not None:
                record.code = grpc.StatusCode.OK
        except grpc.aio.AioRpcError as failed:
            if pump.error is not None:
                await drain(requests)
                await self._refuse(context, method, pump.error, record, plan)
            else:
                failed = await statuses.settled(failed)
                await self._pass_failure(context, method, endpoint, failed, timeout, started,
                                         record, plan)
        except FastProxyError as err:
            call.cancel()
            await self._refuse(context, method, err, record, plan)
        except asyncio.CancelledError:
            if pump.error is not None:
                # grpc cancelled the upstream call when our request transform raised.
                await self._refuse(context, method, pump.error, record, plan)
            # Our client went away (cancel or its deadline): so does the upstream call.
            call.cancel()
            raise
        finally:
            # Any exit other than a finished call (e.g. grpc closing the generator).
            if not call.done():
                call.cancel()

    async def _pass_failure(self, context: grpc.aio.ServicerContext, method: str,
                            endpoint: str, failed: grpc.aio.AioRpcError,
                            timeout: float | None, started: float,
                            record: CallRecord | None, plan: CallPlan) -> None:
        code = failed.code()
        if (code == grpc.StatusCode.DEADLINE_EXCEEDED and timeout is not None
                and time.monotonic() - started >= timeout - _DEADLINE_SLACK_S):
            await self._refuse(context, method, FastProxyError(
                Reason.DEADLINE, f"upstream did not answer within {timeout:.3f}s"), record,
                plan)
            return
        if isinstance(failed, TunnelBroken) or self._pool.is_transport_failure(endpoint, code):
            self._pool.health.record_transport_failure(endpoint, time.monotonic())
            await self._refuse(context, method, FastProxyError(
                Reason.UNAVAILABLE, f"upstream {endpoint} unreachable"), record, plan)
            return
        self._pool.health.record_success(endpoint)
        if record is not None:
            record.code = code
        # The upstream's own answer: code, details and trailers unchanged, none of ours.
        await context.abort(code, failed.details() or "", self._without_kind(
            forwarded_response_metadata(failed.trailing_metadata())))

    async def _refuse(self, context: grpc.aio.ServicerContext, method: str,
                      err: FastProxyError, record: CallRecord | None = None,
                      plan: CallPlan | None = None) -> None:
        """Ends the call with our status and trailers, after its audit line (`plan`, when
        the call got that far, names the parties when no `record` does)."""
        self._observer.audit_refusal(method, err, context.peer(), record, plan)
        if record is not None:
            record.refused(err)
        await context.abort(err.status, err.detail, err.trailers(self._role.name))


def server_options(max_message_bytes: int) -> tuple[tuple[str, int], ...]:
    """Received messages as large as allowed; sent ones a little larger: a sealed response
    adds its envelope, a tunnel reply its frame around a response of the largest size."""
    return (("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes + FRAME_SLACK_BYTES))


async def start_proxy_server(
    listen: str,
    handler: ForwardingHandler,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    credentials: grpc.ServerCredentials | None = None,
    services_first: Iterable[grpc.GenericRpcHandler] = (),
    extra_options: Iterable[tuple[str, Any]] = (),
    add_services: Callable[[grpc.aio.Server], None] | None = None,
) -> tuple[grpc.aio.Server, int]:
    """Builds and starts the proxy's grpc.aio server; returns it and the bound port (useful
    with port 0). `services_first` (e.g. health) and what `add_services` registers are
    consulted before the forwarding handler, which takes every method."""
    server = grpc.aio.server(options=(*server_options(max_message_bytes), *extra_options))
    if add_services is not None:
        add_services(server)
    server.add_generic_rpc_handlers((*services_first, handler))
    if credentials is None:
        port = server.add_insecure_port(listen)
    else:
        port = server.add_secure_port(listen, credentials)
    await server.start()
    return server, int(port)
