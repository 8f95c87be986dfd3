"""Shared fixtures: free ports, real Center processes on loopback, and a raw WatchPolicy client.

- `free_port()`: a TCP port on 127.0.0.1 that was free a moment ago.
- `start_center` fixture: `start_center(*flags, store="memory://", credentials=None, env=None)`
  starts `python -m center_svc --listen 127.0.0.1:PORT --store STORE *flags`, waits until
  grpc.health.v1 reports SERVING (or fails the test with the Center's log if it exits
  first) and returns a `CenterProcess`. At teardown every Center still running gets SIGTERM
  and must exit 0. `credentials` are the channel credentials the health check needs (TLS).
- `center.watch(metadata=(), credentials=None)` gives a `WatchClient` that speaks WatchPolicy
  by hand. `hello(...)` opens the stream; `next_response(timeout)` returns the raw bytes of
  the next WatchResponse and the parsed message; `next_snapshot(timeout)`;
  `expect_silence(seconds)`; `ack`, `ack_snapshot`, `nack`, `register`; `close()`
  half-closes the request stream; `final_code(timeout)` is the status the stream ended with.
- `wait_until(predicate, timeout, what=...)`: polls with a deadline instead of sleeping.
- `etcd_cluster` (module scope): one real etcd member on loopback (tests/support/etcd.py).
"""

from __future__ import annotations

import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import grpc
import pytest
from support.etcd import EtcdCluster, etcd_available
from support.server_helpers import SERVING, health_status

from fastproxy.v1 import center_pb2, center_pb2_grpc, policy_pb2

STARTUP_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 15.0
WATCH_METHOD = "/fastproxy.v1.Center/WatchPolicy"
Metadata = Sequence[tuple[str, str]]


def free_port() -> int:
    """A port on 127.0.0.1 free at the time of the call (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until(predicate: object, timeout: float, interval: float = 0.05,
               what: str = "condition") -> None:
    """Polls `predicate()` until it is truthy; fails the test after `timeout` seconds."""
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.1f} s waiting for {what}")
        time.sleep(interval)


@dataclass
class CenterProcess:
    """A running `python -m center_svc`; `address` is its 127.0.0.1:PORT."""

    proc: subprocess.Popen[bytes]
    address: str
    log_path: Path
    credentials: grpc.ChannelCredentials | None = None
    channels: list[grpc.Channel] = field(default_factory=list)
    watchers: list[WatchClient] = field(default_factory=list)

    def args(self, *extra: str) -> list[str]:
        """`fastproxy` CLI arguments that talk to this Center, then `extra`."""
        return ["--center", self.address, *extra]

    def log(self) -> str:
        """Everything the Center wrote to stderr so far."""
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def channel(self, credentials: grpc.ChannelCredentials | None = None,
                options: Sequence[tuple[str, str]] = ()) -> grpc.Channel:
        """A channel to this Center (closed at teardown): TLS when credentials are given."""
        creds = credentials or self.credentials
        opened = (grpc.secure_channel(self.address, creds, options=list(options)) if creds
                  else grpc.insecure_channel(self.address))
        self.channels.append(opened)
        return opened

    def stub(self, credentials: grpc.ChannelCredentials | None = None
             ) -> center_pb2_grpc.CenterStub:
        return center_pb2_grpc.CenterStub(self.channel(credentials))

    def watch(self, metadata: Metadata = (),
              credentials: grpc.ChannelCredentials | None = None) -> WatchClient:
        """A new WatchClient on its own channel (call `.hello(...)` to open the stream)."""
        watcher = WatchClient(self.channel(credentials), metadata)
        self.watchers.append(watcher)
        return watcher

    def terminate(self, timeout: float = STOP_TIMEOUT_S) -> int:
        """SIGTERM, then the exit code (the test fails if it does not exit in time)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            pytest.fail(f"center did not exit within {timeout} s of SIGTERM:\n{self.log()}")

    def kill(self) -> None:
        """SIGKILL and reap."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=STOP_TIMEOUT_S)

    def close_channels(self) -> None:
        for watcher in self.watchers:
            watcher.close()
        for opened in self.channels:
            opened.close()
        self.channels.clear()


class StartCenter(Protocol):
    def __call__(self, *flags: str, store: str = "memory://",
                 credentials: grpc.ChannelCredentials | None = None,
                 env: dict[str, str] | None = None,
                 port: int | None = None) -> CenterProcess: ...


def launch_center(flags: Sequence[str], log_path: Path, *, store: str = "memory://",
                  credentials: grpc.ChannelCredentials | None = None,
                  env: dict[str, str] | None = None, port: int | None = None,
                  cwd: Path | None = None) -> CenterProcess:
    """Starts a Center and waits for SERVING; fails the test with its log if it exits."""
    address = f"127.0.0.1:{port or free_port()}"
    command = [sys.executable, "-m", "center_svc", "--listen", address, "--store", store,
               *flags]
    with log_path.open("ab") as log_file:
        proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log_file,
                                stderr=log_file, env={**os.environ, **(env or {})}, cwd=cwd)
    center = CenterProcess(proc, address, log_path, credentials)
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while health_status(address, credentials=credentials) != SERVING:
        if proc.poll() is not None:
            pytest.fail(f"center exited with {proc.returncode} before serving:\n{center.log()}")
        if time.monotonic() > deadline:
            center.kill()
            pytest.fail(f"center not SERVING within {STARTUP_TIMEOUT_S} s:\n{center.log()}")
        time.sleep(0.05)
    return center


@pytest.fixture
def start_center(tmp_path: Path) -> Iterator[StartCenter]:
    """Factory fixture: `start_center(*flags, store=..., credentials=..., env=..., port=...)`.

    Each Center logs to tmp_path/center-N.log. At teardown every Center still running gets
    SIGTERM and must exit 0 (a Center the test killed itself is only reaped).
    """
    started: list[CenterProcess] = []

    def start(*flags: str, store: str = "memory://",
              credentials: grpc.ChannelCredentials | None = None,
              env: dict[str, str] | None = None, port: int | None = None) -> CenterProcess:
        log_path = tmp_path / f"center-{len(started)}.log"
        center = launch_center(flags, log_path, store=store, credentials=credentials, env=env,
                               port=port)
        started.append(center)
        return center

    yield start
    failures = []
    for center in started:
        center.close_channels()
        if center.proc.poll() is None:
            code = center.terminate()
            if code != 0:
                failures.append(f"{center.address} exited {code} on SIGTERM:\n{center.log()}")
    assert not failures, "\n".join(failures)


# -- a raw WatchPolicy client ----------------------------------------------------------------

_END = object()


class WatchClient:
    """One WatchPolicy stream, driven by hand from a test (a thread reads the responses).

    Responses are kept as the raw bytes the node received, so a test can search them for
    secrets, alongside the parsed `WatchResponse`.
    """

    def __init__(self, channel: grpc.Channel, metadata: Metadata = ()) -> None:
        self._method = channel.stream_stream(
            WATCH_METHOD,
            request_serializer=center_pb2.WatchRequest.SerializeToString,
            response_deserializer=None,  # keep the raw bytes
        )
        self._metadata = tuple(metadata)
        self._requests: queue.Queue[object] = queue.Queue()
        self._responses: queue.Queue[object] = queue.Queue()
        self._call: grpc.Call | None = None
        self._reader: threading.Thread | None = None
        self.error: grpc.RpcError | None = None
        self.ended = threading.Event()
        self.received: list[bytes] = []

    def _request_iterator(self) -> Iterator[center_pb2.WatchRequest]:
        while True:
            item = self._requests.get()
            if item is _END:
                return
            assert isinstance(item, center_pb2.WatchRequest)
            yield item

    def _read(self) -> None:
        assert self._call is not None
        try:
            for raw in self._call:
                self.received.append(raw)
                self._responses.put(raw)
        except grpc.RpcError as exc:
            self.error = exc
        finally:
            self.ended.set()
            self._responses.put(_END)

    def hello(self, node_id: str, role: int, service: str, known_revision: int = 0,
              known_hash: str = "") -> WatchClient:
        """Opens the stream with a hello; returns self."""
        self._requests.put(center_pb2.WatchRequest(hello=center_pb2.NodeHello(
            node_id=node_id, role=role, service=service, known_revision=known_revision,
            known_hash=known_hash)))
        self._call = self._method(self._request_iterator(), metadata=self._metadata)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        return self

    def next_response(self, timeout: float = 5.0) -> tuple[bytes, center_pb2.WatchResponse]:
        """The next response's raw bytes and parsed form; fails the test on timeout or end."""
        try:
            item = self._responses.get(timeout=timeout)
        except queue.Empty:
            pytest.fail(f"no WatchResponse within {timeout} s")
        if item is _END:
            self._responses.put(_END)
            pytest.fail(f"watch stream ended instead: {self.error!r}")
        assert isinstance(item, bytes)
        return item, center_pb2.WatchResponse.FromString(item)

    def next_snapshot(self, timeout: float = 5.0) -> policy_pb2.SignedSnapshot:
        signed: policy_pb2.SignedSnapshot = self.next_response(timeout)[1].snapshot
        return signed

    def expect_silence(self, seconds: float) -> None:
        """Fails the test if anything (a response or the stream's end) arrives in `seconds`."""
        try:
            item = self._responses.get(timeout=seconds)
        except queue.Empty:
            return
        self._responses.put(item)
        what = "the stream ended" if item is _END else "a WatchResponse arrived"
        pytest.fail(f"expected nothing for {seconds} s but {what}")

    def ack(self, revision: int, content_hash: str) -> None:
        self._requests.put(center_pb2.WatchRequest(
            ack=center_pb2.Ack(revision=revision, content_hash=content_hash)))

    def ack_snapshot(self, signed: policy_pb2.SignedSnapshot) -> None:
        revision = policy_pb2.PolicySnapshot.FromString(signed.snapshot).revision
        self.ack(revision, signed.content_hash)

    def nack(self, revision: int, content_hash: str, error: str) -> None:
        self._requests.put(center_pb2.WatchRequest(
            nack=center_pb2.Nack(revision=revision, content_hash=content_hash, error=error)))

    def register(self, address: str, lease_seconds: int) -> None:
        self._requests.put(center_pb2.WatchRequest(
            register=center_pb2.Register(address=address, lease_seconds=lease_seconds)))

    def close(self) -> None:
        """Ends the request stream (the node says goodbye)."""
        self._requests.put(_END)

    def cancel(self) -> None:
        if self._call is not None:
            self._call.cancel()

    def final_code(self, timeout: float = 5.0) -> grpc.StatusCode:
        """The status the stream ended with (OK when it ended without error)."""
        if not self.ended.wait(timeout):
            pytest.fail(f"watch stream did not end within {timeout} s")
        if self.error is None:
            return grpc.StatusCode.OK
        code: grpc.StatusCode = self.error.code()
        return code



# -- etcd ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def etcd_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    """One real etcd member on loopback for the test module (each test takes its own key
    prefix with `support.etcd.unique_prefix`); killed at teardown."""
    if not etcd_available():
        pytest.skip("etcd is not installed (apt-get install etcd-server)")
    cluster = EtcdCluster(tmp_path_factory.mktemp("etcd"), size=1)
    try:
        yield cluster.start()
    finally:
        cluster.stop()
