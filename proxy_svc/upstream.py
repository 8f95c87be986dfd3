"""Upstream channels: one reused channel per endpoint, round robin, outlier ejection.

`EndpointHealth` is the decision logic alone (no I/O, the clock is passed in);
`UpstreamPool` adds the grpc.aio channels.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from fastproxy.hosting.grpc_aio import value_now
from fastproxy.pipeline.reasons import FastProxyError, Reason

DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class EjectionRule:
    """`failures` transport failures in a row leave an endpoint out for `ejection_s`."""

    failures: int = 3
    ejection_s: float = 10.0


@dataclass(slots=True)
class _EndpointState:
    failures_in_a_row: int = 0
    ejected_until: float = 0.0


class EndpointHealth:
    """Round robin over endpoints, leaving out those ejected for failing in a row.

    Only transport failures count (the endpoint could not be reached or the connection broke);
    an application error is an answer and resets nothing. After the ejection an endpoint is
    tried again; one more failure ejects it again at once, one success clears it.
    When every endpoint is ejected, all are used (a guess beats a certain failure)."""

    def __init__(self, rule: EjectionRule = EjectionRule()) -> None:
        self.rule = rule
        self._states: dict[str, _EndpointState] = {}
        self._next: dict[tuple[str, ...], int] = {}

    def pick(self, endpoints: Sequence[str], now: float) -> str:
        if not endpoints:
            raise FastProxyError(Reason.UNAVAILABLE, "no endpoint for this service")
        key = tuple(endpoints)
        if len(key) == 1:
            return key[0]
        healthy = [e for e in key if not self.is_ejected(e, now)] or key
        turn = self._next.get(key, 0)
        self._next[key] = turn + 1
        return healthy[turn % len(healthy)]

    def is_ejected(self, endpoint: str, now: float) -> bool:
        state = self._states.get(endpoint)
        return state is not None and state.ejected_until > now

    def record_success(self, endpoint: str) -> None:
        state = self._states.get(endpoint)
        if state is not None and state.failures_in_a_row:
            state.failures_in_a_row = 0
            state.ejected_until = 0.0

    def record_transport_failure(self, endpoint: str, now: float) -> None:
        state = self._states.setdefault(endpoint, _EndpointState())
        state.failures_in_a_row += 1
        if state.failures_in_a_row >= self.rule.failures:
            state.ejected_until = now + self.rule.ejection_s


def channel_options(max_message_bytes: int) -> tuple[tuple[str, int], ...]:
    return (
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
    )


class UpstreamPool:
    """One grpc.aio channel per endpoint, created on first use and kept for the process's
    life (or until `close`). Channels to the in-proxies may use TLS (`credentials`)."""

    def __init__(self, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                 credentials: grpc.ChannelCredentials | None = None,
                 rule: EjectionRule = EjectionRule(),
                 extra_options: Sequence[tuple[str, str | int]] = ()) -> None:
        self.health = EndpointHealth(rule)
        self._options = (*channel_options(max_message_bytes), *extra_options)
        self._credentials = credentials
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._separate: dict[tuple[str, tuple[tuple[str, str | int], ...]], grpc.aio.Channel] = {}

    def _open(self, endpoint: str, options: Sequence[tuple[str, str | int]]
              ) -> grpc.aio.Channel:
        if self._credentials is None:
            return grpc.aio.insecure_channel(endpoint, options=options)
        return grpc.aio.secure_channel(endpoint, self._credentials, options=options)

    def channel(self, endpoint: str) -> grpc.aio.Channel:
        channel = self._channels.get(endpoint)
        if channel is None:
            channel = self._channels[endpoint] = self._open(endpoint, self._options)
        return channel

    def separate_channel(self, endpoint: str,
                         options: Sequence[tuple[str, str | int]]) -> grpc.aio.Channel:
        """A channel to `endpoint` on a connection of its own (grpc shares a connection
        between channels only when their options are equal: `grpc.use_local_subchannel_pool`
        makes sure), with the pool's credentials and `options`; kept and closed with the pool."""
        key = (endpoint, tuple(options))
        channel = self._separate.get(key)
        if channel is None:
            channel = self._separate[key] = self._open(
                endpoint, (*options, ("grpc.use_local_subchannel_pool", 1)))
        return channel

    def is_transport_failure(self, endpoint: str, code: grpc.StatusCode) -> bool:
        """UNAVAILABLE with the channel not READY is the transport's (connect refused, reset);
        UNAVAILABLE over a READY channel is the application's own answer."""
        if code != grpc.StatusCode.UNAVAILABLE:
            return False
        channel = self._channels.get(endpoint)
        if channel is None:
            return True
        return bool(channel.get_state(try_to_connect=False) != grpc.ChannelConnectivity.READY)

    async def close(self) -> None:
        channels = [*self._channels.values(), *self._separate.values()]
        self._channels, self._separate = {}, {}
        for channel in channels:
            await channel.close()


# What grpc.aio reports when a write of ours fails because the peer already ended the call.
_CORE_WRITE_FAILURE = "Internal error from Core"
# How long to wait for the status a peer really sent, once grpc has reported the above.
SETTLE_STATUS_S = 0.5


class StatusLog:
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
