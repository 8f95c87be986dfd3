"""Workarounds for grpc.aio shared by every host (proxies, SDK): reading a finished call's
status without an event loop turn; quieting grpc.aio's spurious wake-up errors when a
policy watch runs grpc.aio on a second event loop."""

from __future__ import annotations

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


class _SpuriousPollerWakeups(logging.Filter):
    """Drops asyncio's error record of a `BlockingIOError` raised by grpc.aio's
    `PollerCompletionQueue._handle_events`: with grpc.aio used from two event loops of one
    process (the app's, and the background loop of a policy watch), both loops watch grpc's
    notification socket, one reads the wake-up byte and runs every event (other loops' are
    handed to them), the other finds nothing to read and raises, which asyncio logs with a
    traceback (grpc/grpc#25364, grpc/grpc#42357; grpcio 1.78: about one record per 100
    calls). Nothing is lost; only that record is dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return not (isinstance(error, BlockingIOError)
                    and "PollerCompletionQueue._handle_events" in record.getMessage())


_POLLER_FILTER = _SpuriousPollerWakeups()


def quiet_spurious_poller_wakeups() -> None:
    """Installs the filter on the `asyncio` logger (once per process): called by the hosts
    that run grpc.aio on a background loop beside the app's (the SDK's and the embedded
    server's policy watch)."""
    logger = logging.getLogger("asyncio")
    if _POLLER_FILTER not in logger.filters:
        logger.addFilter(_POLLER_FILTER)
