"""In-process cost of a proxy's per-call telemetry: microseconds of CPU per call (timeit).

What it times, each with the proxy's own code (`proxy_svc.observe.CallObserver`):
- `span sampled`: begin + admitted + end of a call whose caller sent a sampled `traceparent`
  (one SERVER span made, ended and queued to a `BatchSpanProcessor`, whose exporter keeps
  nothing: the export itself is timed on its own below);
- `span unsampled`: the same with a caller's `traceparent` flagged not sampled (the default
  sampler's answer for 99% of root calls): no span recorded, the context still forwarded;
- `metrics`: the call's metrics only (no tracer);
- `otlp encode`: turning one ended span into OTLP protobuf bytes, as the batch thread does
  before sending (`opentelemetry-exporter-otlp-proto-common`);
- `default, out-proxy root` / `default, in-proxy unsampled`: what a proxy pays per call in
  the configuration the load benchmark's `observed-sampled` proxies run (the default sampler,
  parent-based 1%, and two metric readers, OTLP and Prometheus), one request and one response
  through the timed plan: the out-proxy gets a call with no trace context (a root, dropped
  99 times in 100), the in-proxy the out-proxy's unsampled `traceparent`.

Run: `python bench/telemetry_micro.py [--calls 20000]` (a few seconds; one core).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from typing import Any

import grpc
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased

from fastproxy.hosting.refusal import HostRole
from fastproxy.telemetry.aggregated import AggregatedMetrics
from fastproxy.telemetry.metrics import ProxyMetrics
from fastproxy.telemetry.sampling import PresetTraceIds, SamplingShortcut
from fastproxy.telemetry.setup import DEFAULT_TRACE_SAMPLE_RATIO, default_sampler
from proxy_svc.observe import CallObserver
from proxy_svc.plan import CallPlan

METHOD = "/demo.v1.Echo/Unary"
PEER = "ipv4:127.0.0.1:51234"
SAMPLED = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
UNSAMPLED = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"


class _Discard(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def _unchanged(message: bytes, now: float) -> bytes:
    return message


def _plan() -> CallPlan:
    return CallPlan("chat_service", "song_service", (), None, (), _unchanged, _unchanged)


def _observer(with_tracer: bool, with_metrics: bool) -> tuple[CallObserver, Any]:
    provider = None
    if with_tracer:
        provider = TracerProvider(resource=Resource.create({"service.name": "bench"}),
                                  sampler=ParentBased(ALWAYS_ON))
        provider.add_span_processor(BatchSpanProcessor(
            _Discard(), max_queue_size=1 << 20, schedule_delay_millis=100))
    metrics = None
    if with_metrics:
        meter = MeterProvider(metric_readers=[InMemoryMetricReader()]).get_meter("bench")
        metrics = ProxyMetrics("in", meter, AggregatedMetrics(), revision=lambda: 7)
    tracer = None if provider is None else provider.get_tracer("fastproxy.proxy")
    observer = CallObserver.with_tracer(HostRole.IN, "song_service", lambda: 7, tracer, metrics)
    return observer, provider


def _default_observer(proxy: str) -> tuple[CallObserver, Any]:
    """A proxy's observer as `configure_telemetry` builds it with no OTEL_TRACES_SAMPLER (and
    so the sampling shortcut) and both an OTLP and a Prometheus reader (two in-memory readers
    here)."""
    ids = PresetTraceIds()
    provider = TracerProvider(resource=Resource.create({"service.name": "bench"}),
                              sampler=default_sampler({}), id_generator=ids)
    provider.add_span_processor(BatchSpanProcessor(
        _Discard(), max_queue_size=1 << 20, schedule_delay_millis=100))
    meter = MeterProvider(metric_readers=[InMemoryMetricReader(), InMemoryMetricReader()]
                          ).get_meter("bench")
    metrics = ProxyMetrics(proxy, meter, AggregatedMetrics(), revision=lambda: 7)
    observer = CallObserver.with_tracer(HostRole(proxy),
                                        "song_service" if proxy == "in" else "chat",
                                        lambda: 7, provider.get_tracer("fastproxy.proxy"),
                                        metrics, SamplingShortcut(DEFAULT_TRACE_SAMPLE_RATIO, ids))
    return observer, provider


def _one_call(observer: CallObserver, metadata: tuple[tuple[str, str | bytes], ...],
              messages: bool = False) -> Callable[[], None]:
    plan = _plan()
    message = b"x" * 1024

    def call() -> None:
        record = observer.begin(METHOD, metadata, PEER)
        timed = observer.admitted(record, plan)
        if messages:
            timed.request(message, 0.0)
            timed.response(message, 0.0)
        record.code = grpc.StatusCode.OK
        observer.end(record, METHOD)
    return call


def _us_per_call(run: Callable[[], object], calls: int, repeat: int = 5) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.process_time()
        for _ in range(calls):
            run()
        best = min(best, time.process_time() - started)
    return best / calls * 1e6


def measure(calls: int) -> dict[str, float]:
    figures: dict[str, float] = {}
    base: tuple[tuple[str, str | bytes], ...] = (("x-app", "v"),)
    for label, tracer, metrics, parent in (
            ("span sampled", True, False, SAMPLED),
            ("span unsampled", True, False, UNSAMPLED),
            ("metrics", False, True, SAMPLED),
            ("span sampled + metrics", True, True, SAMPLED)):
        observer, provider = _observer(tracer, metrics)
        figures[label] = _us_per_call(
            _one_call(observer, (*base, ("traceparent", parent))), calls)
        if provider is not None:
            provider.shutdown()
    assert DEFAULT_TRACE_SAMPLE_RATIO == 0.01
    for label, proxy, parent in (("default, out-proxy root", "out", None),
                                 ("default, in-proxy unsampled", "in", UNSAMPLED)):
        observer, provider = _default_observer(proxy)
        metadata = base if parent is None else (*base, ("traceparent", parent))
        figures[label] = _us_per_call(_one_call(observer, metadata, messages=True), calls)
        provider.shutdown()
    # One ended span as the in-proxy makes it, encoded as the OTLP exporter does.
    kept = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "bench"}))
    provider.add_span_processor(SimpleSpanProcessor(kept))
    observer = CallObserver.with_tracer(HostRole.IN, "song_service", lambda: 7,
                                        provider.get_tracer("fastproxy.proxy"), None)
    _one_call(observer, (("traceparent", SAMPLED),))()
    span = kept.get_finished_spans()[0]
    figures["otlp encode (one span)"] = _us_per_call(
        lambda: encode_spans([span]).SerializeToString(), max(calls // 4, 1))
    return figures


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=20000)
    args = parser.parse_args(argv)
    for label, us in measure(args.calls).items():
        print(f"{label:28s} {us:7.1f} us per call")


if __name__ == "__main__":
    main()
