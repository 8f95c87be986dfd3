"""`python -m proxy_svc`: an in-proxy or out-proxy (see --help)."""

from __future__ import annotations

import ctypes
import os

M_ARENA_MAX = -8  # glibc's mallopt parameter
MALLOC_ARENAS = 2


def cap_malloc_arenas(arenas: int = MALLOC_ARENAS) -> bool:
    """Caps glibc's malloc arenas, before grpc starts its threads.

    Why: glibc gives a thread that allocates while another holds the arena a new arena, up to
    8 per core, each keeping its freed memory; grpc's poller and executor threads each end up
    with one, which shows as resident memory that grows under load and is never returned.
    Two arenas (the event loop's and one for grpc's threads) keep the proxy's peak smaller at
    no measurable CPU cost. `MALLOC_ARENA_MAX` in the environment, if set, wins (glibc reads
    it itself). False where there is no glibc `mallopt` (e.g. musl)."""
    if "MALLOC_ARENA_MAX" in os.environ:
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_ARENA_MAX, arenas))


if __name__ == "__main__":
    cap_malloc_arenas()

import asyncio  # noqa: E402  (after the arena cap: nothing below may start a thread first)
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from collections.abc import Coroutine  # noqa: E402
from typing import Any  # noqa: E402

from fastproxy.hosting.service_main import run_service, telemetry_for  # noqa: E402
from proxy_svc.app import StartupError, serve  # noqa: E402
from proxy_svc.config import PROG, ProxyConfig, parse_config  # noqa: E402


def run_workers(config: ProxyConfig, argv: list[str]) -> int:
    """`--workers N`: N copies of this process on one port (SO_REUSEPORT, grpc's default on
    Linux). Signals are passed on; the exit status is the worst of theirs."""
    children = [
        subprocess.Popen([sys.executable, "-m", "proxy_svc", *argv, "--workers", "1",
                          "--node-id", f"{config.node.node_id}-w{index}"])
        for index in range(config.workers)
    ]

    def forward(signum: int, _frame: object) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    return max(child.wait() for child in children)


def run_event_loop(main: Coroutine[Any, Any, None]) -> None:
    """Runs the proxy on uvloop when it is installed (`FASTPROXY_EVENT_LOOP=asyncio` keeps
    the standard loop): the loop runs every grpc.aio callback of every call, and uvloop's
    costs less per callback (measured in docs/benchmarks.md)."""
    if os.environ.get("FASTPROXY_EVENT_LOOP", "uvloop") != "asyncio":
        try:
            import uvloop
        except ImportError:
            pass
        else:
            uvloop.run(main)
            return
    asyncio.run(main)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    config = parse_config(args)
    if config.workers > 1:
        return run_workers(config, _without_flags(args, ("--workers", "--node-id")))
    node = config.node
    return run_service(PROG, log_level=node.log_level, log_format=node.log_format,
                       serve=lambda telemetry: serve(config, telemetry),
                       startup_errors=(StartupError,), run=run_event_loop,
                       telemetry=telemetry_for(f"fastproxy-{config.role.value}-proxy",
                                               node.listen, node.metrics_port))


def _without_flags(argv: list[str], flags: tuple[str, ...]) -> list[str]:
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        name = arg.split("=", 1)[0]
        if name in flags:
            skip = "=" not in arg
            continue
        out.append(arg)
    return out


if __name__ == "__main__":
    sys.exit(main())
