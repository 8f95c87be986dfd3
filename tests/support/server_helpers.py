"""Helpers for the server_svc tests: service processes on loopback, the demo policy, and
one call of each Echo kind.

- `ServiceProcess`: `python -m MODULE ARGS` (server_svc or proxy_svc) logging to a file;
  `wait_serving()` polls grpc.health.v1 until SERVING (or fails with the log);
  `terminate()` sends SIGTERM and returns the exit code.
- `demo_policy_yaml(...)`: song_service (serves demo.v1.Echo and demo.v1.Catalog; ed25519
  identity, AES-256-GCM) called by chat_service (hmac identity) on `chat_methods`; fresh
  random keys; no static endpoints unless given.
- `echo_all_kinds(channel)`: one call of each RPC kind with metadata; returns what came back.
- `SyncEchoServicer`: demo.v1.Echo for a synchronous grpc.server.
"""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from grpc_health.v1 import health_pb2, health_pb2_grpc

from fastproxy.v1 import demo_pb2, demo_pb2_grpc

START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 15.0
CALLEE = "song_service"
CALLER = "chat_service"
SERVING = health_pb2.HealthCheckResponse.SERVING


def health_status(address: str, service: str = "", timeout: float = 0.5,
                  credentials: grpc.ChannelCredentials | None = None) -> int | None:
    """The grpc.health.v1 status of `service` at `address` (None when it does not answer),
    on a channel of its own: one whose first check found nothing listening would stay in
    grpc's reconnect backoff for seconds."""
    channel = (grpc.secure_channel(address, credentials) if credentials
               else grpc.insecure_channel(address))
    with channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError:
            return None
        status: int = reply.status
        return status


@dataclass
class ServiceProcess:
    module: str
    args: tuple[str, ...]
    address: str
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ServiceProcess:
        with self.log_path.open("ab") as log_file:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", self.module, *self.args], stdin=subprocess.DEVNULL,
                stdout=log_file, stderr=log_file)
        return self

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def wait_serving(self, timeout: float = START_TIMEOUT_S) -> ServiceProcess:
        deadline = time.monotonic() + timeout
        while health_status(self.address) != SERVING:
            assert self.proc is not None
            if self.proc.poll() is not None:
                pytest.fail(f"{self.module} exited ({self.proc.returncode}):\n{self.log()}")
            if time.monotonic() > deadline:
                pytest.fail(f"{self.module} {self.address} not SERVING within {timeout} s:\n"
                            f"{self.log()}")
            time.sleep(0.05)
        return self

    def terminate(self, timeout: float = STOP_TIMEOUT_S) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            pytest.fail(f"{self.module} did not exit within {timeout} s of SIGTERM:\n"
                        f"{self.log()}")


class Processes:
    """Starts service processes; `stop_all()` (fixture teardown) SIGTERMs each still running
    and fails if one does not exit 0."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.started: list[ServiceProcess] = []

    def start(self, module: str, address: str, *args: str, wait: bool = True
              ) -> ServiceProcess:
        """`python -m module --listen address *args`, waiting for SERVING unless told."""
        name = f"{module}-{len(self.started)}.log"
        process = ServiceProcess(module, ("--listen", address, *args), address,
                                 self.log_dir / name).start()
        self.started.append(process)
        return process.wait_serving() if wait else process

    def stop_all(self) -> None:
        failures = []
        for process in reversed(self.started):
            if process.proc is not None and process.proc.poll() is None:
                code = process.terminate()
                if code != 0:
                    failures.append(f"{process.module} exited {code}:\n{process.log()}")
        assert not failures, "\n".join(failures)


def _b64(material: bytes) -> str:
    return "base64:" + base64.b64encode(material).decode()


def demo_policy_yaml(*, song_endpoints: Sequence[str] = (),
                     chat_methods: Sequence[str] = ("/demo.v1.Echo/*", "/demo.v1.Catalog/*"),
                     ) -> str:
    seed = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
        serialization.NoEncryption())
    endpoints = ", ".join(f'"{e}"' for e in song_endpoints)
    methods = ", ".join(f'"{m}"' for m in chat_methods)
    return "\n".join([
        "version: 1",
        "keys:",
        f'  song-id: {{type: ed25519, private: "{_b64(seed)}"}}',
        f'  song-enc: {{type: aes-256-gcm, secret: "{_b64(os.urandom(32))}"}}',
        f'  chat-id: {{type: hmac-sha256, secret: "{_b64(os.urandom(32))}"}}',
        "services:",
        f"  {CALLEE}:",
        "    grpc_services: [demo.v1.Echo, demo.v1.Catalog]",
        f"    endpoints: [{endpoints}]",
        "    identity: {key: song-id}",
        "    encrypt: {key: song-enc}",
        "    timeout_ms: 5000",
        "    allow:",
        f"      - caller: {CALLER}",
        f"        methods: [{methods}]",
        f"  {CALLER}:",
        "    identity: {key: chat-id}",
        "",
    ])


@dataclass(frozen=True)
class EchoResults:
    unary: demo_pb2.EchoResponse
    unary_initial: tuple[tuple[str, str | bytes], ...]
    unary_trailers: tuple[tuple[str, str | bytes], ...]
    client_stream: demo_pb2.EchoResponse
    server_stream: list[demo_pb2.EchoResponse]
    bidi: list[demo_pb2.EchoResponse]


def echo_all_kinds(channel: grpc.Channel, payload: bytes = b"\x00payload\xff",
                   timeout: float = 10.0) -> EchoResults:
    echo = demo_pb2_grpc.EchoStub(channel)
    response, call = echo.Unary.with_call(
        demo_pb2.EchoRequest(text="hello", payload=payload),
        metadata=(("x-echo-color", "blue"),), timeout=timeout)
    client_stream = echo.ClientStream(
        iter([demo_pb2.EchoRequest(text=t, payload=payload) for t in ("a", "b", "c")]),
        timeout=timeout)
    server_stream = list(echo.ServerStream(
        demo_pb2.EchoRequest(text="s", payload=payload, repeat=3), timeout=timeout))
    bidi = list(echo.Bidi(
        iter([demo_pb2.EchoRequest(text="x", repeat=2), demo_pb2.EchoRequest(text="y")]),
        timeout=timeout))
    return EchoResults(
        unary=response,
        unary_initial=tuple((m.key, m.value) for m in call.initial_metadata()),
        unary_trailers=tuple((m.key, m.value) for m in call.trailing_metadata()),
        client_stream=client_stream, server_stream=server_stream, bidi=bidi)


def assert_echoed(results: EchoResults, payload: bytes = b"\x00payload\xff") -> None:
    assert (results.unary.text, results.unary.payload) == ("hello", payload)
    assert ("x-echo-color", "blue") in results.unary_initial
    assert ("x-echo-count", "1") in results.unary_trailers
    assert (results.client_stream.text, results.client_stream.payload,
            results.client_stream.index) == ("a b c", payload * 3, 3)
    assert [(r.text, r.payload, r.index) for r in results.server_stream] == [
        ("s", payload, 0), ("s", payload, 1), ("s", payload, 2)]
    assert [(r.text, r.index) for r in results.bidi] == [("x", 0), ("x", 1), ("y", 2)]


class SyncEchoServicer(demo_pb2_grpc.EchoServicer):
    """demo.v1.Echo for a synchronous grpc.server (same behaviour as server_svc's)."""

    def _echo_metadata(self, context: grpc.ServicerContext) -> None:
        context.send_initial_metadata(tuple(
            (k, v) for k, v in context.invocation_metadata() if k.startswith("x-echo-")))

    def Unary(self, request: demo_pb2.EchoRequest,
              context: grpc.ServicerContext) -> demo_pb2.EchoResponse:
        self._echo_metadata(context)
        context.set_trailing_metadata((("x-echo-count", "1"),))
        return demo_pb2.EchoResponse(text=request.text, payload=request.payload)

    def ClientStream(self, request_iterator: Iterator[demo_pb2.EchoRequest],
                     context: grpc.ServicerContext) -> demo_pb2.EchoResponse:
        requests = list(request_iterator)
        return demo_pb2.EchoResponse(text=" ".join(r.text for r in requests),
                                     payload=b"".join(r.payload for r in requests),
                                     index=len(requests))

    def ServerStream(self, request: demo_pb2.EchoRequest,
                     context: grpc.ServicerContext) -> Iterator[demo_pb2.EchoResponse]:
        for index in range(max(1, request.repeat)):
            yield demo_pb2.EchoResponse(text=request.text, payload=request.payload,
                                        index=index)

    def Bidi(self, request_iterator: Iterator[demo_pb2.EchoRequest],
             context: grpc.ServicerContext) -> Iterator[demo_pb2.EchoResponse]:
        index = 0
        for request in request_iterator:
            for _ in range(max(1, request.repeat)):
                yield demo_pb2.EchoResponse(text=request.text, payload=request.payload,
                                            index=index)
                index += 1
