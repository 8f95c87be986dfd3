"""Helpers for the telemetry tests: an OTLP receiver in the test process, and a real
server_svc, in-proxy and out-proxy (each its own process, each exporting to the receiver).

- `OtlpReceiver`: `TraceService` and `MetricsService` of opentelemetry-proto on a grpc server;
  keeps every span (with its resource's `service.name`) and every metric name it receives.
- `HttpOtlpReceiver`: the same over OTLP/HTTP (http.server; POST `/v1/traces` and
  `/v1/metrics` carrying the protobuf `Export...ServiceRequest`).
- `TelemetryStack`: chat_service (the test) -> out-proxy -> in-proxy -> server_svc for
  song_service; with `relay=True` a `RecordingRelay` (tests/support/dataplane.py) sits between the
  proxies and records what the out-proxy forwards. The processes run with no
  `OTEL_TRACES_SAMPLER`, i.e. FastProxy's default sampler (parent-based, 1% of root calls):
  a call the test's client sampled is traced at every hop, which the trace tests check.
  The policy allows `/demo.v1.Echo/*`, rate-limits `/demo.v1.Catalog/Count`
  to one call (burst 1, one token per 100 s) and allows nothing else of Catalog (denied).
  Both proxies serve Prometheus metrics; the in-proxy logs JSON lines.
"""

from __future__ import annotations

import base64
import contextlib
import http.server
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.message import Message
from opentelemetry.proto.collector.metrics.v1 import (
    metrics_service_pb2,
    metrics_service_pb2_grpc,
)
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.trace.v1 import trace_pb2
from prometheus_client.parser import text_string_to_metric_families

from support.dataplane import SERVING, RecordingRelay, free_address, health_status

CALLER = "chat_service"
CALLEE = "song_service"
START_TIMEOUT_S = 20.0


@dataclass(frozen=True)
class ReceivedSpan:
    service: str
    span: trace_pb2.Span

    @property
    def trace_id(self) -> str:
        return self.span.trace_id.hex()

    @property
    def span_id(self) -> str:
        return self.span.span_id.hex()

    @property
    def parent_id(self) -> str:
        return self.span.parent_span_id.hex()

    def attribute(self, key: str) -> Any:
        for kv in self.span.attributes:
            if kv.key == key:
                value = kv.value
                return getattr(value, value.WhichOneof("value") or "string_value")
        return None


def _service_name(resource: Any) -> str:
    for kv in resource.attributes:
        if kv.key == "service.name":
            return str(kv.value.string_value)
    return ""


class _Received:
    """What an OTLP receiver got: spans by trace, metric names by service."""

    def __init__(self) -> None:
        self.spans: list[ReceivedSpan] = []
        self.metric_names: dict[str, set[str]] = {}  # service.name -> metric names
        self.protocol = "grpc"
        self._lock = threading.Lock()

    def keep_spans(self, request: trace_service_pb2.ExportTraceServiceRequest) -> None:
        received = [ReceivedSpan(_service_name(rs.resource), span)
                    for rs in request.resource_spans
                    for ss in rs.scope_spans for span in ss.spans]
        with self._lock:
            self.spans.extend(received)

    def keep_metrics(self, request: metrics_service_pb2.ExportMetricsServiceRequest) -> None:
        with self._lock:
            for rm in request.resource_metrics:
                names = self.metric_names.setdefault(_service_name(rm.resource), set())
                names.update(m.name for sm in rm.scope_metrics for m in sm.metrics)

    def trace(self, trace_id: str) -> list[ReceivedSpan]:
        with self._lock:
            return [span for span in self.spans if span.trace_id == trace_id]

    def wait_trace(self, trace_id: str, services: set[str], timeout: float = 10.0
                   ) -> list[ReceivedSpan]:
        """The spans of `trace_id` once every service in `services` sent one."""
        deadline = time.monotonic() + timeout
        while True:
            spans = self.trace(trace_id)
            if services <= {span.service for span in spans}:
                return spans
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"trace {trace_id}: spans from {sorted({s.service for s in spans})}, "
                    f"wanted {sorted(services)}")
            time.sleep(0.05)


class OtlpReceiver(_Received, trace_service_pb2_grpc.TraceServiceServicer,
                   metrics_service_pb2_grpc.MetricsServiceServicer):
    """A real OTLP/gRPC endpoint (insecure, loopback)."""

    def __init__(self) -> None:
        super().__init__()
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(  # type: ignore[no-untyped-call]
            self, self._server)
        metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(  # type: ignore[no-untyped-call]
            self, self._server)
        self.port = self._server.add_insecure_port("127.0.0.1:0")

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> OtlpReceiver:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop(0)

    def Export(self, request: Any, context: Any) -> Any:
        if isinstance(request, trace_service_pb2.ExportTraceServiceRequest):
            self.keep_spans(request)
            return trace_service_pb2.ExportTraceServiceResponse()
        self.keep_metrics(request)
        return metrics_service_pb2.ExportMetricsServiceResponse()


class HttpOtlpReceiver(_Received):
    """A real OTLP/HTTP endpoint (binary protobuf, loopback), on its own thread. A body
    that is not the path's request fails the export with 400 (and the test with it: the
    spans never arrive); `posts` counts the requests by path."""

    def __init__(self) -> None:
        super().__init__()
        self.protocol = "http/protobuf"
        self.posts: dict[str, int] = {}
        self.content_types: set[str] = set()
        received = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with received._lock:
                    received.posts[self.path] = received.posts.get(self.path, 0) + 1
                    received.content_types.add(self.headers.get("Content-Type", ""))
                answer: Message
                try:
                    if self.path == "/v1/traces":
                        received.keep_spans(
                            trace_service_pb2.ExportTraceServiceRequest.FromString(body))
                        answer = trace_service_pb2.ExportTraceServiceResponse()
                    elif self.path == "/v1/metrics":
                        received.keep_metrics(
                            metrics_service_pb2.ExportMetricsServiceRequest.FromString(body))
                        answer = metrics_service_pb2.ExportMetricsServiceResponse()
                    else:
                        self.send_error(404)
                        return
                except Exception:  # not the protobuf request the path takes
                    self.send_error(400)
                    return
                payload = answer.SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> HttpOtlpReceiver:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)


Receiver = OtlpReceiver | HttpOtlpReceiver


def otel_env(receiver: Receiver, service_name: str) -> dict[str, str]:
    """The process's environment with no `OTEL_*` variable of the test's but these (no
    sampler: FastProxy's default)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("OTEL_")}
    env.update({
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": receiver.protocol,
        "OTEL_SERVICE_NAME": service_name,
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        "OTEL_METRIC_EXPORT_INTERVAL": "500",
    })
    return env


@dataclass
class Process:
    """A `python -m MODULE` with its own environment; output to `log_path`."""

    module: str
    args: tuple[str, ...]
    address: str
    log_path: Path
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Process:
        with self.log_path.open("ab") as log_file:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", self.module, *self.args], stdin=subprocess.DEVNULL,
                stdout=log_file, stderr=log_file, env=self.env, start_new_session=True)
        return self

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def wait_serving(self, timeout: float = START_TIMEOUT_S) -> Process:
        deadline = time.monotonic() + timeout
        while health_status(self.address) != SERVING:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.module} exited:\n{self.log()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.module} not serving:\n{self.log()}")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=5)


def _secret() -> str:
    return "base64:" + base64.b64encode(os.urandom(32)).decode()


def policy_yaml(inproxy: str) -> str:
    return f"""\
version: 1
keys:
  chat-id: {{type: hmac-sha256, secret: "{_secret()}"}}
  song-id: {{type: hmac-sha256, secret: "{_secret()}"}}
  song-enc: {{type: aes-256-gcm, secret: "{_secret()}"}}
services:
  {CALLEE}:
    grpc_services: [demo.v1.Echo, demo.v1.Catalog]
    endpoints: ["{inproxy}"]
    identity: {{key: song-id}}
    encrypt: {{key: song-enc}}
    allow:
      - caller: {CALLER}
        methods: ["/demo.v1.Echo/*"]
      - caller: {CALLER}
        methods: ["/demo.v1.Catalog/Count"]
        rate_limit: {{rps: 0.01, burst: 1}}
  {CALLER}:
    identity: {{key: chat-id}}
"""


def free_port() -> int:
    return int(free_address().rpartition(":")[2])


@dataclass
class TelemetryStack:
    receiver: Receiver
    server: Process
    inproxy: Process
    outproxy: Process
    in_metrics_port: int
    out_metrics_port: int
    processes: list[Process] = field(default_factory=list)
    relay: RecordingRelay | None = None

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop()
        if self.relay is not None:
            self.relay.stop()
        self.receiver.stop()


@contextlib.contextmanager
def telemetry_stack(directory: Path, receiver: Receiver | None = None, *,
                    relay: bool = False) -> Iterator[TelemetryStack]:
    """The stack, exporting to `receiver` (default: a new `OtlpReceiver`), which it starts
    and stops; `relay`: the out-proxy calls the in-proxy through a `RecordingRelay`, each
    call on a stream of its own (`--tunnel off`, so the relay sees every call's metadata)."""
    receiver = (receiver or OtlpReceiver()).start()
    server_address, in_address, out_address = free_address(), free_address(), free_address()
    in_port, out_port = free_port(), free_port()
    recorder = RecordingRelay(in_address).start() if relay else None
    policy = directory / "policy.yaml"
    policy.write_text(policy_yaml(recorder.address if recorder is not None else in_address))
    server = Process("server_svc", ("--listen", server_address), server_address,
                     directory / "server.log", otel_env(receiver, "test-server"))
    inproxy = Process(
        "proxy_svc",
        ("--role", "in", "--service", CALLEE, "--listen", in_address, "--policy", str(policy),
         "--upstream", server_address, "--log-format", "json", "--metrics-port", str(in_port)),
        in_address, directory / "inproxy.log", otel_env(receiver, "test-in-proxy"))
    outproxy = Process(
        "proxy_svc",
        ("--role", "out", "--service", CALLER, "--listen", out_address, "--policy",
         str(policy), "--metrics-port", str(out_port),
         *(("--tunnel", "off") if relay else ())),
        out_address, directory / "outproxy.log", otel_env(receiver, "test-out-proxy"))
    stack = TelemetryStack(receiver, server, inproxy, outproxy, in_port, out_port,
                           [server, inproxy, outproxy], recorder)
    try:
        for process in stack.processes:
            process.start()
        for process in stack.processes:
            process.wait_serving()
        yield stack
    finally:
        stack.stop()


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The Prometheus endpoint's samples: (name, sorted labels) -> value."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = tuple(sorted((k, v) for k, v in sample.labels.items()
                                  if not k.startswith("otel_scope")))
            samples[(sample.name, labels)] = sample.value
    return samples


def sample(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str,
           **labels: str) -> float:
    """The sum of `name`'s samples whose labels include `labels` (0 if none)."""
    wanted = set(labels.items())
    return sum(value for (sample_name, sample_labels), value in samples.items()
               if sample_name == name and wanted <= set(sample_labels))
