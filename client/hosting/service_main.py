"""What `python -m center_svc`, `proxy_svc` and `server_svc` share once their flags are parsed:
logging, telemetry (set up one way for every process), the event loop, a start-up failure as
one line with exit status 1, and the graceful stop on SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import sys
from collections.abc import Callable, Coroutine, Iterable
from typing import Any

import grpc
from grpc_health.v1 import health

from fastproxy.hosting.grpc_aio import quiet_spurious_poller_wakeups
from fastproxy.telemetry.logs import configure_logging
from fastproxy.telemetry.setup import (
    TELEMETRY_OFF,
    Telemetry,
    TelemetryConfigError,
    configure_telemetry,
)

Main = Coroutine[Any, Any, None]
LATE_FLUSH_S = 1.0
# grpc lets a server share its port with another (SO_REUSEPORT, on by default): a second
# Center or server started by mistake on a taken address would then serve half of the
# connections. Processes that are one per address take the port alone.
EXCLUSIVE_PORT = ("grpc.so_reuseport", 0)


def why_not_listening(address: str) -> str:
    """Why `address` ("HOST:PORT") cannot be listened on, in the system's words (grpc only
    says "Failed to bind"): a plain bind of it, which fails the same way."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    try:
        infos = socket.getaddrinfo(host or None, int(port), type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
    except (OSError, ValueError) as exc:
        return str(exc)
    for family, kind, proto, _, sockaddr in infos:
        try:
            with socket.socket(family, kind, proto) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                probe.bind(sockaddr)
        except OSError as exc:
            return (exc.strerror or str(exc)).lower()
    return "grpc could not bind it"


def telemetry_for(service_name: str, listen: str,
                  metrics_port: int | None) -> Callable[[], Telemetry]:
    """The telemetry a service process sets up: from the OTEL_* environment, and Prometheus
    on `--metrics-port` at the host of `--listen`."""
    host = listen.rpartition(":")[0].strip("[]") or "127.0.0.1"
    return lambda: configure_telemetry(service_name, metrics_port=metrics_port,
                                       metrics_host=host)


def run_service(prog: str, *, log_level: str, log_format: str,
                serve: Callable[[Telemetry], Main],
                startup_errors: tuple[type[Exception], ...],
                telemetry: Callable[[], Telemetry] | None = None,
                run: Callable[[Main], None] = asyncio.run) -> int:
    """Runs `serve(telemetry)` to its end; 0 when it ended cleanly, 1 with one line on
    stderr when it could not start."""
    configure_logging(log_level, log_format)
    installed = TELEMETRY_OFF
    if telemetry is not None:
        try:
            installed = telemetry()
        except (TelemetryConfigError, OSError) as exc:
            sys.stderr.write(f"{prog}: error: telemetry: {exc}\n")
            return 1
    try:
        run(serve(installed))
    except startup_errors as exc:
        sys.stderr.write(f"{prog}: error: {exc}\n")
        return 1
    finally:
        # Done by `serve_until_stopped` within the grace period; here only for a service
        # that ended another way (then briefly: the SDK's own flush at exit is unbounded).
        installed.shutdown(LATE_FLUSH_S)
    return 0


def stop_on_signals() -> asyncio.Event:
    """An event set by the first SIGTERM or SIGINT (handlers installed now, on this loop).
    grpcio 1.78's spurious poller reports are dropped from the log (`grpc_aio`)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    quiet_spurious_poller_wakeups()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    return stop


async def serve_until_stopped(stop: asyncio.Event, server: grpc.aio.Server,
                              health_servicer: health.aio.HealthServicer, grace_s: float,
                              log: logging.Logger, *, tasks: Iterable[asyncio.Task[Any]] = (),
                              draining: Callable[[], None] | None = None,
                              telemetry: Telemetry | None = None) -> None:
    """Waits for `stop`, then stops gracefully: health says NOT_SERVING, `draining` runs
    (e.g. telling tunnels or watch streams to go), the server stops accepting and lets
    in-flight calls finish within `grace_s`, `tasks` are cancelled, and `telemetry` exports
    what it holds in what is left of `grace_s` (an unreachable collector does not hold the
    stop up)."""
    loop = asyncio.get_running_loop()
    try:
        await stop.wait()
    finally:
        deadline = loop.time() + grace_s
        log.info("stopping: draining in-flight calls for up to %.1f s", grace_s)
        await health_servicer.enter_graceful_shutdown()
        if draining is not None:
            draining()
        await server.stop(grace_s)
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if telemetry is not None:
            await asyncio.to_thread(telemetry.shutdown, max(deadline - loop.time(), 0.0))
