"""One measurement: a load (h2load or the Python client) against one setup, with the CPU
seconds of each of the setup's processes over exactly the measured window, and (Python
client) the load client's own CPU over its load, as `client`. For the observed setup the
window ends once the receiver holds the window's spans (`telemetry_probe.py`)."""

from __future__ import annotations

import json
import selectors
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from harness import h2load
from harness.procstat import TreeSample, tree_peak_rss_kib
from harness.pyload import payload
from harness.setups import Setup
from harness.telemetry_probe import TelemetryProbe

PYLOAD = Path(__file__).resolve().parent / "pyload.py"
CHECK_CALLS = 4  # pyload's check: three unary calls and one bidi stream
# h2load's streams per connection up to 64 KiB (`-c 4 -m 8`, the shape of issue 15's
# throughput target; 16 before it)
H2LOAD_STREAMS = 8


@dataclass(frozen=True, slots=True)
class Scenario:
    kind: str  # unary | bidi
    size: int
    tool: str  # h2load | py
    mode: str  # saturate | rate | single | bidi | check

    @property
    def name(self) -> str:
        return f"{self.kind} {size_label(self.size)} {self.tool} {self.mode}"


@dataclass(frozen=True, slots=True)
class Durations:
    seconds: float  # each Python-client measurement
    h2load_seconds: float  # target length of an h2load measurement
    rate: float  # calls/s of the fixed-rate latency measurement
    min_h2load_calls: int


@dataclass
class Measurement:
    run: int
    setup: str
    scenario: str
    kind: str
    size: int
    tool: str
    mode: str
    calls: int = 0
    elapsed_s: float = 0.0
    throughput: float = 0.0
    p50_ms: float | None = None
    p90_ms: float | None = None
    p99_ms: float | None = None
    valid: bool = False
    problem: str = ""
    cpu_s: dict[str, float] = field(default_factory=dict)
    cpu_s_per_1000: dict[str, float] = field(default_factory=dict)
    peak_rss_kib: dict[str, int] = field(default_factory=dict)
    # observed setup: spans received, spans expected, Prometheus call counts (telemetry_probe)
    telemetry: dict[str, Any] = field(default_factory=dict)
    # the invocation of dataplane.py that measured this (its start date); ratios pair only
    # measurements of the same batch and run
    batch: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def size_label(size: int) -> str:
    if size >= 1 << 20 and size % (1 << 20) == 0:
        return f"{size >> 20} MiB"
    if size >= 1024 and size % 1024 == 0:
        return f"{size >> 10} KiB"
    return f"{size} B"


class Runner:
    def __init__(self, work_dir: Path, durations: Durations) -> None:
        self.work_dir = work_dir
        self.durations = durations
        self._frames: dict[int, Path] = {}
        self._estimates: dict[tuple[str, int], float] = {}

    def _frame(self, size: int) -> Path:
        if size not in self._frames:
            self._frames[size] = h2load.write_frame(self.work_dir / f"frame-{size}.bin",
                                                    payload(size))
        return self._frames[size]

    def measure(self, run: int, setup: Setup, scenario: Scenario) -> Measurement:
        result = Measurement(run, setup.name, scenario.name, scenario.kind, scenario.size,
                             scenario.tool, scenario.mode)
        roots = {label: spawned.pid for label, spawned in setup.processes.items()}
        telemetry = TelemetryProbe(setup)
        if scenario.tool == "h2load":
            self._h2load(setup, scenario, result, roots, telemetry)
        else:
            self._pyload(setup, scenario, result, roots, telemetry)
        result.telemetry, problem = telemetry.finish()
        if problem and result.valid:
            result.valid, result.problem = False, problem
        for label, pid in roots.items():
            result.peak_rss_kib[label] = tree_peak_rss_kib(pid)[0]
        if result.calls:
            result.cpu_s_per_1000 = {label: cpu / result.calls * 1000
                                     for label, cpu in result.cpu_s.items()}
        return result

    @staticmethod
    def _sample(roots: dict[str, int]) -> dict[str, TreeSample]:
        return {label: TreeSample.take(pid) for label, pid in roots.items()}

    @staticmethod
    def _cpu(before: dict[str, TreeSample], after: dict[str, TreeSample]) -> dict[str, float]:
        return {label: after[label].cpu_since(before[label]) for label in before}

    def _h2load_shape(self, size: int) -> tuple[int, int]:
        """(connections, streams per connection) for a payload size."""
        if size >= 1 << 20:
            return 2, 2
        if size >= 64 * 1024:
            return 4, 4
        return 4, H2LOAD_STREAMS

    def _h2load(self, setup: Setup, scenario: Scenario, result: Measurement,
                roots: dict[str, int], telemetry: TelemetryProbe) -> None:
        url = f"http://{setup.entry}{setup.unary_method}"
        frame = self._frame(scenario.size)
        clients, streams = self._h2load_shape(scenario.size)
        key = (setup.name, scenario.size)
        if key not in self._estimates:  # a short unmeasured run sizes the measured one
            probe = h2load.run(url, frame, scenario.size, max(clients * 4, 40), clients, streams)
            if not probe.valid:
                result.problem = f"probe: {probe.problem}"
                return
            self._estimates[key] = probe.throughput
        calls = int(self._estimates[key] * self.durations.h2load_seconds)
        calls = max(self.durations.min_h2load_calls, calls)
        calls += -calls % clients
        telemetry.start()
        before = self._sample(roots)
        run = h2load.run(url, frame, scenario.size, calls, clients, streams)
        telemetry.settle(run.calls)
        result.cpu_s = self._cpu(before, self._sample(roots))
        self._estimates[key] = run.throughput or self._estimates[key]
        result.calls, result.elapsed_s, result.throughput = run.calls, run.elapsed_s, run.throughput
        result.valid, result.problem = run.valid, run.problem

    def _pyload(self, setup: Setup, scenario: Scenario, result: Measurement,
                roots: dict[str, int], telemetry: TelemetryProbe) -> None:
        concurrency = 4 if scenario.size >= 64 * 1024 else 32
        if scenario.mode == "bidi":
            concurrency = 2 if scenario.size >= 1 << 20 else 8
        method = setup.unary_method
        argv = [sys.executable, str(PYLOAD), "--target", setup.entry, "--method", method,
                "--size", str(scenario.size), "--mode", scenario.mode,
                "--seconds", str(self.durations.seconds),
                "--concurrency", str(concurrency), "--rate", str(self.durations.rate)]
        if setup.embedded_service:
            argv += ["--embedded-service", setup.embedded_service, "--center", setup.center]
        process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
        try:
            ready = _read_line(process, 60.0)
            if ready != "ready":
                result.problem = f"client did not start: {ready!r} {_stderr(process)}"
                return
            telemetry.start()
            before = self._sample(roots)
            assert process.stdin is not None
            process.stdin.write("go\n")
            process.stdin.flush()
            line = _read_line(process, self.durations.seconds * 4 + 120)
            figures = _figures(line)
            if figures is not None:  # units: calls, bidi streams; check: 3 unary + 1 bidi
                telemetry.settle(CHECK_CALLS if scenario.mode == "check" else
                             concurrency if scenario.kind == "bidi" else int(figures["calls"]))
            result.cpu_s = self._cpu(before, self._sample(roots))
        finally:
            if process.poll() is None:
                try:
                    process.wait(30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        if figures is None:
            result.problem = f"client output {line!r} {_stderr(process)}"
            return
        result.cpu_s["client"] = figures["cpu_s"]
        result.calls = figures["calls"]
        result.elapsed_s = figures["elapsed_s"]
        result.throughput = figures["throughput"]
        result.p50_ms, result.p90_ms, result.p99_ms = (
            figures["p50_ms"], figures["p90_ms"], figures["p99_ms"])
        if figures["errors"] or figures["wrong"] or not figures["calls"]:
            result.problem = (f"{figures['errors']} errors, {figures['wrong']} wrong replies of "
                              f"{figures['calls']} calls: {figures['first_error']}")
        else:
            result.valid = True


def _figures(line: str) -> dict[str, Any] | None:
    try:
        figures = json.loads(line)
    except json.JSONDecodeError:
        return None
    return figures if isinstance(figures, dict) else None


def _read_line(process: subprocess.Popen[str], timeout_s: float) -> str:
    assert process.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if selector.select(max(0.0, deadline - time.monotonic())):
                return process.stdout.readline().strip()
    process.kill()
    return "(timed out)"


def _stderr(process: subprocess.Popen[str]) -> str:
    if process.poll() is None:
        process.kill()
        process.wait()
    return process.stderr.read()[-500:] if process.stderr else ""
