"""Workarounds for grpc.aio shared by every host (proxies, SDK): reading a finished call's
status without an event loop turn; quieting grpc.aio's spurious poller reports (a wake-up
lost to another event loop using grpc.aio in the process, its socket closed at exit)."""

from __future__ import annotations

import errno
import logging
from typing import Any


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


_SPURIOUS_ERRNOS = frozenset({errno.EAGAIN, errno.EWOULDBLOCK, errno.EBADF})
_POLLER_CALLBACK = "PollerCompletionQueue._handle_events"


def is_spurious_poller_report(error: BaseException | None, message: str) -> bool:
    """grpc.aio's poller callback lost a wake-up byte to another loop, or found its socket
    closed at exit (and nothing else)."""
    if not isinstance(error, OSError) or error.errno not in _SPURIOUS_ERRNOS:
        return False
    if _POLLER_CALLBACK in message:
        return True
    # A handle cancelled meanwhile no longer names its callback; the traceback still does
    # (grpc's Cython frame: co_name "grpc._cython.cygrpc.PollerCompletionQueue._handle_events").
    trace = error.__traceback__
    while trace is not None:
        code = trace.tb_frame.f_code
        if _POLLER_CALLBACK in f"{code.co_name} {code.co_qualname}":
            return True
        trace = trace.tb_next
    return False


class _SpuriousPollerWakeups(logging.Filter):
    """Drops asyncio's error record of grpc.aio's `PollerCompletionQueue._handle_events`
    failing to read its wake-up byte: with grpc.aio used from two event loops of one process
    (an app's own two, say; our policy watch no longer runs grpc.aio beside the app's loop:
    fastproxy.node.watch_stream), both loops watch grpc's
    notification socket, one reads the byte and runs every event (other loops' are handed
    to them), the other finds nothing to read and raises `BlockingIOError`, which asyncio logs
    with a traceback (grpc/grpc#25364, grpc/grpc#42357; grpcio 1.78: about one record per 100
    calls; grpc catches it itself from 1.80 on). At exit the same callback may find the socket
    closed (`EBADF`). Nothing is lost; only those records are dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return not is_spurious_poller_report(error, record.getMessage())


_POLLER_FILTER = _SpuriousPollerWakeups()


def quiet_spurious_poller_wakeups() -> None:
    """Installs the filter on the `asyncio` logger (once per process): called by every
    service (`stop_on_signals`), for the reports at exit."""
    logger = logging.getLogger("asyncio")
    if _POLLER_FILTER not in logger.filters:
        logger.addFilter(_POLLER_FILTER)
