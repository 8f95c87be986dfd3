"""Before a host refuses a streaming call: read what the client already sent.

Why: a grpc.aio client whose write fails because the server already ended the stream reports
INTERNAL "Internal error from Core" instead of the status the server sent (grpc/grpc#36066,
grpcio 1.85; measured: 62 of 200 refused calls from an aio client). The out-proxy's hop to
the in-proxy is such a client, so without this a `denied` or `rate_limited` of the in-proxy
(or of an embedded server) reached the app as INTERNAL, without our trailers. Both twins
read and drop the client's messages until it half-closes, for at most `REFUSAL_DRAIN_S`.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc

REFUSAL_DRAIN_S = 0.1


async def drain(requests: AsyncIterator[Any], limit_s: float = REFUSAL_DRAIN_S) -> None:
    """The grpc.aio twin: reads on the event loop."""
    async def read_all() -> None:
        async for _ in requests:
            pass

    with contextlib.suppress(asyncio.TimeoutError, grpc.RpcError, StopAsyncIteration,
                             asyncio.InvalidStateError):
        await asyncio.wait_for(read_all(), limit_s)


def drain_blocking(requests: Iterator[Any] | None, limit_s: float = REFUSAL_DRAIN_S) -> None:
    """The sync-server twin: reads on a helper thread and waits for it at most `limit_s`
    (grpc's request iterator has no timeout of its own)."""
    if requests is None:
        return

    def read_all() -> None:
        with contextlib.suppress(Exception):
            for _ in requests:
                pass

    reader = threading.Thread(target=read_all, name="fastproxy-drain", daemon=True)
    reader.start()
    reader.join(limit_s)
