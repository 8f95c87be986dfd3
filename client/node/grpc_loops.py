"""grpc.aio with more than one event loop in a process.

An app on grpc.aio that embeds FastProxy (`aio_client_interceptors`, `aio_server_interceptors`)
runs two loops that use grpc.aio: its own, and the one our policy watch runs on
(`source.shared_loop`). grpc's poller wakes every such loop when a completion is ready; one
reads the wake-up byte and the others fail to, which grpcio before 1.80 lets through as
`Exception in callback PollerCompletionQueue._handle_events ... BlockingIOError` (grpc/grpc
#25364; caught by grpc itself from 1.80 on). Nothing is lost: the loop that read the byte
handles the completions. We pin grpcio 1.78 (the fastest for our call shape,
docs/benchmarks.md), so this filter keeps that line out of the app's log, on the loops we
run and on the app's loop when we are set up inside it. Every other exception reaches the
loop's own handler as before.
"""

from __future__ import annotations

import asyncio
import weakref
from typing import Any

_quieted: weakref.WeakSet[asyncio.AbstractEventLoop] = weakref.WeakSet()


def is_spurious_wakeup(context: dict[str, Any]) -> bool:
    """grpc's poller lost a wake-up byte to another loop (and nothing else)."""
    return (isinstance(context.get("exception"), BlockingIOError)
            and "PollerCompletionQueue._handle_events" in repr(context.get("handle")))


def quiet_spurious_wakeups(loop: asyncio.AbstractEventLoop) -> None:
    """Drops `is_spurious_wakeup` reports on `loop`; passes every other one to the handler
    the loop had (or to its default handler). Once per loop."""
    if loop in _quieted:
        return
    _quieted.add(loop)
    previous = loop.get_exception_handler()

    def handle(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if is_spurious_wakeup(context):
            return
        if previous is not None:
            previous(loop, context)
        else:
            loop.default_exception_handler(context)

    loop.set_exception_handler(handle)


def quiet_running_loop() -> None:
    """`quiet_spurious_wakeups` on the loop running in this thread, if any."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return
    quiet_spurious_wakeups(loop)
