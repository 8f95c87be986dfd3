"""Configures OpenTelemetry for one process from the standard `OTEL_*` environment variables.

What is read here (everything else is read by the SDK and exporters themselves):
- `OTEL_SDK_DISABLED=true`: nothing is configured.
- `OTEL_TRACES_EXPORTER` / `OTEL_METRICS_EXPORTER`: `otlp`, `console` or `none`. Unset, an
  exporter is `otlp` only when an OTLP endpoint is configured (`OTEL_EXPORTER_OTLP_ENDPOINT`
  or the signal's `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` / `..._METRICS_ENDPOINT`): with no
  exporter configured, no tracer is installed and the hot path does no tracing work.
- `OTEL_EXPORTER_OTLP_PROTOCOL` (or the signal's `..._TRACES_PROTOCOL` /
  `..._METRICS_PROTOCOL`): `grpc` (default) or `http/protobuf`.
- `OTEL_TRACES_SAMPLER` unset: the sampler is ours, like Istio's default, parent-based with
  `DEFAULT_TRACE_SAMPLE_RATIO` (1%) of root calls, or the ratio `OTEL_TRACES_SAMPLER_ARG`
  gives: a call whose caller sampled it (or did not) is traced (or not) at every hop, and
  only calls that arrive without trace context are sampled by ratio. Set, the SDK builds the
  sampler it names (e.g. `parentbased_always_on` to trace every call).
Read by the SDK: `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER(_ARG)`
when `OTEL_TRACES_SAMPLER` is set (from the process environment),
`OTEL_BSP_*` (batching), `OTEL_METRIC_EXPORT_INTERVAL`, and by the exporters the endpoint,
headers, timeout, compression and certificate variables.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported when telemetry is configured (they load the SDK, exporters)
    from opentelemetry import metrics as otel_metrics
    from opentelemetry import trace

    from fastproxy.telemetry.aggregated import AggregatedMetrics
    from fastproxy.telemetry.sampling import SamplingShortcut

log = logging.getLogger("fastproxy.telemetry")

GRPC = "grpc"
HTTP_PROTOBUF = "http/protobuf"
# The share of root calls (those that arrive with no trace context) traced when
# OTEL_TRACES_SAMPLER is not set: Istio's default. A traced span costs tens of microseconds
# of CPU to make and as much again to export, per hop (see docs/benchmarks.md).
DEFAULT_TRACE_SAMPLE_RATIO = 0.01


class TelemetryConfigError(ValueError):
    """An `OTEL_*` value this process cannot use; the message names the variable."""


@dataclass(frozen=True, slots=True)
class Telemetry:
    """What `configure_telemetry` installed. `tracer_provider` is None when tracing is off
    (no exporter): callers check that once and create no spans at all."""

    tracer_provider: Any | None
    meter_provider: Any | None
    metrics_port: int | None = None
    # Decides the default sampler's unsampled calls without the SDK
    # (`fastproxy.telemetry.sampling`); None when the sampler or propagation is not ours.
    shortcut: SamplingShortcut | None = None
    # Histograms aggregated by FastProxy's code, exported by `meter_provider`'s readers
    # (`fastproxy.telemetry.aggregated`); None when metrics are off.
    aggregated: AggregatedMetrics | None = None
    # The span exporter behind `tracer_provider`'s batch: `shutdown` stops it when a flush
    # runs out of time (an exporter retrying an unreachable collector).
    span_exporter: Any | None = None
    _shut: threading.Event = field(default_factory=threading.Event, repr=False,
                                   compare=False)

    @property
    def tracing(self) -> bool:
        return self.tracer_provider is not None

    @property
    def metrics(self) -> bool:
        return self.meter_provider is not None

    def tracer(self, name: str) -> trace.Tracer | None:
        return None if self.tracer_provider is None else self.tracer_provider.get_tracer(name)

    def meter(self, name: str) -> otel_metrics.Meter | None:
        return None if self.meter_provider is None else self.meter_provider.get_meter(name)

    def shutdown(self, timeout_s: float = 30.0) -> bool:
        """Flushes what is batched and stops the exporters, traces and metrics side by side,
        within `timeout_s`; once (later calls return at once). What an exporter still holds
        when the time is up (it retries a collector that does not answer, with backoff, for
        up to 10 s a batch) is dropped: a service's stop is bounded by its `--grace`, not by
        its collector. True when everything was flushed in time. (Without this call the SDK
        flushes at interpreter exit, unbounded.)"""
        if self._shut.is_set():
            return True
        self._shut.set()
        deadline = time.monotonic() + max(timeout_s, 0.0)
        stops: list[_Stop] = []
        if self.tracer_provider is not None:
            stops.append(_Stop(self.tracer_provider.shutdown))
        if self.meter_provider is not None:
            # bounded by the SDK itself: the readers' last export, then their exporters
            meter_provider = self.meter_provider
            stops.append(_Stop(lambda: meter_provider.shutdown(
                timeout_millis=max(timeout_s, 0.0) * 1000)))
        for stop in stops:
            stop.join(deadline)
        late = [stop.outcome for stop in stops if not stop.ok]  # before any is cut short
        if stops and stops[0].running and self.span_exporter is not None:
            # Ends its retries (its backoff waits for this) and closes its channel; the
            # provider's shutdown then ends at once, on its own thread.
            self.span_exporter.shutdown()
        if late:
            log.warning("telemetry: not everything was exported within the %.1f s left to "
                        "stop; the rest is dropped (%s)", timeout_s, "; ".join(late))
        return not late


class _Stop:
    """A provider's shutdown on a daemon thread, waited for until a deadline."""

    def __init__(self, stop: Callable[[], object]) -> None:
        self.error: BaseException | None = None

        def run() -> None:
            try:
                stop()
            except Exception as exc:  # the meter provider raises what its readers raised
                self.error = exc
        self._thread = threading.Thread(target=run, name="fastproxy-telemetry-stop",
                                        daemon=True)
        self._thread.start()

    def join(self, deadline: float) -> None:
        self._thread.join(max(deadline - time.monotonic(), 0.0))

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    @property
    def ok(self) -> bool:
        return not self.running and self.error is None

    @property
    def outcome(self) -> str:
        if self.running:
            return "an exporter was still retrying"
        return " ".join(str(self.error).split())


TELEMETRY_OFF = Telemetry(None, None)
_globals_set = False


def _set_globals_once(tracer_provider: Any | None, meter_provider: Any | None) -> None:
    """OpenTelemetry keeps the first global providers of a process (and warns at a second):
    the first configuration with any provider sets them."""
    global _globals_set
    if _globals_set or (tracer_provider is None and meter_provider is None):
        return
    _globals_set = True
    # OpenTelemetry's API is imported here, once telemetry is on: a process without any
    # OTEL_* setting never loads it (issue 15, memory).
    from opentelemetry import metrics as otel_metrics
    from opentelemetry import trace

    if tracer_provider is not None:
        trace.set_tracer_provider(tracer_provider)
    if meter_provider is not None:
        otel_metrics.set_meter_provider(meter_provider)


def exporter_name(signal: str, env: Mapping[str, str]) -> str:
    """`otlp`, `console` or `none` for `signal` ("traces" or "metrics")."""
    explicit = env.get(f"OTEL_{signal.upper()}_EXPORTER", "").strip().lower()
    if explicit:
        names = [name.strip() for name in explicit.split(",") if name.strip()]
        for name in names:
            if name not in ("otlp", "console", "none"):
                raise TelemetryConfigError(
                    f"OTEL_{signal.upper()}_EXPORTER={explicit}: use otlp, console or none")
        return "none" if "none" in names or not names else names[0]
    if env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get(
            f"OTEL_EXPORTER_OTLP_{signal.upper()}_ENDPOINT"):
        return "otlp"
    return "none"


def otlp_protocol(signal: str, env: Mapping[str, str]) -> str:
    protocol = (env.get(f"OTEL_EXPORTER_OTLP_{signal.upper()}_PROTOCOL")
                or env.get("OTEL_EXPORTER_OTLP_PROTOCOL") or GRPC).strip().lower()
    if protocol not in (GRPC, HTTP_PROTOBUF):
        raise TelemetryConfigError(
            f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol}: use grpc or http/protobuf")
    return protocol


def default_sample_ratio(env: Mapping[str, str]) -> float | None:
    """The default sampler's share of root calls: `OTEL_TRACES_SAMPLER_ARG` (a number from
    0 to 1) or else `DEFAULT_TRACE_SAMPLE_RATIO`; None when `OTEL_TRACES_SAMPLER` is set in
    `env` (the SDK then builds the sampler it names). Raises `TelemetryConfigError` for a
    ratio that is not a number from 0 to 1."""
    if env.get("OTEL_TRACES_SAMPLER", "").strip():
        return None
    raw = env.get("OTEL_TRACES_SAMPLER_ARG", "").strip()
    if not raw:
        return DEFAULT_TRACE_SAMPLE_RATIO
    try:
        ratio = float(raw)
    except ValueError:
        ratio = -1.0
    if not 0.0 <= ratio <= 1.0:  # also NaN
        raise TelemetryConfigError(
            f"OTEL_TRACES_SAMPLER_ARG={raw}: the share of calls to trace, from 0 to 1")
    return ratio


def default_sampler(env: Mapping[str, str]) -> Any | None:
    """`ParentBased(TraceIdRatioBased(default_sample_ratio(env)))`, or None when
    `OTEL_TRACES_SAMPLER` is set."""
    return _ratio_sampler(default_sample_ratio(env))


def _ratio_sampler(ratio: float | None) -> Any | None:
    if ratio is None:
        return None
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    return ParentBased(TraceIdRatioBased(ratio))


def _span_exporter(name: str, env: Mapping[str, str]) -> Any:
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter
        return ConsoleSpanExporter()
    if otlp_protocol("traces", env) == GRPC:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        return OTLPSpanExporter()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
        OTLPSpanExporter as HttpSpanExporter,
    )
    return HttpSpanExporter()


def _metric_exporter(name: str, env: Mapping[str, str]) -> Any:
    if name == "console":
        from opentelemetry.sdk.metrics.export import ConsoleMetricExporter
        return ConsoleMetricExporter()
    if otlp_protocol("metrics", env) == GRPC:
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
        return OTLPMetricExporter()
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
        OTLPMetricExporter as HttpMetricExporter,
    )
    return HttpMetricExporter()


def _resource(default_service_name: str, env: Mapping[str, str]) -> Any:
    from opentelemetry.sdk.resources import Resource
    # Attributes given to create() override the environment's: pass the default name only
    # when OTEL_SERVICE_NAME does not set one.
    attributes = {} if env.get("OTEL_SERVICE_NAME") else {"service.name": default_service_name}
    return Resource.create(attributes)


def configure_telemetry(service_name: str, *, metrics_port: int | None = None,
                        metrics_host: str = "127.0.0.1",
                        env: Mapping[str, str] | None = None,
                        install_global: bool = True) -> Telemetry:
    """Builds the TracerProvider (batched span export) and MeterProvider (OTLP periodic
    export and/or a Prometheus endpoint on `metrics_host:metrics_port`) the environment asks
    for, installs them as OpenTelemetry's globals (the first time in a process) and returns them
    (`fastproxy.hosting.service_main.run_service` hands them to the service).

    `service_name` is the default `service.name` (`OTEL_SERVICE_NAME` wins). Raises
    `TelemetryConfigError` for unusable `OTEL_*` values, OSError if the port is taken.
    """
    env = os.environ if env is None else env
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return TELEMETRY_OFF
    traces = exporter_name("traces", env)
    metrics = exporter_name("metrics", env)
    if traces == "none" and metrics == "none" and metrics_port is None:
        return TELEMETRY_OFF
    resource = _resource(service_name, env)

    tracer_provider = None
    span_exporter = None
    shortcut = None
    if traces != "none":
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        from fastproxy.telemetry.sampling import (
            PresetTraceIds,
            SamplingShortcut,
            w3c_propagation,
        )

        # The sampler: ours unless OTEL_TRACES_SAMPLER names one; the batch from OTEL_BSP_*.
        # Under ours with W3C propagation, the sampling shortcut, whose sampled roots' ids
        # the provider takes from `ids`.
        ratio = default_sample_ratio(env)
        ids = PresetTraceIds() if ratio is not None and w3c_propagation() else None
        tracer_provider = TracerProvider(resource=resource, sampler=_ratio_sampler(ratio),
                                         id_generator=ids)
        span_exporter = _span_exporter(traces, env)
        tracer_provider.add_span_processor(BatchSpanProcessor(span_exporter))
        if ratio is not None and ids is not None:
            shortcut = SamplingShortcut(ratio, ids)

    meter_provider = None
    aggregated: AggregatedMetrics | None = None
    readers: list[Any] = []
    if metrics != "none" or metrics_port is not None:
        from fastproxy.telemetry.aggregated import (
            AggregatedMetrics,
            PeriodicReader,
            PrometheusReader,
            delta_preferred,
        )

        aggregated = AggregatedMetrics(resource)
        if metrics != "none":
            readers.append(PeriodicReader(_metric_exporter(metrics, env), aggregated,
                                          delta=delta_preferred(env)))
        if metrics_port is not None:
            from prometheus_client import start_http_server

            # The reader registers with prometheus_client's default registry, which the
            # HTTP server serves. Resource attributes go to target_info only.
            readers.append(PrometheusReader(aggregated))
            start_http_server(metrics_port, addr=metrics_host)
            log.info("metrics for Prometheus on http://%s:%d/metrics", metrics_host,
                     metrics_port)
    if readers:
        from opentelemetry.sdk.metrics import MeterProvider

        meter_provider = MeterProvider(metric_readers=readers, resource=resource)

    installed = Telemetry(tracer_provider, meter_provider, metrics_port, shortcut, aggregated,
                          span_exporter)
    if install_global:
        _set_globals_once(tracer_provider, meter_provider)
    log.info("telemetry: traces %s, metrics %s%s", traces, metrics,
             f", prometheus :{metrics_port}" if metrics_port is not None else "")
    return installed
