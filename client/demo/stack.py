"""Real FastProxy processes on free loopback ports, started in order and stopped cleanly.

Used by `fastproxy demo`; every process is `python -m <component> ...`, the same commands an
operator runs (and docker/compose.yaml runs in containers).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


class StackError(Exception):
    pass


def free_address() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


def wait_serving(address: str, timeout_s: float, alive: Callable[[], bool]) -> bool:
    """Polls grpc.health.v1 until SERVING; False if the deadline passes or `alive()` fails."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and alive():
        # A channel per check: one whose first attempts met a process not listening yet
        # stays failing for seconds after it is up (grpc's reconnect backoff; measured 5 s).
        with grpc.insecure_channel(address) as channel:
            try:
                answer = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=0.5)
                if answer.status == health_pb2.HealthCheckResponse.SERVING:
                    return True
            except grpc.RpcError:
                pass
        time.sleep(0.05)
    return False


@dataclass
class Component:
    name: str
    address: str
    argv: list[str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    _log: IO[bytes] | None = field(default=None, repr=False)

    def start(self, env: dict[str, str]) -> None:
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen([sys.executable, "-m", *self.argv], env=env,
                                        stdout=self._log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def last_log_line(self) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return lines[-1] if lines else ""

    def stop(self, grace_s: float) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(grace_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._log is not None:
            self._log.close()
        return self.process.returncode


class Stack:
    """Starts components one after another, each once healthy; stops them in reverse."""

    def __init__(self, workdir: Path, progress: Callable[[str], None]) -> None:
        self.workdir = workdir
        self.progress = progress
        self.components: list[Component] = []
        self.env = dict(os.environ, PYTHONUNBUFFERED="1")

    def start(self, name: str, address: str, argv: Sequence[str],
              timeout_s: float = 20.0) -> Component:
        component = Component(name, address, list(argv), self.workdir / f"{name}.log")
        self.components.append(component)
        self.progress(f"starting {name} on {address}")
        component.start(self.env)
        if not wait_serving(address, timeout_s, component.alive):
            raise StackError(f"{name} did not become healthy: {component.last_log_line()} "
                             f"(log: {component.log_path})")
        return component

    def stop(self, grace_s: float = 10.0) -> dict[str, int | None]:
        return {c.name: c.stop(grace_s) for c in reversed(self.components)}

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
