"""A workaround for grpc.aio shared by every host (proxies, SDK): reading a finished call's
status without an event loop turn."""

from __future__ import annotations

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
