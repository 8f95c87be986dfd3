"""Histograms FastProxy aggregates itself, and the metric readers that export them beside the
SDK's own instruments (OTLP and Prometheus).

Why not the SDK's `Histogram.record()`: it costs 8.5 us per call with one reader and 13 us
with two (the SDK cleans and hashes the attributes on every record, then aggregates once per
reader: `bench/telemetry_micro.py`), which alone was 5% of a proxy's CPU per call. Here a
call's series is found once per (caller, callee, method, code) by the caller's own dict, and a
record is one bisect and a few additions.

How they reach the exporters: the OpenTelemetry Python SDK has no `MetricProducer` (the
specification's hook for data aggregated outside the SDK) and the API has no observable
histogram. So the readers `configure_telemetry` builds are the SDK's periodic OTLP reader and
the Prometheus reader, each extended at `_receive_metrics` (the method `MetricReader`
subclasses implement to take a collection) to add these histograms, under their meter's
scope, to what the SDK collected. The exporters then encode them like any SDK histogram.

Threads: one writer per series (the proxy's event loop); collections run on the readers'
threads (the periodic exporter, the Prometheus HTTP server) and copy each series' counts, a
list copy being atomic under the GIL. A point's count is the sum of its copied buckets, so
`_count` always equals the `+Inf` bucket; its sum may be one call ahead or behind.

Temporality: cumulative, except for a reader built with `delta=True` (OTLP with
`OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE` `delta` or `lowmemory`, as for the SDK's
histograms), which gets what changed since its last collection, with that window's min and
max. A process has at most one delta reader: the window min/max live on the series.
"""

from __future__ import annotations

import math
import time
from bisect import bisect_left
from collections.abc import Mapping, Sequence
from typing import Any

from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Histogram,
    HistogramDataPoint,
    Metric,
    MetricExporter,
    MetricsData,
    PeriodicExportingMetricReader,
    ResourceMetrics,
    ScopeMetrics,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

Attributes = Mapping[str, str]

# What a delta reader saw of one series at its last collection: (buckets, sum, time).
_Seen = tuple[list[int], float, int]


class HistogramSeries:
    """One attribute set of an `AggregatedHistogram`: `record()` is the per-call cost."""

    __slots__ = ("_bounds", "attributes", "buckets", "max", "min", "start_ns", "sum",
                 "window_max", "window_min")

    def __init__(self, attributes: Attributes, bounds: Sequence[float]) -> None:
        self.attributes = attributes
        self._bounds = bounds
        self.buckets = [0] * (len(bounds) + 1)
        self.sum = 0.0
        self.min = self.window_min = math.inf
        self.max = self.window_max = -math.inf
        self.start_ns = time.time_ns()

    def record(self, value: float) -> None:
        # Bucket i holds (bounds[i-1], bounds[i]]: Prometheus' `le`, OpenTelemetry's rule.
        self.buckets[bisect_left(self._bounds, value)] += 1
        self.sum += value
        if value < self.window_min:  # window_min >= min, so min can only move with it
            self.window_min = value
            if value < self.min:
                self.min = value
        if value > self.window_max:
            self.window_max = value
            if value > self.max:
                self.max = value


class AggregatedHistogram:
    """An explicit-bucket histogram whose series the caller keeps (see the module doc)."""

    def __init__(self, name: str, unit: str, description: str,
                 bounds: Sequence[float]) -> None:
        self.name = name
        self.unit = unit
        self.description = description
        self.bounds = tuple(bounds)
        self._series: list[HistogramSeries] = []

    def series(self, attributes: Attributes) -> HistogramSeries:
        """A new series for `attributes`; the caller keeps it and records into it."""
        made = HistogramSeries(dict(attributes), self.bounds)
        self._series.append(made)
        return made

    def metric(self, now_ns: int, seen: dict[HistogramSeries, _Seen] | None) -> Metric | None:
        """The histogram as of now: cumulative when `seen` is None, else the change since
        the calls recorded in `seen` (updated). None when there is no point to report."""
        points = []
        for series in list(self._series):
            buckets, total = list(series.buckets), series.sum
            if seen is None:
                count = sum(buckets)
                if count:
                    points.append(HistogramDataPoint(
                        series.attributes, series.start_ns, now_ns, count, total, buckets,
                        self.bounds, series.min, series.max))
                continue
            previous = seen.get(series)
            if previous is None:
                changed, before_sum, since = buckets, 0.0, series.start_ns
            else:
                before, before_sum, since = previous
                changed = [now - then for now, then in zip(buckets, before, strict=True)]
            count = sum(changed)
            if not count:
                continue
            low, high = series.window_min, series.window_max
            series.window_min, series.window_max = math.inf, -math.inf
            seen[series] = (buckets, total, now_ns)
            points.append(HistogramDataPoint(
                series.attributes, since, now_ns, count, total - before_sum, changed,
                self.bounds, low, high))
        if not points:
            return None
        temporality = (AggregationTemporality.CUMULATIVE if seen is None
                       else AggregationTemporality.DELTA)
        return Metric(self.name, self.description, self.unit, Histogram(points, temporality))


class AggregatedMetrics:
    """The `AggregatedHistogram`s of one process, by meter (scope) name, and the resource to
    report them under when a collection holds nothing else."""

    def __init__(self, resource: Resource | None = None) -> None:
        self.resource = resource or Resource.create({})
        self._scopes: dict[str, list[AggregatedHistogram]] = {}

    def histogram(self, scope: str, name: str, *, unit: str, description: str,
                  bounds: Sequence[float]) -> AggregatedHistogram:
        made = AggregatedHistogram(name, unit, description, bounds)
        self._scopes.setdefault(scope, []).append(made)
        return made

    def add_to(self, data: MetricsData, seen: dict[HistogramSeries, _Seen] | None
               ) -> MetricsData:
        """`data` (one SDK collection) with these histograms added under their scopes."""
        now_ns = time.time_ns()
        ours: dict[str, list[Metric]] = {}
        for scope, histograms in list(self._scopes.items()):
            for histogram in histograms:
                metric = histogram.metric(now_ns, seen)
                if metric is not None:
                    ours.setdefault(scope, []).append(metric)
        if not ours:
            return data
        if data.resource_metrics:
            first, *rest = data.resource_metrics
        else:
            first, rest = ResourceMetrics(self.resource, [], ""), []
        scopes = []
        for scope_metrics in first.scope_metrics:
            added = ours.pop(scope_metrics.scope.name, None)
            if added:
                scope_metrics = ScopeMetrics(scope_metrics.scope,
                                             [*scope_metrics.metrics, *added],
                                             scope_metrics.schema_url)
            scopes.append(scope_metrics)
        scopes.extend(ScopeMetrics(InstrumentationScope(scope), metrics, "")
                      for scope, metrics in ours.items())
        return MetricsData([ResourceMetrics(first.resource, scopes, first.schema_url), *rest])


class _AddsAggregated:
    """Adds an `AggregatedMetrics` to every collection a reader receives."""

    _aggregated: AggregatedMetrics
    _seen: dict[HistogramSeries, _Seen] | None

    def _receive_metrics(self, metrics_data: MetricsData, timeout_millis: float = 10_000,
                         **kwargs: Any) -> None:
        if metrics_data is not None:
            metrics_data = self._aggregated.add_to(metrics_data, self._seen)
        super()._receive_metrics(  # type: ignore[misc]
            metrics_data, timeout_millis=timeout_millis, **kwargs)


class PeriodicReader(_AddsAggregated, PeriodicExportingMetricReader):
    """The SDK's periodic exporting reader (OTLP), plus `aggregated`."""

    def __init__(self, exporter: MetricExporter, aggregated: AggregatedMetrics, *,
                 delta: bool = False) -> None:
        self._aggregated = aggregated
        self._seen = {} if delta else None
        super().__init__(exporter)


class PrometheusReader(_AddsAggregated, PrometheusMetricReader):
    """opentelemetry-exporter-prometheus's reader (always cumulative), plus `aggregated`."""

    def __init__(self, aggregated: AggregatedMetrics) -> None:
        self._aggregated = aggregated
        self._seen = None
        super().__init__()


def delta_preferred(env: Mapping[str, str]) -> bool:
    """Whether OTLP export asks histograms as deltas, as the OTLP exporters read
    `OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE` (delta and lowmemory do)."""
    preference = env.get("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE", "")
    return preference.strip().lower() in ("delta", "lowmemory")
