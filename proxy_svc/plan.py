"""What a proxy's role decides for one call, before any message: a `CallPlan`.

The out-proxy (`OutboundRole`) routes by method, picks an endpoint, finds (or opens) its
session with that endpoint, and seals the call with the pipeline's `OutboundCall`; the
in-proxy (`InboundRole`) opens the call with the pipeline's `InboundCall` (session, replay,
metadata, allow rule, rate limit). Either way the forwarding handler gets the same plan:
the parties, where the call goes, its deadline cap and metadata, and one transform per part
of the call (each request, the end of the requests, the response headers, each response,
the status and trailers). Status codes are gRPC's integer values.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import grpc

from fastproxy.hosting.refusal import HostRole
from fastproxy.node.holder import PolicyHolder
from fastproxy.pipeline.handshake import CallerSession
from fastproxy.pipeline.metadata import (
    Metadata,
    forwarded_request_metadata,
    forwarded_response_metadata,
)
from fastproxy.pipeline.node_policy import NodePolicy, NodeState
from fastproxy.pipeline.stages import OutboundCall
from proxy_svc.sessions import SessionBook
from proxy_svc.tunnel import TunnelLink, Tunnels
from proxy_svc.upstream import UpstreamPool

Transform = Callable[[bytes], bytes | None]
class EndTransform(Protocol):
    """Seals (in-proxy) or opens and checks (out-proxy) a call's end; `unary`: the in-proxy
    tells the out-proxy that asked, inside the sealed end, that the method is unary."""

    def __call__(self, code: int, details: str, trailers: Metadata,
                 unary: bool = False) -> Metadata: ...


@dataclass(frozen=True, slots=True)
class CallPlan:
    """One call as its role decided it; every transform may raise `FastProxyError`.

    `request` turns a client message into what goes upstream (None: nothing does);
    `requests_done` runs when the client half-closed (a last message to send, or a refusal
    when the stream was cut short); `head`, `response` and `end` do the same for the
    upstream's headers, messages and (code, details, trailers). `seal_refusal` seals a
    refusal of ours (the in-proxy, once the call opened; None otherwise)."""

    caller: str
    callee: str
    endpoint: str
    timeout_ms: int | None
    metadata: Metadata
    request: Transform
    requests_done: Callable[[], bytes | None]
    head: Callable[[Metadata], Metadata]
    response: Callable[[bytes], bytes]
    end: EndTransform
    seal_refusal: EndTransform | None = None
    link: TunnelLink | None = None  # the tunnel to carry the call (fast path, tunnel open)
    channel: grpc.aio.Channel | None = None  # else the channel of a call of its own
    outbound: OutboundCall | None = None  # the out-proxy's call, for session bookkeeping
    would_deny: str = ""  # in-proxy: passed only in audit mode (the service or rule in it)
    # out-proxy: whether the end `end` opened said the method is unary (read after `end`)
    told_unary: Callable[[], bool] = lambda: False


class Role(Protocol):
    """Makes the plan of each call; `role` names the proxy in our trailers and records.
    `single`: the call is served on the unary fast path (one request, one response)."""

    @property
    def role(self) -> HostRole: ...

    async def begin(self, method: str, metadata: Metadata, now: float, *, single: bool,
                    carry: bool, remaining_s: float | None) -> CallPlan: ...


class OutboundRole:
    """The out-proxy of `service`: route by method, pick an endpoint and its session, seal
    requests, open and check what comes back."""

    role = HostRole.OUT

    def __init__(self, holder: PolicyHolder[NodePolicy], service: str, pool: UpstreamPool,
                 sessions: SessionBook, tunnels: Tunnels | None = None) -> None:
        self._holder = holder
        self._service = service
        self._pool = pool
        self.sessions = sessions
        self._tunnels = tunnels

    async def begin(self, method: str, metadata: Metadata, now: float, *, single: bool,
                    carry: bool, remaining_s: float | None) -> CallPlan:
        """`carry`: the call may ride the endpoint's tunnel if one is open."""
        policy = self._holder.require()
        destination = policy.route(method)
        endpoint = self._pool.health.pick(destination.endpoints, time.monotonic())
        link = None
        if self._tunnels is not None and carry:
            tunnel = self._tunnels.link(endpoint)
            if tunnel.ready():  # (which opens it when idle)
                link = tunnel
            elif tunnel.opening:  # the session the calls riding it will need, opened aside
                self.sessions.warm(policy, destination, tunnel.channel)
        channel = link.channel if link is not None else self._pool.channel(endpoint)
        session = await self.sessions.session(policy, destination, channel, remaining_s)
        call = policy.outbound(destination, session, method,
                               forwarded_request_metadata(metadata), now)

        def request(message: bytes) -> bytes:
            return call.seal_request(message, single)

        def end(code: int, details: str, trailers: Metadata, unary: bool = False) -> Metadata:
            return call.open_end(code, details, forwarded_response_metadata(trailers))

        return CallPlan(self._service, call.destination, endpoint, call.timeout_ms,
                        call.metadata, request, call.end_requests, call.open_head,
                        call.open_response, end, None, link, channel, call,
                        told_unary=lambda: call.told_unary)


    async def confirm_lost(self, method: str, channel: grpc.aio.Channel,
                           lost: CallerSession, remaining_s: float | None) -> bool:
        """See `SessionBook.confirm_lost`."""
        policy = self._holder.require()
        return await self.sessions.confirm_lost(policy, policy.route(method), channel, lost,
                                                remaining_s)


class InboundRole:
    """The in-proxy of `service` in front of `upstream`: open and admit the call, open
    requests, seal what the upstream answers. `state` outlives policy swaps (sessions, rate
    limits)."""

    role = HostRole.IN

    def __init__(self, holder: PolicyHolder[NodePolicy], upstream: str, state: NodeState,
                 service: str = "") -> None:
        self._holder = holder
        self._upstream = upstream
        self._state = state
        self._service = service

    async def begin(self, method: str, metadata: Metadata, now: float, *, single: bool,
                    carry: bool, remaining_s: float | None) -> CallPlan:
        call = self._holder.require().inbound(method, metadata, now, self._state)

        def request(message: bytes) -> bytes | None:
            return call.open_request(message, single)

        def requests_done() -> None:
            call.finish_requests()

        return CallPlan(call.caller, self._service, self._upstream, call.timeout_ms,
                        forwarded_request_metadata(metadata) + call.restored, request,
                        requests_done, call.seal_head, call.seal_response, call.seal_end,
                        call.seal_end, would_deny=call.would_deny)
