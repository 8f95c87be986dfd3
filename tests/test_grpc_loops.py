"""grpcio 1.78's spurious poller wake-up report is kept out of an app's log, and nothing else
is (fastproxy.node.grpc_loops)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

import fastproxy  # noqa: F401  (the package's import path)
from fastproxy.node.grpc_loops import quiet_running_loop, quiet_spurious_wakeups
from fastproxy.node.source import shared_loop


class PollerCompletionQueue:
    """Named as grpc's: the report names the callback by its qualified name."""

    def _handle_events(self) -> None:
        raise BlockingIOError(11, "Resource temporarily unavailable")


def report(loop: asyncio.AbstractEventLoop, exception: BaseException) -> dict[str, Any]:
    handle = asyncio.Handle(PollerCompletionQueue()._handle_events, (), loop)
    return {"message": f"Exception in callback {handle!r}", "exception": exception,
            "handle": handle}


def test_the_spurious_wakeup_is_dropped_and_every_other_error_still_reported(
        caplog: pytest.LogCaptureFixture) -> None:
    loop = asyncio.new_event_loop()
    try:
        seen: list[dict[str, Any]] = []
        loop.set_exception_handler(lambda _loop, context: seen.append(context))
        quiet_spurious_wakeups(loop)
        quiet_spurious_wakeups(loop)  # once per loop: no handler wraps another
        loop.call_exception_handler(report(loop, BlockingIOError(11, "again")))
        loop.call_exception_handler(report(loop, OSError(9, "Bad file descriptor")))
        assert seen == []
        other = report(loop, RuntimeError("a real failure in the same callback"))
        loop.call_exception_handler(other)
        refused = report(loop, OSError(111, "Connection refused"))
        loop.call_exception_handler(refused)
        blocking_elsewhere = {"message": "x", "exception": BlockingIOError(11, "x"),
                              "handle": asyncio.Handle(print, (), loop)}
        loop.call_exception_handler(blocking_elsewhere)
        assert seen == [other, refused, blocking_elsewhere]

        # a handle cancelled meanwhile no longer names its callback; its traceback does
        try:
            PollerCompletionQueue()._handle_events()
        except BlockingIOError as raised:
            caught = raised
        cancelled = asyncio.Handle(print, (), loop)
        cancelled.cancel()
        loop.call_exception_handler({"message": "Exception in callback None()",
                                     "exception": caught, "handle": cancelled})
        assert seen == [other, refused, blocking_elsewhere]
    finally:
        loop.close()

    plain = asyncio.new_event_loop()  # no handler of the app's: the default one logs the rest
    try:
        quiet_spurious_wakeups(plain)
        with caplog.at_level(logging.ERROR, logger="asyncio"):
            plain.call_exception_handler(report(plain, BlockingIOError(11, "again")))
            assert caplog.records == []
            plain.call_exception_handler(report(plain, RuntimeError("kept")))
        assert [r.exc_info[1] for r in caplog.records if r.exc_info] != []
    finally:
        plain.close()


def test_our_loop_and_the_apps_running_loop_are_quieted(
        caplog: pytest.LogCaptureFixture) -> None:
    ours = shared_loop()
    assert ours.get_exception_handler() is not None

    async def in_the_app() -> None:
        quiet_running_loop()
        loop = asyncio.get_running_loop()
        with caplog.at_level(logging.ERROR, logger="asyncio"):
            loop.call_exception_handler(report(loop, BlockingIOError(11, "again")))
        assert caplog.records == []

    asyncio.run(in_the_app())
