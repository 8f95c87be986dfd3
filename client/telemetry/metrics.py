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

import time
from collections.abc import Callable, Iterable
from typing import Any

from opentelemetry import metrics as otel_metrics

ATTRIBUTE_CACHE_LIMIT = 10_000


def meter(name: str = "fastproxy") -> otel_metrics.Meter:
    """The meter of the process's configured MeterProvider (a no-op one if none is)."""
    return otel_metrics.get_meter(name)


Attributes = dict[str, str]


class ProxyMetrics:
    """What one proxy (or the embedded SDK / server) records per call and per message.

    Per call: `calls` {caller, callee, method, code, proxy}, `call_duration` (histogram, s),
    `refusals` {reason, proxy}, `received`/`sent` bytes {proxy}, `seal_seconds` /
    `open_seconds` (time in the pipeline's seal and open, counters in s), `active_streams`.
    Observed at each collection: `policy_revision` and `watch_reconnects` from callbacks.

    Attribute dicts are made once per (caller, callee, method, code) and reused, so a call
    costs a dictionary lookup plus the SDK's own aggregation.
    """

    def __init__(self, proxy: str, provider_meter: otel_metrics.Meter | None = None,
                 revision: Callable[[], int] | None = None,
                 reconnects: Callable[[], int] | None = None) -> None:
        m = provider_meter or meter("fastproxy.proxy")
        self.proxy = proxy
        self._proxy_attributes: Attributes = {"proxy": proxy}
        self.calls = m.create_counter(
            "fastproxy.calls", unit="{call}",
            description="Calls handled, by caller, callee, method and gRPC status code")
        self.call_duration = m.create_histogram(
            "fastproxy.call.duration", unit="s",
            description="Time from a call's arrival to its status",
            explicit_bucket_boundaries_advisory=[
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                5.0, 10.0])
        self.refusals = m.create_counter(
            "fastproxy.refusals", unit="{call}",
            description="Calls refused by this proxy, by reason")
        self.received = m.create_counter(
            "fastproxy.received", unit="By",
            description="Message bytes received from clients (requests) and upstreams "
                        "(responses), as they arrived on the wire")
        self.sent = m.create_counter(
            "fastproxy.sent", unit="By",
            description="Message bytes sent to upstreams (requests) and clients (responses)")
        self.seal_seconds = m.create_counter(
            "fastproxy.seal", unit="s", description="Time spent sealing messages")
        self.open_seconds = m.create_counter(
            "fastproxy.open", unit="s", description="Time spent opening messages")
        self.active_streams = m.create_up_down_counter(
            "fastproxy.active_streams", unit="{stream}",
            description="Calls in progress through this proxy")
        self._callbacks: list[Any] = []
        if revision is not None:
            m.create_observable_gauge(
                "fastproxy.policy.revision", unit="{revision}",
                description="The policy revision in force (0: none yet)",
                callbacks=[_observe(revision, self._proxy_attributes)])
        if reconnects is not None:
            m.create_observable_counter(
                "fastproxy.watch.reconnects", unit="{reconnect}",
                description="Times the policy Watch stream to the Center was re-opened",
                callbacks=[_observe(reconnects, self._proxy_attributes)])
        self._call_attributes: dict[tuple[str, str, str, str], Attributes] = {}
        self._reason_attributes: dict[str, Attributes] = {}

    @property
    def proxy_attributes(self) -> Attributes:
        return self._proxy_attributes

    def call_attributes(self, caller: str, callee: str, method: str, code: str) -> Attributes:
        key = (caller, callee, method, code)
        found = self._call_attributes.get(key)
        if found is None:
            if len(self._call_attributes) >= ATTRIBUTE_CACHE_LIMIT:
                self._call_attributes.clear()
            found = {"caller": caller, "callee": callee, "method": method, "code": code,
                     "proxy": self.proxy}
            self._call_attributes[key] = found
        return found

    def reason_attributes(self, reason: str) -> Attributes:
        found = self._reason_attributes.get(reason)
        if found is None:
            found = self._reason_attributes[reason] = {"reason": reason, "proxy": self.proxy}
        return found

    def record_call(self, caller: str, callee: str, method: str, code: str,
                    duration_s: float, reason: str | None) -> None:
        attributes = self.call_attributes(caller, callee, method, code)
        self.calls.add(1, attributes)
        self.call_duration.record(duration_s, attributes)
        if reason is not None:
            self.refusals.add(1, self.reason_attributes(reason))


def _observe(read: Callable[[], int], attributes: Attributes
             ) -> Callable[[otel_metrics.CallbackOptions], Iterable[otel_metrics.Observation]]:
    def callback(_options: otel_metrics.CallbackOptions) -> Iterable[otel_metrics.Observation]:
        return (otel_metrics.Observation(read(), attributes),)
    return callback


def seconds_since(started: float) -> float:
    return time.perf_counter() - started
