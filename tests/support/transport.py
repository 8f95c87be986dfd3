"""The forwarding layer alone, in the test process: a pass-through role, a proxy on its
own event loop in a thread, and small helpers for plain grpc clients."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
import uuid
from collections.abc import Sequence
from typing import Any

import grpc
import pytest

from fastproxy.hosting.refusal import HostRole
from fastproxy.pipeline.metadata import Metadata, forwarded_request_metadata
from proxy_svc.forward import ForwardingHandler
from proxy_svc.kinds import KindExchange, KindListener, KindTeller, MethodKinds
from proxy_svc.plan import CallPlan, Role
from proxy_svc.server import start_proxy_server
from proxy_svc.upstream import EjectionRule, EndpointHealth, UpstreamPool
from support.dataplane import call_kind

MiB = 1024 * 1024
CLIENT_OPTIONS = (
    ("grpc.max_receive_message_length", 64 * MiB),
    ("grpc.max_send_message_length", 64 * MiB),
)
KINDS = ("unary", "client_stream", "server_stream", "bidi")


# --- fixtures -------------------------------------------------------------------------


def _unchanged(message: bytes) -> bytes:
    return message


def _no_last_message() -> None:
    return None


def _same_metadata(metadata: Metadata) -> Metadata:
    return metadata


# Stands in for the sealed end's `unary` (the protocol's STATUS record) on this transport
# without the protocol: the "in" side adds it, the "out" side takes it off and is told.
TOLD_UNARY = "x-test-told-unary"


def pass_through_plan(endpoint: str, timeout_ms: int | None, metadata: Metadata) -> CallPlan:
    told = [False]

    def end(code: int, details: str, trailers: Metadata, unary: bool = False) -> Metadata:
        if unary:
            return (*trailers, (TOLD_UNARY, "1"))
        told[0] = any(key == TOLD_UNARY for key, _ in trailers)
        return tuple(entry for entry in trailers if entry[0] != TOLD_UNARY)

    return CallPlan("", "", endpoint, timeout_ms, forwarded_request_metadata(metadata),
                    _unchanged, _no_last_message, _same_metadata, _unchanged, end,
                    told_unary=lambda: told[0])


class PassThroughRole:
    """Forwards messages as they are (the transport alone), to one of `endpoints` picked by
    the proxy's endpoint health (`health`, set by `ProxyThread`). `name` "in" or "out" also
    gives the proxy that side's way with method kinds (`exchange_for`); any other, neither."""

    def __init__(self, name: str, endpoints: Sequence[str], timeout_ms: int | None = None):
        self.name = name
        self.role = HostRole.IN if name == "in" else HostRole.OUT
        self._endpoints = tuple(endpoints)
        self._timeout_ms = timeout_ms
        self.health = EndpointHealth()

    async def begin(self, method: str, metadata: Metadata, now: float, *, single: bool,
                    carry: bool, remaining_s: float | None) -> CallPlan:
        endpoint = self.health.pick(self._endpoints, time.monotonic())
        return pass_through_plan(endpoint, self._timeout_ms, metadata)


def exchange_for(role: Role, kinds: MethodKinds) -> KindExchange:
    name = getattr(role, "name", role.role.value)
    if name == "in":
        return KindTeller(kinds, None)
    if name == "out":
        return KindListener(kinds)
    return KindExchange(kinds)


class CountingHandler(ForwardingHandler):
    """Counts the calls it serves on the unary fast path (a unary handler handed to grpc)."""

    fast_calls = 0

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        handler = super().service(handler_call_details)
        if not (handler.request_streaming or handler.response_streaming):
            self.fast_calls += 1
        return handler


class ProxyThread:
    """The forwarding server on its own event loop in a thread of the test process."""

    def __init__(self, role: Role, rule: EjectionRule | None = None,
                 max_message_bytes: int = 64 * MiB, unary: Sequence[str] = ()) -> None:
        self._role = role
        self._unary = unary
        self._rule = rule or EjectionRule()
        self._max = max_message_bytes
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self.address = ""

    def start(self) -> ProxyThread:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    async def _start(self) -> None:
        self.pool = UpstreamPool(self._max, rule=self._rule)
        if isinstance(self._role, PassThroughRole):
            self._role.health = self.pool.health
        self.handler = CountingHandler(
            self._role, self.pool, exchange=exchange_for(self._role, MethodKinds(self._unary)))
        self.server, port = await start_proxy_server("127.0.0.1:0", self.handler, self._max)
        self.address = f"127.0.0.1:{port}"

    async def _stop(self) -> None:
        await self.server.stop(0)
        await self.pool.close()

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


def channel(address: str) -> grpc.Channel:
    return grpc.insecure_channel(address, options=CLIENT_OPTIONS)


def free_port_nobody_listens_on() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


def new_id() -> str:
    return uuid.uuid4().hex


def failure_of(ch: grpc.Channel, kind: str, metadata: Metadata,
               timeout: float | None = 10.0) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as raised:
        call_kind(ch, kind, b"payload", metadata, timeout)
    return raised.value


def trailers_of(error: grpc.RpcError) -> dict[str, Any]:
    return dict(error.trailing_metadata() or ())


# --- the sans-IO parts ----------------------------------------------------------------


