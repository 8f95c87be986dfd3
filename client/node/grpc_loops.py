"""grpc.aio with more than one event loop in a process.

An app on grpc.aio that embeds FastProxy (`aio_client_interceptors`, `aio_server_interceptors`)
runs two loops that use grpc.aio: its own, and the one our policy watch runs on
(`source.shared_loop`). grpc's poller wakes every such loop when a completion is ready; one
reads the wake-up byte and the others fail to, which grpcio before 1.80 lets through as
`Exception in callback PollerCompletionQueue._handle_events ... BlockingIOError` (grpc/grpc
#25364; caught by grpc itself from 1.80 on). Nothing is lost: the loop that read the byte
handles the completions. The same callback on a loop still running when grpc closed its
poller's socket at exit reports `OSError: [Errno 9] Bad file descriptor`: nothing is left to
read then either. We pin grpcio 1.78 (the fastest for our call shape,
docs/benchmarks.md), so this filter keeps that line out of the app's log, on the loops we
run and on the app's loop when we are set up inside it. Every other exception reaches the
loop's own handler as before.
"""

from __future__ import annotations

import asyncio
import errno
import weakref
from typing import Any

_quieted: weakref.WeakSet[asyncio.AbstractEventLoop] = weakref.WeakSet()
_SPURIOUS = frozenset({errno.EAGAIN, errno.EWOULDBLOCK, errno.EBADF})


def is_spurious_wakeup(context: dict[str, Any]) -> bool:
    """grpc's poller lost a wake-up byte to another loop, or its socket is closed (and
    nothing else)."""
    exception = context.get("exception")
    if not isinstance(exception, OSError) or exception.errno not in _SPURIOUS:
        return False
    if "PollerCompletionQueue._handle_events" in repr(context.get("handle")):
        return True
    # A handle cancelled meanwhile no longer names its callback; the traceback still does.
    trace = exception.__traceback__
    while trace is not None:
        code = trace.tb_frame.f_code
        # grpc's Cython frame: co_name "grpc._cython.cygrpc.PollerCompletionQueue._handle_events"
        if "PollerCompletionQueue._handle_events" in f"{code.co_name} {code.co_qualname}":
            return True
        trace = trace.tb_next
    return False


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
