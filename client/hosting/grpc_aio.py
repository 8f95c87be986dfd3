"""Two workarounds for grpc.aio behaviours, shared by every host (proxies, embedded server,
SDK): reading a finished call's status without an event loop turn, and draining a client's
requests before a refusal."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import grpc

# Before refusing, read what the client already sent, for at most this long (see `drain`).
REFUSAL_DRAIN_S = 0.1


def value_now(coroutine: Any) -> Any:
    """The result of a grpc.aio call accessor (`code()`, `details()`, `trailing_metadata()`)
    that already has it (the call is done), read without an event loop turn, e.g. in a done
    callback; None if it would have to wait."""
    try:
        coroutine.send(None)
    except StopIteration as finished:
        return finished.value
    coroutine.close()
    return None


async def drain(requests: AsyncIterator[Any], limit_s: float = REFUSAL_DRAIN_S) -> None:
    """Reads and drops the client's request messages until it half-closes, for at most
    `limit_s`, so that a refusal does not end the stream under a write in flight.

    Why: a grpc.aio client whose write fails because the server already ended the stream
    reports INTERNAL "Internal error from Core" instead of the status the server sent
    (grpc/grpc#36066, grpcio 1.85; measured: 62 of 200 refused calls from an aio client).
    The out-proxy's hop to the in-proxy is such a client, so without this a `denied` or
    `rate_limited` of the in-proxy reached the app as INTERNAL, without our trailers.
    """
    async def read_all() -> None:
        async for _ in requests:
            pass

    with contextlib.suppress(asyncio.TimeoutError, grpc.RpcError, StopAsyncIteration,
                             asyncio.InvalidStateError):
        await asyncio.wait_for(read_all(), limit_s)
