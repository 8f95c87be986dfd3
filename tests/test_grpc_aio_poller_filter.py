"""grpcio 1.78's spurious poller reports are kept out of the log, and nothing else is
(fastproxy.hosting.grpc_aio)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from fastproxy.hosting.grpc_aio import quiet_spurious_poller_wakeups


class PollerCompletionQueue:
    """Named as grpc's: asyncio's report names the callback by its qualified name."""

    def _handle_events(self) -> None:
        raise BlockingIOError(11, "Resource temporarily unavailable")


def report(loop: asyncio.AbstractEventLoop, exception: BaseException) -> dict[str, Any]:
    handle = asyncio.Handle(PollerCompletionQueue()._handle_events, (), loop)
    return {"message": f"Exception in callback {handle!r}", "exception": exception,
            "handle": handle}


def test_spurious_poller_reports_are_dropped_and_every_other_error_still_logged(
        caplog: pytest.LogCaptureFixture) -> None:
    quiet_spurious_poller_wakeups()
    quiet_spurious_poller_wakeups()  # once per process: no second filter
    assert len(logging.getLogger("asyncio").filters) == 1
    loop = asyncio.new_event_loop()  # the default exception handler logs to "asyncio"
    try:
        with caplog.at_level(logging.ERROR, logger="asyncio"):
            loop.call_exception_handler(report(loop, BlockingIOError(11, "again")))
            loop.call_exception_handler(report(loop, OSError(9, "Bad file descriptor")))
            # a handle cancelled meanwhile: only the traceback still names grpc's callback
            try:
                PollerCompletionQueue()._handle_events()
            except BlockingIOError as raised:
                caught = raised
            cancelled = asyncio.Handle(print, (), loop)
            cancelled.cancel()
            loop.call_exception_handler({"message": "Exception in callback None()",
                                         "exception": caught, "handle": cancelled})
            assert caplog.records == []  # the logger's filter dropped them

            real = RuntimeError("a real failure in the same callback")
            loop.call_exception_handler(report(loop, real))
            refused = OSError(111, "Connection refused")
            loop.call_exception_handler(report(loop, refused))
            elsewhere = BlockingIOError(11, "x")
            loop.call_exception_handler({"message": "Exception in callback print()",
                                         "exception": elsewhere,
                                         "handle": asyncio.Handle(print, (), loop)})
            assert [r.exc_info[1] for r in caplog.records if r.exc_info] == [
                real, refused, elsewhere]
    finally:
        loop.close()
