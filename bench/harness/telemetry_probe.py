"""What an observed setup's telemetry did during one measurement: spans that reached the OTLP
receiver, and how far the proxies' Prometheus counters moved.

The proxies batch spans (OTEL_BSP_*: up to 512 a batch, at most every 5 s by default), so the
spans of a window leave after it. Before the first CPU reading, `TelemetryProbe.start` waits
until the receiver holds one span per call each proxy has counted so far (its
`fastproxy_calls_total`), so no earlier call's export lands in the window; after the load,
`settle` waits (before the last CPU reading) until it holds one more span per proxy per call
(bidi: per stream) of the window, or `DRAIN_TIMEOUT_S` passed: the export work of exactly the
window's spans is inside the measured CPU.
With sampling (`observed-sampled`: the proxies' default sampler, about 1% of calls traced)
the number of spans to wait for is unknown, so `start` and `settle` wait instead until the
receiver's span counts of the setup's proxies have not changed for `STABLE_BSP_DELAYS` x the
proxies' OTEL_BSP_SCHEDULE_DELAY (or `DRAIN_TIMEOUT_S` passed); a window of it needs spans
only when the calls should have given some surely (units x sample ratio >= `MIN_SAMPLED_CALLS`,
e.g. 2,000 calls at 1%): a shorter window may well trace none.
The Prometheus endpoints are scraped before the first and after the last CPU reading, so the
scrapes themselves are not measured.
"""

from __future__ import annotations

import time
import urllib.request
from dataclasses import dataclass
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from harness.otlp_receiver import counts
from harness.setups import Setup

DRAIN_TIMEOUT_S = 7.0
POLL_S = 0.1
SPANS_PER_UNIT = 2  # one SERVER span per proxy (out, in) per traced call (stream)
CALLS_METRIC = "fastproxy_calls_total"
STABLE_BSP_DELAYS = 2  # sampled: counts unchanged for this many export schedule delays
MIN_SAMPLED_CALLS = 20  # sampled: spans required once units x ratio reaches this


def proxy_spans(receiver: str, service_names: dict[str, str]) -> dict[str, int]:
    """Spans received so far from each proxy of a setup (label -> count), given each proxy's
    service.name (label -> name)."""
    received = counts(receiver).spans
    return {label: received.get(name, 0) for label, name in service_names.items()}


def scrape_calls(port: int) -> float:
    """The sum of `fastproxy_calls_total` over all labels on a proxy's /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return sum(sample.value for family in text_string_to_metric_families(text)
               for sample in family.samples if sample.name == CALLS_METRIC)


@dataclass
class TelemetryProbe:
    """One measurement of the observed setup: `start()` before the first CPU reading,
    `settle(units)` after the load and before the last, `finish()` after it."""

    setup: Setup
    spans_before: dict[str, int] | None = None
    calls_before: dict[str, float] | None = None
    settled: dict[str, Any] | None = None

    @property
    def active(self) -> bool:
        return bool(self.setup.otlp_receiver)

    @property
    def sampled(self) -> bool:
        return self.setup.trace_sample_ratio < 1.0

    def _spans(self) -> dict[str, int]:
        return proxy_spans(self.setup.otlp_receiver, self.setup.otlp_service_names)

    def start(self) -> None:
        if not self.active:
            return
        self.calls_before = {label: scrape_calls(port)
                             for label, port in self.setup.metrics_ports.items()}
        # spans of earlier calls (warm-up, h2load's sizing probe) leave before the window
        self.spans_before = (self._wait_stable() if self.sampled
                             else self._wait_for(self.calls_before))[0]

    def _wait_for(self, spans: dict[str, float]) -> tuple[dict[str, int], float]:
        """(spans received per proxy, seconds waited) once each proxy sent `spans[label]`
        spans, or after DRAIN_TIMEOUT_S."""
        began = time.monotonic()
        while True:
            now = self._spans()
            waited = time.monotonic() - began
            if all(now[label] >= spans[label] for label in now) or waited >= DRAIN_TIMEOUT_S:
                return now, waited
            time.sleep(POLL_S)

    def _wait_stable(self) -> tuple[dict[str, int], float]:
        """(spans received per proxy, seconds waited) once no count changed for
        STABLE_BSP_DELAYS x the proxies' export schedule delay, or after DRAIN_TIMEOUT_S."""
        delay_ms = self.setup.bsp_delay_ms if self.setup.bsp_delay_ms is not None else 5000
        hold_s = STABLE_BSP_DELAYS * delay_ms / 1000
        began = changed = time.monotonic()
        last = self._spans()
        while True:
            time.sleep(POLL_S)
            now, at = self._spans(), time.monotonic()
            if now != last:
                last, changed = now, at
            if at - changed >= hold_s or at - began >= DRAIN_TIMEOUT_S:
                return now, at - began

    def settle(self, units: int) -> None:
        """Waits for `SPANS_PER_UNIT * units` new spans (units: calls, or bidi streams);
        sampled, for the span counts to stay still."""
        if not self.active or self.spans_before is None:
            return
        before = self.spans_before
        now, waited = (self._wait_stable() if self.sampled else
                       self._wait_for({label: before[label] + units for label in before}))
        got = {label: now[label] - before[label] for label in now}
        ratio = self.setup.trace_sample_ratio
        self.settled = {"spans": got, "spans_expected": SPANS_PER_UNIT * units * ratio,
                        "units": units, "sample_ratio": ratio, "drain_s": round(waited, 3)}

    def finish(self) -> tuple[dict[str, Any], str]:
        """(figures for the measurement, a problem that makes it invalid or "")."""
        if not self.active or self.settled is None or self.calls_before is None:
            return {}, ""
        figures = dict(self.settled)
        figures["prometheus_calls"] = {
            label: scrape_calls(port) - self.calls_before[label]
            for label, port in self.setup.metrics_ports.items()}
        sure = figures["units"] * figures["sample_ratio"] >= MIN_SAMPLED_CALLS
        missing = [label for label, spans in figures["spans"].items()
                   if spans <= 0 and (sure or not self.sampled)]
        if missing:
            return figures, ("the OTLP receiver got no spans from "
                             + ", ".join(missing) + " for this window")
        still = [label for label, moved in figures["prometheus_calls"].items() if moved <= 0]
        if still:
            return figures, f"{CALLS_METRIC} did not move on " + ", ".join(still)
        return figures, ""
