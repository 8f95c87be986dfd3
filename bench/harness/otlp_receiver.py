"""A real OTLP/gRPC receiver for the `observed` setup, run as its own process.

    python bench/harness/otlp_receiver.py --port PORT

Serves opentelemetry-proto's `TraceService` and `MetricsService` (insecure, loopback) and
counts what arrives, per resource `service.name`: export requests, spans, metric data points.
It keeps nothing else, so its own CPU stays small next to the proxies'. The counts are read
with `counts(address)` (a raw-bytes unary method `/bench.v1.OtlpReceiver/Counts` answering
JSON). Prints `listening 127.0.0.1:PORT` once it serves; stops on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import json
import signal
import threading
from collections.abc import Sequence
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc
from opentelemetry.proto.collector.metrics.v1 import (
    metrics_service_pb2,
    metrics_service_pb2_grpc,
)
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

COUNTS_METHOD = "/bench.v1.OtlpReceiver/Counts"
MAX_MESSAGE_BYTES = 64 * 1024 * 1024


@dataclass
class ReceivedCounts:
    """What arrived so far; service.name -> count."""

    trace_requests: int = 0
    metric_requests: int = 0
    spans: dict[str, int] = field(default_factory=dict)
    data_points: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"trace_requests": self.trace_requests, "metric_requests": self.metric_requests,
                "spans": dict(self.spans), "data_points": dict(self.data_points)}


def _service_name(resource: Any) -> str:
    for kv in resource.attributes:
        if kv.key == "service.name":
            return str(kv.value.string_value)
    return ""


def _data_points(metric: Any) -> int:
    kind = metric.WhichOneof("data")
    return len(getattr(metric, kind).data_points) if kind else 0


class CountingReceiver(trace_service_pb2_grpc.TraceServiceServicer,
                       metrics_service_pb2_grpc.MetricsServiceServicer):
    """Both OTLP services share the method name `Export`; the request type tells them apart."""

    def __init__(self) -> None:
        self.counts = ReceivedCounts()
        self._lock = threading.Lock()

    def Export(self, request: Any, context: Any) -> Any:
        if isinstance(request, trace_service_pb2.ExportTraceServiceRequest):
            with self._lock:
                self.counts.trace_requests += 1
                for rs in request.resource_spans:
                    name = _service_name(rs.resource)
                    spans = sum(len(ss.spans) for ss in rs.scope_spans)
                    self.counts.spans[name] = self.counts.spans.get(name, 0) + spans
            return trace_service_pb2.ExportTraceServiceResponse()
        with self._lock:
            self.counts.metric_requests += 1
            for rm in request.resource_metrics:
                name = _service_name(rm.resource)
                points = sum(_data_points(m) for sm in rm.scope_metrics for m in sm.metrics)
                self.counts.data_points[name] = self.counts.data_points.get(name, 0) + points
        return metrics_service_pb2.ExportMetricsServiceResponse()

    def snapshot(self, _request: bytes, _context: Any) -> bytes:
        with self._lock:
            return json.dumps(self.counts.to_json()).encode()


def counts(address: str, timeout_s: float = 5.0) -> ReceivedCounts:
    """The counts of the receiver at `address` (HOST:PORT)."""
    with grpc.insecure_channel(address) as channel:
        raw = channel.unary_unary(COUNTS_METHOD)(b"", timeout=timeout_s)
    data = json.loads(raw)
    return ReceivedCounts(data["trace_requests"], data["metric_requests"], data["spans"],
                          data["data_points"])


def serve(port: int) -> None:
    receiver = CountingReceiver()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4),
                         options=(("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(  # type: ignore[no-untyped-call]
        receiver, server)
    metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(  # type: ignore[no-untyped-call]
        receiver, server)
    service, _, method = COUNTS_METHOD.lstrip("/").partition("/")
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        service, {method: grpc.unary_unary_rpc_method_handler(receiver.snapshot)}),))
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    print(f"listening 127.0.0.1:{bound}", flush=True)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    while not stop.wait(0.5):
        pass
    server.stop(0.5).wait()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="counting OTLP/gRPC receiver")
    parser.add_argument("--port", type=int, default=0)
    serve(parser.parse_args(argv).port)


if __name__ == "__main__":
    main()
