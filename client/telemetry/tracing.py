"""Span helpers: one span per call and per hop, joined by W3C trace context in metadata.

Attributes follow OpenTelemetry's RPC semantic conventions (`rpc.system`, `rpc.service`,
`rpc.method`, `rpc.grpc.status_code`, `server.address`/`server.port`,
`network.peer.address`/`network.peer.port`), plus ours: `fastproxy.proxy` (in, out, client),
`fastproxy.caller`, `fastproxy.callee`, `fastproxy.reason` (a refusal's reason) and
`fastproxy.policy.revision`.

These helpers are only reached when a tracer was configured: hosts hold `None` instead of a
`CallSpans` with no exporter, check that once per call and create no span at all.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

import grpc
from opentelemetry import propagate, trace
from opentelemetry.propagators.textmap import Getter
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from fastproxy.pipeline.metadata import Metadata

if TYPE_CHECKING:
    from fastproxy.telemetry.sampling import SamplingShortcut


RPC_SYSTEM = "rpc.system"
RPC_SERVICE = "rpc.service"
RPC_METHOD = "rpc.method"
RPC_STATUS = "rpc.grpc.status_code"
SERVER_ADDRESS = "server.address"
SERVER_PORT = "server.port"
PEER_ADDRESS = "network.peer.address"
PEER_PORT = "network.peer.port"
PROXY = "fastproxy.proxy"
CALLER = "fastproxy.caller"
CALLEE = "fastproxy.callee"
REASON = "fastproxy.reason"
REVISION = "fastproxy.policy.revision"
WOULD_DENY = "fastproxy.would_deny"

TRACE_KEYS = frozenset({"traceparent", "tracestate", "baggage"})


class Unsampled(NamedTuple):
    """A call no span is recorded for, as the sampling shortcut settled it
    (`fastproxy.telemetry.sampling`): the metadata to forward (None: as it came) and the
    trace id, for its audit line. (A named tuple: one is made per call, cheaply.)"""

    forward: Metadata | None
    trace_id: str


class _DictGetter(Getter[Mapping[str, str]]):
    def get(self, carrier: Mapping[str, str], key: str) -> list[str] | None:
        value = carrier.get(key)
        return None if value is None else [value]

    def keys(self, carrier: Mapping[str, str]) -> list[str]:
        return list(carrier)


_GETTER = _DictGetter()


def split_method(method: str) -> tuple[str, str]:
    """`/pkg.Service/Method` -> (`pkg.Service`, `Method`)."""
    service, _, name = method.lstrip("/").rpartition("/")
    return service, name


def split_peer(peer: str | None) -> tuple[str, int | None]:
    """grpc's `ipv4:127.0.0.1:5000` / `ipv6:[::1]:5000` -> (address, port)."""
    if not peer:
        return "", None
    _, _, rest = peer.partition(":")
    host, _, port = rest.rpartition(":")
    host = host.strip("[]")
    try:
        return host, int(port)
    except ValueError:
        return rest, None


def split_host_port(address: str) -> tuple[str, int | None]:
    host, _, port = address.rpartition(":")
    try:
        return host.strip("[]"), int(port)
    except ValueError:
        return address, None


def context_from_metadata(metadata: Iterable[tuple[str, str | bytes]]) -> Any:
    """The OpenTelemetry context the caller sent (W3C `traceparent`/`tracestate`)."""
    carrier = {key: value for key, value in metadata
               if key in TRACE_KEYS and isinstance(value, str)}
    return propagate.extract(carrier, getter=_GETTER) if carrier else None


def trace_metadata_of(span: Span) -> Metadata:
    """`traceparent` (and `tracestate`) naming `span` as the parent of the next hop."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=trace.set_span_in_context(span))
    return tuple((key.lower(), value) for key, value in carrier.items())


def without_trace_context(metadata: Metadata) -> Metadata:
    return tuple((key, value) for key, value in metadata if key not in TRACE_KEYS)


def trace_id_of(span: Span) -> str | None:
    context = span.get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else None


SPAN_CACHE_LIMIT = 10_000  # methods (and peers) whose span name and attributes are kept


class CallSpans:
    """Starts the span of one hop of a call (`kind` SERVER for a proxy, CLIENT for the SDK).
    `proxy` is the `fastproxy.proxy` attribute: in, out or client; `service` the host's own
    service, an attribute from the start (callee of an in-proxy, caller otherwise).

    Per call this does no string work: the span name and the attributes known at the start
    are made once per method (and the peer's per peer address) and given to `start_span` in
    one dict, so the sampler sees them and a recorded span validates them once. A span the
    sampler drops is a cheap `NonRecordingSpan` that still carries the trace context to the
    next hop (not sampled, so every later hop's parent-based sampler drops it too).
    With a `shortcut` (`fastproxy.telemetry.sampling`), `start_from` does not even ask the
    SDK about calls whose span the sampler would drop."""

    __slots__ = ("_base", "_kind", "_methods", "_peers", "_shortcut", "_tracer")

    def __init__(self, tracer: trace.Tracer, proxy: str, kind: SpanKind,
                 service: str = "", shortcut: SamplingShortcut | None = None) -> None:
        self._tracer = tracer
        self._kind = kind
        self._shortcut = shortcut
        self._base: dict[str, Any] = {RPC_SYSTEM: "grpc", PROXY: proxy}
        if service:
            self._base[CALLER if proxy in ("out", "client") else CALLEE] = service
        self._methods: dict[str, tuple[str, dict[str, Any]]] = {}
        self._peers: dict[str, dict[str, Any]] = {}

    def _of_method(self, method: str) -> tuple[str, dict[str, Any]]:
        """(span name, start attributes) of `method`, made once."""
        found = self._methods.get(method)
        if found is None:
            grpc_service, name = split_method(method)
            found = (f"{grpc_service}/{name}",
                     {**self._base, RPC_SERVICE: grpc_service, RPC_METHOD: name})
            if len(self._methods) >= SPAN_CACHE_LIMIT:  # methods a scanner invents
                self._methods.clear()
            self._methods[method] = found
        return found

    def _of_peer(self, peer: str) -> dict[str, Any]:
        found = self._peers.get(peer)
        if found is None:
            address, port = split_peer(peer)
            found = {PEER_ADDRESS: address} if port is None else {
                PEER_ADDRESS: address, PEER_PORT: port}
            if len(self._peers) >= SPAN_CACHE_LIMIT:  # a new port per connection
                self._peers.clear()
            self._peers[peer] = found
        return found

    def start(self, method: str, parent: Any = None, peer: str | None = None,
              server: str | None = None) -> Span:
        name, attributes = self._of_method(method)
        if peer or server:
            attributes = {**attributes, **self._of_peer(peer)} if peer else dict(attributes)
            if server:
                host, server_port = split_host_port(server)
                attributes[SERVER_ADDRESS] = host
                if server_port is not None:
                    attributes[SERVER_PORT] = server_port
        return self._tracer.start_span(name, context=parent, kind=self._kind,
                                       attributes=attributes)

    def start_from(self, method: str, metadata: Metadata, peer: str | None
                   ) -> Span | Unsampled:
        """The span of a call that arrived with `metadata` (its W3C context as parent), or,
        when the shortcut knows the sampler would drop it, what to forward instead."""
        shortcut = self._shortcut
        if shortcut is None:
            return self.start(method, context_from_metadata(metadata), peer)
        decided = shortcut.decide(metadata)
        if decided is not None:
            return decided
        try:
            return self.start(method, context_from_metadata(metadata), peer)
        finally:
            shortcut.clear()


def end_call_span(span: Span, code: grpc.StatusCode, *, caller: str = "", callee: str = "",
                  reason: str | None = None, revision: int | None = None,
                  detail: str = "", would_deny: str = "") -> None:
    """Sets the outcome (`rpc.grpc.status_code`, ours) and ends `span`. Per the RPC
    conventions a SERVER span is an error for codes a server is to blame for; we mark every
    refusal and every non-OK code as an error, with the code's name as description.

    A span the sampler dropped (`is_recording()` false) is left alone: nothing is built for
    it. Pass only what the span's start attributes do not hold yet (set once, validated
    once by the SDK)."""
    if not span.is_recording():
        return
    attributes: dict[str, Any] = {RPC_STATUS: code.value[0]}
    if caller:
        attributes[CALLER] = caller
    if callee:
        attributes[CALLEE] = callee
    if reason is not None:
        attributes[REASON] = reason
    if revision is not None:
        attributes[REVISION] = revision
    if would_deny:  # passed in audit mode; enforcing would deny it (the mode's owner)
        attributes[WOULD_DENY] = would_deny
    span.set_attributes(attributes)
    if code != grpc.StatusCode.OK:
        span.set_status(Status(StatusCode.ERROR, f"{code.name}{': ' + detail if detail else ''}"))
    span.end()
