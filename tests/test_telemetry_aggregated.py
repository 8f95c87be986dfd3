"""The call-duration histogram FastProxy aggregates itself (`fastproxy.telemetry.aggregated`):
what the SDK's readers export of it, cumulative and delta, through a real exporter and the
Prometheus text format parsed with prometheus_client's parser."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    HistogramDataPoint,
    Metric,
    MetricExporter,
    MetricExportResult,
    MetricsData,
)
from opentelemetry.sdk.resources import Resource
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from fastproxy.telemetry.aggregated import (
    AggregatedMetrics,
    PeriodicReader,
    PrometheusReader,
    delta_preferred,
)
from fastproxy.telemetry.metrics import CALL_DURATION_BOUNDS, ProxyMetrics

DURATION = "fastproxy.call.duration"


class KeepingExporter(MetricExporter):
    """A metric exporter that keeps every batch it is given."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[MetricsData] = []

    def export(self, metrics_data: MetricsData, timeout_millis: float = 10_000,
               **kwargs: Any) -> MetricExportResult:
        self.batches.append(metrics_data)
        return MetricExportResult.SUCCESS

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        pass


def _metrics(data: MetricsData) -> dict[tuple[str, str], Metric]:
    """(scope, metric name) -> metric, over every resource of one batch."""
    return {(scope.scope.name, metric.name): metric
            for resource in data.resource_metrics for scope in resource.scope_metrics
            for metric in scope.metrics}


def _points(data: MetricsData) -> dict[str, HistogramDataPoint]:
    """The duration histogram's points by method."""
    metric = _metrics(data)[("fastproxy.proxy", DURATION)]
    return {str(point.attributes["method"]): point
            for point in metric.data.data_points}  # type: ignore[union-attr]


@pytest.fixture
def otlp_like() -> Iterator[tuple[ProxyMetrics, PeriodicReader, KeepingExporter]]:
    """A proxy's metrics as `configure_telemetry` wires them for OTLP, the reader exporting
    only when flushed."""
    exporter = KeepingExporter()
    aggregated = AggregatedMetrics(Resource.create({"service.name": "test"}))
    reader = PeriodicReader(exporter, aggregated)
    provider = MeterProvider(metric_readers=[reader], resource=aggregated.resource)
    metrics = ProxyMetrics("in", provider.get_meter("fastproxy.proxy"), aggregated)
    yield metrics, reader, exporter
    provider.shutdown()


def test_durations_land_in_explicit_buckets_with_the_upper_bound_inclusive(
        otlp_like: tuple[ProxyMetrics, PeriodicReader, KeepingExporter]) -> None:
    metrics, reader, exporter = otlp_like
    for seconds in (0.0005, 0.0007, 0.001, 20.0):
        metrics.record_call("a", "b", "/x.S/M", "OK", seconds, None)
    reader.force_flush()
    point = _points(exporter.batches[-1])["/x.S/M"]
    assert point.count == 4
    assert point.sum == pytest.approx(20.0022)
    assert (point.min, point.max) == (0.0005, 20.0)
    assert list(point.explicit_bounds) == list(CALL_DURATION_BOUNDS)
    # 0.0005 is in the first bucket (le=0.0005), 0.0007 and 0.001 in the second, 20 s past
    # the last bound.
    assert point.bucket_counts[:2] == [1, 2]
    assert point.bucket_counts[-1] == 1
    assert sum(point.bucket_counts) == point.count
    assert dict(point.attributes) == {"caller": "a", "callee": "b", "method": "/x.S/M",
                                      "code": "OK", "proxy": "in"}


def test_the_histogram_joins_the_sdk_instruments_of_its_meter(
        otlp_like: tuple[ProxyMetrics, PeriodicReader, KeepingExporter]) -> None:
    metrics, reader, exporter = otlp_like
    metrics.record_call("a", "b", "/x.S/M", "OK", 0.002, None)
    reader.force_flush()
    batch = exporter.batches[-1]
    assert len(batch.resource_metrics) == 1
    assert batch.resource_metrics[0].resource.attributes["service.name"] == "test"
    scopes = [scope.scope.name for scope in batch.resource_metrics[0].scope_metrics]
    assert scopes.count("fastproxy.proxy") == 1
    names = {name for _, name in _metrics(batch)}
    assert {"fastproxy.calls", DURATION} <= names
    duration = _metrics(batch)[("fastproxy.proxy", DURATION)]
    assert duration.unit == "s"
    assert duration.data.aggregation_temporality == (  # type: ignore[union-attr]
        AggregationTemporality.CUMULATIVE)


def test_cumulative_points_keep_counting_and_their_start(
        otlp_like: tuple[ProxyMetrics, PeriodicReader, KeepingExporter]) -> None:
    metrics, reader, exporter = otlp_like
    metrics.record_call("a", "b", "/x.S/M", "OK", 0.002, None)
    reader.force_flush()
    first = _points(exporter.batches[-1])["/x.S/M"]
    metrics.record_call("a", "b", "/x.S/M", "OK", 0.003, None)
    reader.force_flush()
    second = _points(exporter.batches[-1])["/x.S/M"]
    assert (first.count, second.count) == (1, 2)
    assert second.start_time_unix_nano == first.start_time_unix_nano
    assert second.time_unix_nano > first.time_unix_nano


def test_a_delta_reader_gets_each_window_with_its_own_min_and_max() -> None:
    exporter = KeepingExporter()
    aggregated = AggregatedMetrics()
    reader = PeriodicReader(exporter, aggregated, delta=True)
    provider = MeterProvider(metric_readers=[reader])
    try:
        metrics = ProxyMetrics("out", provider.get_meter("fastproxy.proxy"), aggregated)
        for seconds in (0.002, 0.004, 3.0):
            metrics.record_call("a", "b", "/x.S/M", "OK", seconds, None)
        reader.force_flush()
        first = _points(exporter.batches[-1])["/x.S/M"]
        for seconds in (0.01, 0.02):
            metrics.record_call("a", "b", "/x.S/M", "OK", seconds, None)
        reader.force_flush()
        second = _points(exporter.batches[-1])["/x.S/M"]
        reader.force_flush()
        quiet = exporter.batches[-1]
    finally:
        provider.shutdown()
    assert (first.count, first.min, first.max) == (3, 0.002, 3.0)
    assert (second.count, second.min, second.max) == (2, 0.01, 0.02)
    assert second.sum == pytest.approx(0.03)
    assert sum(second.bucket_counts) == 2
    assert second.start_time_unix_nano == first.time_unix_nano
    duration = _metrics(exporter.batches[1])[("fastproxy.proxy", DURATION)]
    assert duration.data.aggregation_temporality == (  # type: ignore[union-attr]
        AggregationTemporality.DELTA)
    assert ("fastproxy.proxy", DURATION) not in _metrics(quiet)  # nothing new: no point


@pytest.mark.parametrize(("value", "delta"), [
    ("delta", True), ("LowMemory", True), ("cumulative", False), ("", False)])
def test_the_otlp_temporality_preference_decides_delta(value: str, delta: bool) -> None:
    assert delta_preferred({"OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE": value}) is delta


def _prometheus_samples(family_name: str) -> list[Any]:
    text = generate_latest(REGISTRY).decode()
    return [sample for family in text_string_to_metric_families(text)
            if family.name == family_name for sample in family.samples]


def test_prometheus_gets_a_histogram_with_le_buckets_and_a_matching_count() -> None:
    aggregated = AggregatedMetrics()
    reader = PrometheusReader(aggregated)
    provider = MeterProvider(metric_readers=[reader])
    try:
        metrics = ProxyMetrics("in", provider.get_meter("fastproxy.proxy"), aggregated)
        for seconds in (0.0004, 0.03, 0.03):
            metrics.record_call("a", "b", "/prom.S/M", "OK", seconds, None)
        samples = [sample for sample in _prometheus_samples("fastproxy_call_duration_seconds")
                   if sample.labels.get("method") == "/prom.S/M"]
    finally:
        provider.shutdown()
    buckets = {sample.labels["le"]: sample.value for sample in samples
               if sample.name.endswith("_bucket")}
    by_name = {sample.name: sample.value for sample in samples
               if not sample.name.endswith("_bucket")}
    assert buckets["0.0005"] == 1
    assert buckets["0.025"] == 1
    assert buckets["0.05"] == 3
    assert buckets["+Inf"] == 3
    assert by_name["fastproxy_call_duration_seconds_count"] == 3
    assert by_name["fastproxy_call_duration_seconds_sum"] == pytest.approx(0.0604)


def test_series_past_the_limit_fold_into_one_per_code(
        otlp_like: tuple[ProxyMetrics, PeriodicReader, KeepingExporter],
        monkeypatch: pytest.MonkeyPatch) -> None:
    metrics, reader, exporter = otlp_like
    monkeypatch.setattr("fastproxy.telemetry.metrics.ATTRIBUTE_CACHE_LIMIT", 2)
    for index in range(5):
        metrics.record_call("a", "b", f"/scan.S/M{index}", "UNIMPLEMENTED", 0.001, None)
    reader.force_flush()
    points = _points(exporter.batches[-1])
    assert sorted(points) == ["/scan.S/M0", "/scan.S/M1", "other"]
    assert points["other"].count == 3
