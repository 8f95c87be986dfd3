"""Medians, target ratios, the JSON document and the Markdown section of docs/benchmarks.md."""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import subprocess
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from harness import h2load
from harness.measure import Measurement, size_label
from harness.setups import BARE_LABEL, BARE_SETUP, WORKERS_NOTE, Setup

BEGIN = "<!-- dataplane:begin (written by bench/dataplane.py; edits here are overwritten) -->"
END = "<!-- dataplane:end -->"
TARGET_SCENARIO_SIZE = 1024
PROXIES = ("out-proxy", "in-proxy")
OBSERVED_MAX = 1.10  # observability issue: tracing and metrics on cost < 10% more proxy CPU
TUNNEL_OFF = "sealed-no-tunnel"
NO_REFLECTION = "sealed-no-reflection"
DESCRIPTORS = "sealed-descriptors"  # no reflection, kinds from the in-proxy's --descriptor-set
PROXYLESS = "proxyless"
# issue 15's targets
NO_REFLECTION_MAX = 1.05  # hop CPU per call without / with the upstream's reflection
CHAIN_DIRECT_MIN = 0.30  # chain / direct calls per second, h2load
HOP_UPSTREAM_MAX = 1.2  # one sealed hop's CPU per call / the echo upstream's own
PROXYLESS_CPU_MAX_MS = 0.12  # client + server CPU per call over a plain call's
PROXYLESS_P50_MAX_MS = 0.2  # added p50, one call in flight
SDK_CLIENT_MAX_MS = 0.1  # the embedded SDK's added client CPU per call
IDLE_RSS_OVER_BARE_MAX_MIB = 10.0  # a proxy's idle RSS over a bare grpc.aio server's
PEAK_RSS_MAX_MIB = 60.0  # a proxy's peak RSS under load, payloads <= 1 KiB
Json = dict[str, Any]


OBSERVED_NOTE = (
    "all are the same chain (out-proxy + in-proxy, AES-256-GCM, HMAC, authz, rate limit); "
    "`observed` runs with the standard `OTEL_*` variables (OTLP/gRPC export of traces and "
    "metrics to a real receiver in its own process, `bench/harness/otlp_receiver.py`, sampler "
    "`parentbased_always_on`: every call traced, the SDK's default span batching, metrics "
    "every 10 s) and `--metrics-port` on both proxies; `sealed` runs with no `OTEL_*` "
    "variable. The ratio is the two proxies' CPU per call, within each run. A window of "
    "`observed` ends once the receiver holds its spans (export work inside the window); a "
    "window in which the receiver got no span from either proxy, or the Prometheus call "
    "counter did not move, is invalid.")
OBSERVED_SAMPLED_NOTE = (
    "the same as `observed` (its own receiver) but with the proxies' default sampler "
    "(`OTEL_TRACES_SAMPLER` unset: parent-based, 1% of root calls; the harness's calls carry "
    "no trace context, so the out-proxy samples 1% and the in-proxy follows it) and "
    "`OTEL_BSP_SCHEDULE_DELAY=200` (ms) instead of the default 5 s, so that the end of the "
    "window's exports can be seen: a window ends once the receiver's span counts of both "
    "proxies stayed still for 2 x 200 ms. Exporting every 0.2 s costs at least as much as "
    "every 5 s (smaller batches, more export calls), so this figure is conservative. A "
    "window is invalid if the Prometheus call counter did not move, and, only when it had "
    "enough calls to trace some surely (calls x 1% >= 20), if the receiver got no span "
    "from either proxy.")
TUNNEL_NOTE = (
    "`sealed` carries fast-path unary calls from the out-proxy to the in-proxy over one "
    "long-lived stream (the tunnel, on by default); `sealed-no-tunnel` is the same chain with "
    "`--tunnel off` on its out-proxy, each call its own HTTP/2 stream.")
CLIENT_NOTE = (
    "CPU seconds per 1,000 calls (ms per call) of the Python load client itself "
    "(`time.process_time` over its load) and of the setup's proxies. In `embedded` the "
    "client runs the SDK in embedded mode and does the out-proxy's work (route, sign, seal, "
    "open) itself, so compare its client + proxies with `sealed`'s.")


def progress_line(m: Measurement) -> str:
    cpu = " ".join(f"{label}={value:.3f}" for label, value in m.cpu_s_per_1000.items())
    latency = f" p50={m.p50_ms:.2f}ms p99={m.p99_ms:.2f}ms" if m.p50_ms is not None else ""
    state = "ok" if m.valid else f"INVALID ({m.problem})"
    return (f"run {m.run} {m.setup:16} {m.scenario:28} {m.throughput:8.0f}/s{latency} "
            f"cpu s/1k calls: {cpu} {state}")


def spread(values: Sequence[float]) -> Json:
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "n": len(values)}


def machine() -> Json:
    model = ""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        model = next((line.split(":", 1)[1].strip() for line in out.splitlines()
                      if line.startswith("Model name:")), "")
    except OSError:
        pass
    mem_kib = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kib = int(line.split()[1])
    return {"cpu_model": model or platform.processor(), "cores": os.cpu_count(),
            "memory_gib": round(mem_kib / 1024 / 1024, 1), "kernel": platform.release(),
            "python": platform.python_version()}


def versions() -> Json:
    found: Json = {}
    for package in ("grpcio", "protobuf", "cryptography", "fastproxy"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = "not installed"
    try:
        out = subprocess.run(["nginx", "-v"], capture_output=True, text=True, check=False)
        found["nginx"] = (out.stderr or out.stdout).strip().removeprefix("nginx version: ")
    except OSError:
        found["nginx"] = "not installed"
    found["h2load"] = h2load.version()
    return found


def summarize(measurements: Sequence[Measurement]) -> Json:
    """setup -> scenario -> figure -> {median, min, max, n}, over the valid runs."""
    groups: dict[tuple[str, str], list[Measurement]] = {}
    for m in measurements:
        if m.valid:
            groups.setdefault((m.setup, m.scenario), []).append(m)
    out: Json = {}
    for (setup, scenario), ms in groups.items():
        figures: Json = {"throughput": spread([m.throughput for m in ms]),
                         "calls": spread([float(m.calls) for m in ms])}
        for name in ("p50_ms", "p90_ms", "p99_ms"):
            values = [getattr(m, name) for m in ms if getattr(m, name) is not None]
            if values:
                figures[name] = spread(values)
        for label in ms[0].cpu_s_per_1000:
            figures[f"cpu_s_per_1000.{label}"] = spread([m.cpu_s_per_1000[label] for m in ms])
        if "client" in ms[0].cpu_s_per_1000:
            figures["cpu_s_per_1000.proxies"] = spread([_proxies_cpu(m) for m in ms])
            figures["cpu_s_per_1000.client+proxies"] = spread(
                [_proxies_cpu(m) + m.cpu_s_per_1000["client"] for m in ms])
        spans = [sum(m.telemetry["spans"].values()) / m.telemetry["units"]
                 for m in ms if m.telemetry.get("units")]
        if spans:
            figures["otlp_spans_per_unit"] = spread(spans)
        for label in ms[0].peak_rss_kib:
            figures[f"peak_rss_mib.{label}"] = spread([m.peak_rss_kib[label] / 1024 for m in ms])
        out.setdefault(setup, {})[scenario] = figures
    return out


def _proxies_cpu(m: Measurement) -> float:
    """CPU seconds per 1,000 calls of all the proxies of the measurement's setup."""
    return sum(value for label, value in m.cpu_s_per_1000.items() if label.endswith("proxy"))


def _per_run(measurements: Sequence[Measurement], scenario: str, numerator: str,
             denominator: str, figure: Callable[[Measurement, Measurement], float | None]
             ) -> list[float]:
    """`figure(numerator's measurement, denominator's)` for every run of every batch that
    measured both."""
    by_key = {(m.batch, m.run, m.setup): m for m in measurements
              if m.valid and m.scenario == scenario}
    values = []
    for (batch, run, setup), m in by_key.items():
        other = by_key.get((batch, run, denominator))
        if setup == numerator and other is not None:
            value = figure(m, other)
            if value is not None:
                values.append(value)
    return values


def _hop_cpu(m: Measurement) -> float:
    return statistics.mean(m.cpu_s_per_1000[p] for p in PROXIES) / 1000


def targets(measurements: Sequence[Measurement], use_h2load: bool) -> Json:
    """The issue's ratios, computed within each run of one batch (one invocation of the
    harness), then the median over runs. When the measurements come from several batches (a
    partial run merged into an earlier one), each target comes from the newest batch that
    measured both of its setups, and its entry names that batch."""
    batches = sorted({m.batch for m in measurements})
    out: Json = {}
    for batch in batches:
        found = _batch_targets([m for m in measurements if m.batch == batch], use_h2load)
        for key, entry in found.items():
            out[key] = {**entry, "batch": batch} if isinstance(entry, dict) else entry
    return out


def _batch_targets(measurements: Sequence[Measurement], use_h2load: bool) -> Json:
    one_kib = size_label(TARGET_SCENARIO_SIZE)
    saturate = f"unary {one_kib} {'h2load' if use_h2load else 'py'} saturate"
    single = f"unary {one_kib} py single"
    out: Json = {"scenario_cpu": saturate, "scenario_latency": single}

    def cpu_ratio(m: Measurement, nginx: Measurement) -> float:
        return _hop_cpu(m) / (nginx.cpu_s_per_1000["nginx"] / 1000)

    def hop_ms(m: Measurement, _other: Measurement) -> float:
        return _hop_cpu(m) * 1000

    for setup in ("sealed", "sealed+gzip", TUNNEL_OFF):
        values = _per_run(measurements, saturate, setup, "nginx", cpu_ratio)
        if values:  # sealed-no-tunnel: informational, not a target
            out[f"cpu_ratio.{setup}"] = spread(values) if setup == TUNNEL_OFF else {
                **spread(values), "target_max": 4.0, "met": statistics.median(values) <= 4.0}
        hop = _per_run(measurements, saturate, setup, setup, hop_ms)
        if hop:
            out[f"hop_cpu_ms.{setup}"] = spread(hop)
    for pct, limit in (("p50", 1.0), ("p99", 2.0)):
        def added(m: Measurement, direct: Measurement, pct: str = pct) -> float | None:
            mine, base = getattr(m, f"{pct}_ms"), getattr(direct, f"{pct}_ms")
            return None if mine is None or base is None else float(mine - base)

        values = _per_run(measurements, single, "sealed", "direct", added)
        if values:
            out[f"added_{pct}_ms.sealed"] = {**spread(values), "target_max": limit,
                                             "met": statistics.median(values) <= limit}
        values = _per_run(measurements, single, TUNNEL_OFF, "direct", added)
        if values:  # informational, next to sealed's
            out[f"added_{pct}_ms.{TUNNEL_OFF}"] = spread(values)
    peaks = [m.peak_rss_kib[p] / 1024 for m in measurements if m.valid
             and m.setup.startswith("sealed") for p in PROXIES if p in m.peak_rss_kib]
    # VmHWM never falls: only the first run's small-payload figures come before any 64 KiB
    small = [m.peak_rss_kib[p] / 1024 for m in measurements if m.valid and m.run == 1
             and m.setup.startswith("sealed") and m.size <= TARGET_SCENARIO_SIZE
             for p in PROXIES if p in m.peak_rss_kib]
    if peaks:  # informational: the target is for payloads up to 1 KiB
        out["proxy_peak_rss_mib.all_payloads"] = {"max": max(peaks)}
    if small:
        out["proxy_peak_rss_mib.up_to_1KiB"] = {"max": max(small),
                                                "target_max": PEAK_RSS_MAX_MIB,
                                                "met": max(small) <= PEAK_RSS_MAX_MIB}

    def observed_ratio(m: Measurement, sealed: Measurement) -> float:
        return _hop_cpu(m) / _hop_cpu(sealed)

    for key, scenario in (("saturate", saturate), ("single", single)):
        for setup, prefix in (("observed", "observed_cpu_ratio"),
                              ("observed-sampled", "observed_sampled_cpu_ratio")):
            values = _per_run(measurements, scenario, setup, "sealed", observed_ratio)
            if values:
                out[f"{prefix}.{key}"] = {
                    **spread(values), "scenario": scenario, "target_max": OBSERVED_MAX,
                    "met": statistics.median(values) <= OBSERVED_MAX}
        # the tunnel's saving: CPU per sealed hop with it / without it, within each run
        values = _per_run(measurements, scenario, "sealed", TUNNEL_OFF, observed_ratio)
        if values:
            out[f"tunnel_cpu_ratio.{key}"] = {**spread(values), "scenario": scenario}

    def throughput_ratio(m: Measurement, one: Measurement) -> float:
        return m.throughput / one.throughput

    values = _per_run(measurements, saturate, "sealed-workers2", "sealed", throughput_ratio)
    if values:
        out["workers2_throughput_ratio"] = {**spread(values), "target_min": 1.7,
                                            "met": statistics.median(values) >= 1.7,
                                            "scaled": WORKERS_NOTE}
    out.update(_issue15_targets(measurements, saturate, single))
    return out


def _client_and(m: Measurement, server: str) -> float:
    return m.cpu_s_per_1000["client"] + m.cpu_s_per_1000[server]


def _issue15_targets(measurements: Sequence[Measurement], saturate: str, single: str) -> Json:
    """No reflection, no penalty; the chain's throughput; a hop against the upstream's own
    CPU; the proxyless path (issue 15). CPU figures are ms per call."""
    out: Json = {}

    def hop_ratio(m: Measurement, other: Measurement) -> float:
        return _hop_cpu(m) / _hop_cpu(other)

    values = _per_run(measurements, saturate, NO_REFLECTION, "sealed", hop_ratio)
    if values:
        out["no_reflection_cpu_ratio"] = {
            **spread(values), "scenario": saturate, "target_max": NO_REFLECTION_MAX,
            "met": statistics.median(values) <= NO_REFLECTION_MAX}
    values = _per_run(measurements, saturate, DESCRIPTORS, "sealed", hop_ratio)
    if values:
        out["descriptors_cpu_ratio"] = {
            **spread(values), "scenario": saturate, "target_max": NO_REFLECTION_MAX,
            "met": statistics.median(values) <= NO_REFLECTION_MAX}

    def throughput_ratio(m: Measurement, direct: Measurement) -> float:
        return m.throughput / direct.throughput

    def upstream_ratio(m: Measurement, _same: Measurement) -> float | None:
        own = m.cpu_s_per_1000.get("upstream", 0.0)
        return _hop_cpu(m) / (own / 1000) if own > 0 else None

    for setup in ("sealed", NO_REFLECTION, DESCRIPTORS):
        values = _per_run(measurements, saturate, setup, "direct", throughput_ratio)
        if values:
            out[f"chain_direct_throughput.{setup}"] = {
                **spread(values), "scenario": saturate, "target_min": CHAIN_DIRECT_MIN,
                "met": statistics.median(values) >= CHAIN_DIRECT_MIN}
        values = _per_run(measurements, saturate, setup, setup, upstream_ratio)
        if values:
            out[f"hop_upstream_ratio.{setup}"] = {
                **spread(values), "scenario": saturate, "target_max": HOP_UPSTREAM_MAX,
                "met": statistics.median(values) <= HOP_UPSTREAM_MAX}

    py_saturate = saturate.replace("h2load", "py")
    for key, scenario in (("saturate", py_saturate), ("single", single)):
        def added_cpu(m: Measurement, direct: Measurement) -> float | None:
            if "app" not in m.cpu_s_per_1000 or "client" not in direct.cpu_s_per_1000:
                return None
            return _client_and(m, "app") - _client_and(direct, "upstream")

        def added_client(m: Measurement, direct: Measurement) -> float | None:
            if "client" not in m.cpu_s_per_1000 or "client" not in direct.cpu_s_per_1000:
                return None
            return m.cpu_s_per_1000["client"] - direct.cpu_s_per_1000["client"]

        values = _per_run(measurements, scenario, PROXYLESS, "direct", added_cpu)
        if values:
            out[f"proxyless_added_cpu_ms.{key}"] = {
                **spread(values), "scenario": scenario, "target_max": PROXYLESS_CPU_MAX_MS,
                "met": statistics.median(values) <= PROXYLESS_CPU_MAX_MS}
        values = _per_run(measurements, scenario, PROXYLESS, "direct", added_client)
        if values:
            out[f"sdk_added_client_cpu_ms.{key}"] = {
                **spread(values), "scenario": scenario, "target_max": SDK_CLIENT_MAX_MS,
                "met": statistics.median(values) <= SDK_CLIENT_MAX_MS}

    def added_p50(m: Measurement, direct: Measurement) -> float | None:
        if m.p50_ms is None or direct.p50_ms is None:
            return None
        return float(m.p50_ms - direct.p50_ms)

    values = _per_run(measurements, single, PROXYLESS, "direct", added_p50)
    if values:
        out["proxyless_added_p50_ms"] = {
            **spread(values), "scenario": single, "target_max": PROXYLESS_P50_MAX_MS,
            "met": statistics.median(values) <= PROXYLESS_P50_MAX_MS}
    return out


def idle_rss_target(idle_rss_mib: dict[str, dict[str, float]]) -> Json:
    """The proxies' largest RSS at start (policy loaded, no call yet) over the bare grpc.aio
    server's (the upstream without reflection) at start; {} when either was not measured."""
    bare = idle_rss_mib.get(BARE_SETUP, {}).get(BARE_LABEL)
    proxies = [mib for setup in idle_rss_mib.values() for label, mib in setup.items()
               if label in PROXIES]
    if not bare or not proxies:
        return {}
    over = max(proxies) - bare
    return {"idle_rss_over_bare_mib": {"max": over, "proxy_mib": max(proxies),
                                       "bare_mib": bare,
                                       "target_max": IDLE_RSS_OVER_BARE_MAX_MIB,
                                       "met": over <= IDLE_RSS_OVER_BARE_MAX_MIB}}


def document(args: argparse.Namespace, argv: Sequence[str], started_at: datetime.datetime,
             setups: dict[str, Setup], measurements: Sequence[Measurement],
             use_h2load: bool, idle_rss_kib: dict[str, dict[str, int]]) -> Json:
    date = started_at.isoformat(timespec="seconds")
    idle_mib = {name: {label: kib / 1024 for label, kib in rss.items()}
                for name, rss in idle_rss_kib.items()}
    batch = {"date": date, "command": "python bench/dataplane.py " + " ".join(argv[1:]),
             "setups": list(setups), "machine": machine(), "versions": versions()}
    return {
        "date": date,
        "command": batch["command"],
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "machine": batch["machine"],
        "versions": batch["versions"],
        "batches": [batch],
        "setups": {name: {"skipped": s.skipped, "processes": sorted(s.processes),
                          "entry_method": s.unary_method, "batch": date,
                          "idle_rss_mib": idle_mib.get(name, {})}
                   for name, s in setups.items()},
        "summary": summarize(measurements),
        "targets": {**targets(measurements, use_h2load),
                    **{key: {**entry, "batch": date}
                       for key, entry in idle_rss_target(idle_mib).items()}},
        "measurements": [m.to_json() for m in measurements],
    }


def load_measurements(doc: Json) -> list[Measurement]:
    """The raw measurements of a document; those written before batches existed get the
    document's date as their batch."""
    measurements = [Measurement(**raw) for raw in doc["measurements"]]
    for m in measurements:
        m.batch = m.batch or doc["date"]
    return measurements


def _batches(doc: Json) -> list[Json]:
    return list(doc.get("batches") or [{
        "date": doc["date"], "command": doc["command"], "setups": list(doc["setups"]),
        "machine": doc["machine"], "versions": doc["versions"]}])


def merge(earlier: Json, new: Json, order: Sequence[str]) -> Json:
    """`earlier` with the setups measured in `new` replaced by `new`'s (measurements,
    setups, summary); targets recomputed, those that need a setup only `earlier` measured
    alongside a replaced one are kept from `earlier` with their batch named. `order`: the
    order of setups in the result."""
    replaced = set(new["setups"])
    kept = [m for m in load_measurements(earlier) if m.setup not in replaced]
    measurements = kept + load_measurements(new)
    setups = {**{name: {**s, "batch": s.get("batch", earlier["date"])}
                 for name, s in earlier["setups"].items()}, **new["setups"]}
    setups = {name: setups[name] for name in sorted(
        setups, key=lambda n: order.index(n) if n in order else len(order))}
    batches = [b for b in _batches(earlier) if set(b["setups"]) - replaced] + new["batches"]
    use_h2load = any(m.tool == "h2load" for m in measurements)
    earlier_targets = {key: ({**entry, "batch": entry.get("batch", earlier["date"])}
                             if isinstance(entry, dict) else entry)
                       for key, entry in earlier.get("targets", {}).items()}
    return {**new, "batches": batches, "setups": setups,
            "summary": summarize(measurements),
            "targets": {**earlier_targets, **targets(measurements, use_h2load)},
            "measurements": [m.to_json() for m in measurements]}


def _fmt(figure: Json | None, digits: int = 2) -> str:
    if not figure:
        return "-"
    if figure["n"] == 1:
        return f"{figure['median']:.{digits}f}"
    return (f"{figure['median']:.{digits}f} ({figure['min']:.{digits}f}-"
            f"{figure['max']:.{digits}f})")


def _target_rows(t: Json) -> list[str]:
    def verdict(entry: Json) -> str:
        return "**met**" if entry.get("met") else "**not met**"

    rows = ["| target | limit | measured (median of runs; min-max) | |",
            "| --- | --- | --- | --- |"]
    for setup in ("sealed", "sealed+gzip"):
        entry = t.get(f"cpu_ratio.{setup}")
        if entry:
            rows.append(f"| CPU per call of one {setup} hop / nginx hop ({t['scenario_cpu']}) "
                        f"| <= 4x | {_fmt(entry)}x | {verdict(entry)} |")
    for pct in ("p50", "p99"):
        entry = t.get(f"added_{pct}_ms.sealed")
        if entry:
            rows.append(f"| added {pct}, both proxies, one call in flight "
                        f"({t['scenario_latency']}) | <= {entry['target_max']:.1f} ms "
                        f"| {_fmt(entry)} ms | {verdict(entry)} |")
    for key, what in (("proxy_peak_rss_mib.up_to_1KiB", "payloads <= 1 KiB"),
                      ("proxy_peak_rss_mib.all_payloads", "all payloads of the run")):
        entry = t.get(key)
        if entry:
            limit = (f"<= {entry['target_max']:.0f} MiB" if "target_max" in entry
                     else "informational")
            rows.append(f"| proxy peak RSS under load ({what}) | {limit} "
                        f"| {entry['max']:.1f} MiB | {verdict(entry) if 'met' in entry else ''} |")
    rows += _issue15_rows(t, verdict)
    entry = t.get("workers2_throughput_ratio")
    if entry:
        rows.append(f"| `--workers 2` / 1 throughput ({t['scenario_cpu']}) | >= 1.7x "
                    f"| {_fmt(entry)}x | {verdict(entry)} |")
    for prefix, what, ratio in (
            ("observed_cpu_ratio", "every call traced", "observed / sealed"),
            ("observed_sampled_cpu_ratio", "default sampling, 1%", "observed-sampled / sealed")):
        for key in ("saturate", "single"):
            entry = t.get(f"{prefix}.{key}")
            if entry:
                rows.append(f"| proxy CPU per call, tracing ({what}) and metrics on / off: "
                            f"{ratio} ({entry['scenario']}) | <= {entry['target_max']:.2f}x "
                            f"| {_fmt(entry, 3)}x | {verdict(entry)} |")
    entry = t.get(f"cpu_ratio.{TUNNEL_OFF}")
    if entry:
        rows.append(f"| CPU per call of one sealed hop without the tunnel / nginx hop "
                    f"({t['scenario_cpu']}) | informational | {_fmt(entry)}x | |")
    if len({entry["batch"] for entry in t.values()
            if isinstance(entry, dict) and "batch" in entry}) > 1:
        rows = [rows[0].replace(" | |", " | | run |"), rows[1] + " --- |"] + [
            row + f" {_batch_of(t, row)} |" for row in rows[2:]]
    return rows


def _issue15_rows(t: Json, verdict: Callable[[Json], str]) -> list[str]:
    rows = []
    entry = t.get("no_reflection_cpu_ratio")
    if entry:
        rows.append(f"| hop CPU per call, upstream without / with reflection: {NO_REFLECTION} / "
                    f"sealed ({entry['scenario']}) | <= {entry['target_max']:.2f}x "
                    f"| {_fmt(entry, 3)}x | {verdict(entry)} |")
    entry = t.get("descriptors_cpu_ratio")
    if entry:
        rows.append(f"| hop CPU per call, upstream without reflection, kinds from "
                    f"--descriptor-set / with reflection: {DESCRIPTORS} / sealed "
                    f"({entry['scenario']}) | <= {entry['target_max']:.2f}x "
                    f"| {_fmt(entry, 3)}x | {verdict(entry)} |")
    for setup in (NO_REFLECTION, DESCRIPTORS, "sealed"):
        entry = t.get(f"chain_direct_throughput.{setup}")
        if entry:
            rows.append(f"| chain / direct calls per second: {setup} / direct "
                        f"({entry['scenario']}) | >= {entry['target_min']:.2f} "
                        f"| {_fmt(entry, 3)} | {verdict(entry)} |")
    for setup in ("sealed", NO_REFLECTION, DESCRIPTORS):
        entry = t.get(f"hop_upstream_ratio.{setup}")
        if entry:
            rows.append(f"| one {setup} hop's CPU per call / the echo upstream's own "
                        f"({entry['scenario']}) | <= {entry['target_max']:.1f}x "
                        f"| {_fmt(entry)}x | {verdict(entry)} |")
    for key in ("saturate", "single"):
        entry = t.get(f"proxyless_added_cpu_ms.{key}")
        if entry:
            rows.append(f"| proxyless: added CPU per call, client + app over client + "
                        f"upstream of direct ({entry['scenario']}) "
                        f"| <= {entry['target_max']:.2f} ms | {_fmt(entry, 3)} ms "
                        f"| {verdict(entry)} |")
    entry = t.get("proxyless_added_p50_ms")
    if entry:
        rows.append(f"| proxyless: added p50, one call in flight ({entry['scenario']}) "
                    f"| <= {entry['target_max']:.1f} ms | {_fmt(entry, 3)} ms "
                    f"| {verdict(entry)} |")
    for key in ("saturate", "single"):
        entry = t.get(f"sdk_added_client_cpu_ms.{key}")
        if entry:
            rows.append(f"| embedded SDK alone: added client CPU per call, proxyless / direct "
                        f"({entry['scenario']}) | <= {entry['target_max']:.1f} ms "
                        f"| {_fmt(entry, 3)} ms | {verdict(entry)} |")
    entry = t.get("idle_rss_over_bare_mib")
    if entry:
        rows.append(f"| proxy idle RSS over a bare grpc.aio server's (largest proxy "
                    f"{entry['proxy_mib']:.1f} MiB, bare server {entry['bare_mib']:.1f} MiB, "
                    f"at start) | <= {entry['target_max']:.0f} MiB | {entry['max']:.1f} MiB "
                    f"| {verdict(entry)} |")
    return rows


def _batch_of(t: Json, row: str) -> str:
    """The batch (run date) of the target a row of `_target_rows` shows."""
    keys = [key for key, entry in t.items() if isinstance(entry, dict) and _row_matches(key, row)]
    return str(t[keys[0]].get("batch", "")) if keys else ""


def _row_matches(key: str, row: str) -> bool:
    name, _, setup = key.partition(".")
    if name == "cpu_ratio":
        if setup == TUNNEL_OFF:
            return "without the tunnel" in row
        return f"one {setup} hop /" in row
    if name.startswith("added_"):
        return setup == "sealed" and f"added {name.split('_')[1]}," in row
    if name == "proxy_peak_rss_mib":
        return ("<= 1 KiB" in row) == (setup == "up_to_1KiB") and "peak RSS" in row
    if name == "workers2_throughput_ratio":
        return "--workers 2" in row
    if name in ("observed_cpu_ratio", "observed_sampled_cpu_ratio"):
        ratio = "observed / sealed" if name == "observed_cpu_ratio" else "observed-sampled /"
        return ratio in row and ("py single" in row) == (setup == "single")
    if name == "no_reflection_cpu_ratio":
        return "without / with reflection" in row
    if name == "descriptors_cpu_ratio":
        return "kinds from --descriptor-set" in row
    if name == "chain_direct_throughput":
        return f"second: {setup} /" in row
    if name == "hop_upstream_ratio":
        return f"one {setup} hop's CPU" in row
    if name in ("proxyless_added_cpu_ms", "sdk_added_client_cpu_ms"):
        what = "proxyless: added CPU" if name == "proxyless_added_cpu_ms" else "SDK alone"
        return what in row and ("py single" in row) == (setup == "single")
    if name == "proxyless_added_p50_ms":
        return "proxyless: added p50" in row
    if name == "idle_rss_over_bare_mib":
        return "idle RSS over" in row
    return False


def _tunnel_line(t: Json) -> str:
    """sealed / sealed-no-tunnel CPU per hop, and both setups' added latency; "" if not
    measured."""
    parts = [f"{entry['scenario']} {_fmt(entry, 3)}x" for key in ("saturate", "single")
             if (entry := t.get(f"tunnel_cpu_ratio.{key}"))]
    if not parts:
        return ""
    added = [f"{setup} {_fmt(t[f'added_p50_ms.{setup}'])} / "
             f"{_fmt(t[f'added_p99_ms.{setup}'])} ms" for setup in ("sealed", TUNNEL_OFF)
             if f"added_p50_ms.{setup}" in t and f"added_p99_ms.{setup}" in t]
    line = f"tunnel: sealed / {TUNNEL_OFF} CPU per hop ratio: " + "; ".join(parts) + "."
    if added:
        line += (f" Added p50 / p99 ({t['scenario_latency']}, vs direct): "
                 + ", ".join(added) + ".")
    return line


def _client_rows(doc: Json) -> list[str]:
    """Client CPU per call next to the proxies', for every setup the Python client drove."""
    rows = ["| scenario | setup | CPU client | CPU proxies | CPU client + proxies |",
            "| --- | --- | --- | --- | --- |"]
    scenarios: list[str] = []
    for figures in doc["summary"].values():
        scenarios += [name for name in figures if name not in scenarios
                      and "cpu_s_per_1000.client" in figures[name]]
    for scenario in scenarios:
        for name in doc["setups"]:
            figures = doc["summary"].get(name, {}).get(scenario)
            if figures and "cpu_s_per_1000.client" in figures:
                rows.append(f"| {scenario} | {name} "
                            f"| {_fmt(figures['cpu_s_per_1000.client'], 3)} "
                            f"| {_fmt(figures['cpu_s_per_1000.proxies'], 3)} "
                            f"| {_fmt(figures['cpu_s_per_1000.client+proxies'], 3)} |")
    return rows if len(rows) > 2 else []


def _batch_lines(doc: Json) -> list[str]:
    batches = _batches(doc)
    lines: list[str] = []
    for batch in batches:
        m, v = batch["machine"], batch["versions"]
        if len(batches) > 1:
            measured = [name for name, s in doc["setups"].items()
                        if s.get("batch", doc["date"]) == batch["date"]]
            lines += [f"Run of {batch['date']} (setups {', '.join(measured)}):", ""]
        lines += [
            f"Command: `{batch['command']}`",
            "",
            f"Machine: {m['cpu_model']}, {m['cores']} cores (shared with other work), "
            f"{m['memory_gib']} GiB, Linux {m['kernel']}, Python {m['python']}; "
            f"grpcio {v['grpcio']}, protobuf {v['protobuf']}, cryptography "
            f"{v['cryptography']}, nginx {v['nginx']}, {v['h2load']}; {batch['date']}.",
            ""]
    if len(batches) > 1:
        lines += ["Runs were merged with `--merge`: each setup's figures come from the run "
                  "named above; every ratio pairs setups of the same run (the Targets table "
                  "names the run of each).", ""]
    return lines


def markdown(doc: Json) -> str:
    t = doc["targets"]
    lines = [
        BEGIN,
        "## Data plane: setups side by side",
        "",
        *_batch_lines(doc),
        "Each figure is the median over the runs, with min-max in brackets. CPU is seconds "
        "per 1,000 calls (= ms per call, and also = vCPU per 1,000 calls/s, the unit of "
        "Istio's and Dapr's pages) of each process over the measured window only. "
        "One sealed hop = mean of the out-proxy's and the in-proxy's CPU per call (each "
        "proxy both receives and sends every message once, as an nginx hop does). Latency "
        "from the Python client: `rate` is an open loop at a fixed rate (latency from each "
        "call's planned start), `single` is one call in flight; bidi figures count messages.",
        "",
        "### Targets",
        "",
        *_target_rows(t),
        "",
    ]
    if "workers2_throughput_ratio" in t:
        lines += [f"`sealed-workers2`: {t['workers2_throughput_ratio']['scaled']}", ""]
    tunnel = _tunnel_line(t)
    if tunnel:
        lines += [tunnel, "", f"`sealed` / `{TUNNEL_OFF}`: {TUNNEL_NOTE}", ""]
    if any(key.startswith("observed_cpu_ratio") for key in t):
        lines += [f"`observed` / `sealed`: {OBSERVED_NOTE}", ""]
    if any(key.startswith("observed_sampled_cpu_ratio") for key in t):
        lines += [f"`observed-sampled` / `sealed`: {OBSERVED_SAMPLED_NOTE}", ""]
    client = _client_rows(doc)
    if client:
        lines += ["### Client CPU per call (Python load client)", "", CLIENT_NOTE, "",
                  *client, ""]
    for name, setup in doc["setups"].items():
        lines.append(f"### {name}")
        lines.append("")
        if setup["skipped"]:
            lines += [f"Not measured: {setup['skipped']}.", ""]
            continue
        scenarios = doc["summary"].get(name, {})
        labels = list(setup["processes"])
        if any("cpu_s_per_1000.client" in f for f in scenarios.values()):
            labels.append("client")
        header = ["scenario", "calls/s", "p50 ms", "p90 ms", "p99 ms",
                  *(f"CPU {label}" for label in labels)]
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + " --- |" * len(header))
        for scenario, figures in scenarios.items():
            row = [scenario, _fmt(figures.get("throughput"), 0),
                   *(_fmt(figures.get(p)) for p in ("p50_ms", "p90_ms", "p99_ms")),
                   *(_fmt(figures.get(f"cpu_s_per_1000.{label}"), 3) for label in labels)]
            lines.append("| " + " | ".join(row) + " |")
        peaks = []
        for label in labels:
            values = [f["peak_rss_mib." + label]["max"] for f in scenarios.values()
                      if "peak_rss_mib." + label in f]
            if values:
                peaks.append(f"{label} {max(values):.1f} MiB")
        idle = ", ".join(f"{label} {mib:.1f} MiB" for label, mib in setup["idle_rss_mib"].items())
        lines += ["", "Peak RSS (VmHWM, largest process of each): " + ", ".join(peaks)
                  + f". RSS at start, before any load: {idle}.", ""]
        spans = [f"{scenario} {_fmt(f['otlp_spans_per_unit'], 3)}"
                 for scenario, f in scenarios.items() if "otlp_spans_per_unit" in f]
        if spans:
            lines += ["Spans the OTLP receiver got per call (bidi: per stream; 2 = one "
                      "SERVER span from each proxy for every call, 0.02 at 1% sampling): "
                      + "; ".join(spans) + ".", ""]
    lines.append(END)
    return "\n".join(lines)


def replace_section(path: Path, section: str) -> None:
    """Puts `section` between the markers of `path` (or after its first paragraph)."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        tail = rest.split(END, 1)[1]
        text = head + section + tail
    else:
        marker = "\n## "
        cut = text.find(marker)
        text = (text + "\n" + section + "\n" if cut < 0
                else text[:cut] + "\n" + section + "\n" + text[cut:])
    path.write_text(text)
