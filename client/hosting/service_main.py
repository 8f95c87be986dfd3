"""What `python -m center_svc`, `proxy_svc` and `server_svc` share once their flags are parsed:
logging, telemetry, the event loop, and a start-up failure as one line with exit status 1."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Coroutine
from typing import Any

from fastproxy.telemetry.logs import configure_logging
from fastproxy.telemetry.setup import TelemetryConfigError

Main = Coroutine[Any, Any, None]


def run_service(prog: str, *, log_level: str, log_format: str, serve: Callable[[], Main],
                startup_errors: tuple[type[Exception], ...],
                telemetry: Callable[[], object] | None = None,
                run: Callable[[Main], None] = asyncio.run) -> int:
    """Runs `serve()` to its end (SIGTERM/SIGINT handling is the service's); 0 when it ended
    cleanly, 1 with one line on stderr when it could not start."""
    configure_logging(log_level, log_format)
    if telemetry is not None:
        try:
            telemetry()
        except (TelemetryConfigError, OSError) as exc:
            sys.stderr.write(f"{prog}: error: telemetry: {exc}\n")
            return 1
    try:
        run(serve())
    except startup_errors as exc:
        sys.stderr.write(f"{prog}: error: {exc}\n")
        return 1
    return 0
