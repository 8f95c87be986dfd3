"""The instruments FastProxy records, and `meter()` for components that add their own.

Naming: OpenTelemetry instrument names are dotted and carry a unit; the Prometheus endpoint
(opentelemetry-exporter-prometheus) turns them into what Prometheus users expect: dots become
underscores, the unit becomes a suffix (`s` -> `_seconds`, `By` -> `_bytes`) and counters end
in `_total`. E.g. `fastproxy.calls` -> `fastproxy_calls_total`, `fastproxy.call.duration`
(unit `s`, histogram) -> `fastproxy_call_duration_seconds_bucket/_sum/_count`.

Other components (e.g. the Center) add instruments like this, after `configure_telemetry`:

    from fastproxy.telemetry.metrics import meter
    nodes = meter("fastproxy.center").create_up_down_counter(
        "fastproxy.center.connected_nodes", unit="{node}", description="...")
    nodes.add(1, {"role": "in"})

Without `configure_telemetry` (or with no metrics exporter and no `--metrics-port`), `meter()`
returns OpenTelemetry's no-op meter, so recording costs next to nothing. Keep attribute
values few (service names, method names, status codes, reasons): every distinct set is a
time series. Never a secret, payload or peer address as an attribute.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from opentelemetry import metrics as otel_metrics

if TYPE_CHECKING:  # it loads the SDK and exporters: only once metrics are configured
    from fastproxy.telemetry.aggregated import AggregatedMetrics, HistogramSeries

ATTRIBUTE_CACHE_LIMIT = 10_000
# fastproxy.call.duration's buckets (s): from a loopback hop (~0.5 ms) to a slow upstream.
CALL_DURATION_BOUNDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                        2.5, 5.0, 10.0)


def meter(name: str = "fastproxy") -> otel_metrics.Meter:
    """The meter of the process's configured MeterProvider (a no-op one if none is)."""
    return otel_metrics.get_meter(name)


Attributes = dict[str, str]


class CallSeries:
    """One (caller, callee, method, code) of a proxy: its attributes (made once), its call
    count and its duration histogram series."""

    __slots__ = ("attributes", "calls", "durations")

    def __init__(self, attributes: Attributes, durations: HistogramSeries) -> None:
        self.attributes = attributes
        self.calls = 0
        self.durations = durations


class ProxyMetrics:
    """What one proxy records per call and per message.

    Per call: `fastproxy.calls` {caller, callee, method, code, proxy},
    `fastproxy.call.duration` (histogram, s), `fastproxy.refusals` {reason, proxy},
    `fastproxy.received`/`fastproxy.sent` (bytes), `fastproxy.seal`/`fastproxy.open` (s spent
    in the pipeline's seal and open), `fastproxy.active_streams`; and from callbacks:
    `fastproxy.policy.revision`, `fastproxy.node.watch.reconnects`.

    Why counters are kept here and reported by observable instruments: one SDK `add()` costs
    ~10-15 us (it builds a frozenset of the attributes and takes a lock), and a call made
    eight of them (measured: +120 us per call, ~10% of the in-proxy's CPU per call). The
    duration histogram is aggregated here too, for the same reason (an SDK `record()` is
    8.5-13 us: `fastproxy.telemetry.aggregated`), and added to each collection by the
    readers `configure_telemetry` builds. A call now costs one dict lookup, a few integer
    additions and a bisect; the SDK reads the running totals at each collection (OTLP
    export, Prometheus scrape). The proxy's event loop is the only writer; collection
    threads only read.
    """

    def __init__(self, proxy: str, provider_meter: otel_metrics.Meter,
                 aggregated: AggregatedMetrics,
                 revision: Callable[[], int] | None = None,
                 reconnects: Callable[[], int] | None = None) -> None:
        m = provider_meter
        self.proxy = proxy
        self._proxy_attributes: Attributes = {"proxy": proxy}
        # (caller, callee, method, code) -> its series
        self._calls: dict[tuple[str, str, str, str], CallSeries] = {}
        self._refusals: dict[str, int] = {}
        # (caller, method) -> calls that passed only because of audit mode
        self._would_deny: dict[tuple[str, str], int] = {}
        self.received_bytes = 0
        self.sent_bytes = 0
        self.sealed_s = 0.0
        self.opened_s = 0.0
        self.active = 0
        attrs = self._proxy_attributes
        m.create_observable_counter(
            "fastproxy.calls", unit="{call}", callbacks=[self._observe_calls],
            description="Calls handled, by caller, callee, method and gRPC status code")
        self.call_duration = aggregated.histogram(
            m.name, "fastproxy.call.duration", unit="s",
            description="Time from a call's arrival to its status",
            bounds=CALL_DURATION_BOUNDS)
        m.create_observable_counter(
            "fastproxy.refusals", unit="{call}", callbacks=[self._observe_refusals],
            description="Calls refused by this proxy, by reason")
        m.create_observable_counter(
            "fastproxy.would_deny", unit="{call}", callbacks=[self._observe_would_deny],
            description="Calls let through by audit mode that enforcing would deny, by caller "
                        "and method")
        m.create_observable_counter(
            "fastproxy.received", unit="By",
            callbacks=[_observe(lambda: self.received_bytes, attrs)],
            description="Message bytes received from clients (requests) and upstreams "
                        "(responses), as they arrived on the wire")
        m.create_observable_counter(
            "fastproxy.sent", unit="By", callbacks=[_observe(lambda: self.sent_bytes, attrs)],
            description="Message bytes sent to upstreams (requests) and clients (responses)")
        m.create_observable_counter(
            "fastproxy.seal", unit="s", callbacks=[_observe(lambda: self.sealed_s, attrs)],
            description="Time spent sealing messages")
        m.create_observable_counter(
            "fastproxy.open", unit="s", callbacks=[_observe(lambda: self.opened_s, attrs)],
            description="Time spent opening messages")
        m.create_observable_up_down_counter(
            "fastproxy.active_streams", unit="{stream}",
            callbacks=[_observe(lambda: self.active, attrs)],
            description="Calls in progress through this proxy")
        if revision is not None:
            m.create_observable_gauge(
                "fastproxy.policy.revision", unit="{revision}",
                description="The policy revision in force (0: none yet)",
                callbacks=[_observe(revision, attrs)])
        if reconnects is not None:
            m.create_observable_counter(
                "fastproxy.node.watch.reconnects", unit="{reconnect}",
                description="Times the policy Watch stream to the Center was re-opened",
                callbacks=[_observe(reconnects, attrs)])

    @property
    def proxy_attributes(self) -> Attributes:
        return self._proxy_attributes

    def _series(self, caller: str, callee: str, method: str, code: str) -> CallSeries:
        key = (caller, callee, method, code)
        found = self._calls.get(key)
        if found is None:
            if len(self._calls) >= ATTRIBUTE_CACHE_LIMIT:
                # Unbounded label values (e.g. methods a scanner invents) must not grow
                # memory without end: fold new series into one per code.
                key = ("", "", "other", code)
                found = self._calls.get(key)
            if found is None:
                attributes = {"caller": key[0], "callee": key[1], "method": key[2],
                              "code": code, "proxy": self.proxy}
                found = CallSeries(attributes, self.call_duration.series(attributes))
                self._calls[key] = found
        return found

    def record_call(self, caller: str, callee: str, method: str, code: str,
                    duration_s: float, reason: str | None) -> None:
        series = (self._calls.get((caller, callee, method, code))
                  or self._series(caller, callee, method, code))
        series.calls += 1
        series.durations.record(duration_s)
        if reason is not None:
            self._refusals[reason] = self._refusals.get(reason, 0) + 1

    def would_deny(self, caller: str, method: str) -> None:
        key = (caller, method)
        if key not in self._would_deny and len(self._would_deny) >= ATTRIBUTE_CACHE_LIMIT:
            key = (caller, "other")
        self._would_deny[key] = self._would_deny.get(key, 0) + 1

    def _observe_would_deny(self, _options: otel_metrics.CallbackOptions
                            ) -> Iterable[otel_metrics.Observation]:
        return [otel_metrics.Observation(count, {"caller": caller, "method": method,
                                                 "proxy": self.proxy})
                for (caller, method), count in list(self._would_deny.items())]

    def _observe_calls(self, _options: otel_metrics.CallbackOptions
                       ) -> Iterable[otel_metrics.Observation]:
        return [otel_metrics.Observation(series.calls, series.attributes)
                for series in list(self._calls.values())]

    def _observe_refusals(self, _options: otel_metrics.CallbackOptions
                          ) -> Iterable[otel_metrics.Observation]:
        return [otel_metrics.Observation(count, {"reason": reason, "proxy": self.proxy})
                for reason, count in list(self._refusals.items())]


def _observe(read: Callable[[], float], attributes: Attributes
             ) -> Callable[[otel_metrics.CallbackOptions], Iterable[otel_metrics.Observation]]:
    def callback(_options: otel_metrics.CallbackOptions) -> Iterable[otel_metrics.Observation]:
        return (otel_metrics.Observation(read(), attributes),)
    return callback

