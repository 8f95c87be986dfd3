"""What a proxy's role decides for one call, before any message: a `CallPlan`.

The out-proxy (`OutboundRole`) routes by method and seals requests and opens responses with
the pipeline's `OutboundCall`; the in-proxy (`InboundRole`) authenticates, authorizes and
rate-limits the caller with the pipeline's `InboundCall`, opens requests and seals responses.
Either way the forwarding handler gets the same plan: the two parties, where the call may go,
its deadline cap, the metadata the pipeline adds, and one transform per direction.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from fastproxy.hosting.refusal import HostRole
from fastproxy.node.holder import PolicyHolder
from fastproxy.pipeline.metadata import Metadata
from fastproxy.pipeline.node_policy import NodePolicy, NodeState

Transform = Callable[[bytes, float], bytes]


@dataclass(frozen=True, slots=True)
class CallPlan:
    """One call as its role decided it. `request` transforms each message from the client
    before it goes upstream, `response` each message from upstream before it goes back;
    either may raise `FastProxyError`."""

    caller: str
    callee: str
    endpoints: tuple[str, ...]
    timeout_ms: int | None
    added_metadata: Metadata
    request: Transform
    response: Transform


class Role(Protocol):
    """Makes the plan of each call; `role` names the proxy in our trailers and records."""

    @property
    def role(self) -> HostRole: ...

    def begin(self, method: str, metadata: Metadata, now: float) -> CallPlan: ...


class OutboundRole:
    """The out-proxy of `service`: route by method, seal requests, open responses."""

    role = HostRole.OUT

    def __init__(self, holder: PolicyHolder[NodePolicy], service: str = "") -> None:
        self._holder = holder
        self._service = service

    def begin(self, method: str, metadata: Metadata, now: float) -> CallPlan:
        call = self._holder.require().outbound(method, now)
        return CallPlan(self._service, call.destination, call.endpoints, call.timeout_ms,
                        call.request_metadata(), call.seal_request, call.open_response)


class InboundRole:
    """The in-proxy of `service` in front of `upstream`: admit the caller, open requests,
    seal responses. `state` is what outlives policy swaps (replay cache, rate limits)."""

    role = HostRole.IN

    def __init__(self, holder: PolicyHolder[NodePolicy], upstream: str, state: NodeState,
                 service: str = "") -> None:
        self._holder = holder
        self._endpoints = (upstream,)
        self._state = state
        self._service = service

    def begin(self, method: str, metadata: Metadata, now: float) -> CallPlan:
        call = self._holder.require().inbound(method, metadata, now, self._state)
        return CallPlan(call.caller, self._service, self._endpoints, call.timeout_ms, (),
                        call.open_request, call.seal_response)

