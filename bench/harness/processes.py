"""Processes on loopback for the harness: start with a log file, wait until ready, stop."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from harness.procstat import process_tree

START_TIMEOUT_S = 30.0


class StartError(RuntimeError):
    pass


# Ports are picked below the kernel's ephemeral range: a port the kernel hands out itself
# (bind to port 0) is free now, but may go to one of the many outgoing connections the
# harness's processes open before the process meant to listen on it binds it (seen in CI:
# a proxy's --metrics-port, "Address already in use").
PORT_FLOOR = 10_000


def _ephemeral_floor() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as ports:
            return int(ports.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768


def free_port() -> int:
    """A port on 127.0.0.1 nothing is bound to, outside the ephemeral range when there is room
    below it."""
    floor = _ephemeral_floor()
    tries = 100 if floor > PORT_FLOOR else 0
    for _ in range(tries):
        port = random.randrange(PORT_FLOOR, floor)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        bound: int = sock.getsockname()[1]
        return bound


@dataclass
class Spawned:
    """A process the harness started; `address` is where it serves."""

    name: str
    process: subprocess.Popen[bytes]
    address: str
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_tail(self, chars: int = 1500) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            raise StartError(f"{self.name} exited with {self.process.returncode}:\n"
                             f"{self.log_tail()}")


def base_env() -> dict[str, str]:
    """This process's environment without any `OTEL_*` variable: a process of the harness
    exports telemetry only when its setup says so (`observed`)."""
    return {key: value for key, value in os.environ.items() if not key.startswith("OTEL_")}


def spawn(name: str, argv: list[str], address: str, log_dir: Path,
          env: dict[str, str] | None = None) -> Spawned:
    """Starts `argv` with `base_env()` plus `env`, output to `log_dir/NAME.log`."""
    log_path = log_dir / f"{name}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, env={**base_env(), **(env or {})})
    return Spawned(name, process, address, log_path)


def wait_listening(spawned: Spawned, timeout_s: float = START_TIMEOUT_S) -> None:
    host, _, port = spawned.address.rpartition(":")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        spawned.check_alive()
        try:
            with socket.create_connection((host, int(port)), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise StartError(f"{spawned.name} does not listen on {spawned.address}:\n"
                     f"{spawned.log_tail()}")


def wait_serving(spawned: Spawned, timeout_s: float = START_TIMEOUT_S,
                 connections: int = 1) -> None:
    """Polls grpc.health.v1 until SERVING (a proxy is SERVING once its policy is loaded), on
    `connections` new connections in a row (with `--workers N` each may reach another
    worker)."""
    deadline = time.monotonic() + timeout_s
    for _ in range(connections):
        _wait_serving_once(spawned, deadline)


def _wait_serving_once(spawned: Spawned, deadline: float) -> None:
    # a local subchannel pool: a new connection, not one shared with an earlier channel; and
    # a channel per check: one whose first check found nothing listening stays in grpc's
    # reconnect backoff for seconds after the process is up
    options = (("grpc.use_local_subchannel_pool", 1),)
    while time.monotonic() < deadline:
        spawned.check_alive()
        with grpc.insecure_channel(spawned.address, options=options) as channel:
            try:
                reply = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=1.0)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
        time.sleep(0.1)
    raise StartError(f"{spawned.name} not SERVING on {spawned.address}:\n{spawned.log_tail()}")


def stop(spawned: Spawned, timeout_s: float = 10.0) -> None:
    """SIGTERM, then SIGKILL for the process and any child of it still alive (workers)."""
    if spawned.process.poll() is not None:
        return
    tree = process_tree(spawned.pid)
    spawned.process.send_signal(signal.SIGTERM)
    try:
        spawned.process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        spawned.process.kill()
        spawned.process.wait(timeout_s)
    for pid in tree[1:]:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
