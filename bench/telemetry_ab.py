"""Telemetry's cost in the data-plane harness, measured closely: the proxies' CPU per call in
two harness setups (default: `sealed`, telemetry off, and `observed-sampled`, the proxies'
default configuration with telemetry on), under the same h2load load, in interleaved windows.

    python bench/telemetry_ab.py [--setups sealed,observed-sampled] [--rounds 8]
        [--calls 6000] [--size 1024] [--env NAME=VALUE ...]

Why next to `dataplane.py`: its telemetry ratio compares one window of each setup per run,
and a window's CPU per call moves by several percent from one window to the next on a
shared 2-core machine, as much as the cost being measured. Here the same h2load shape as
`dataplane.py`'s saturating scenario (4 connections x 16 streams, unary, 1 KiB) drives each
setup in turn, A B A B, `--rounds` times, with no waits inside a window (the telemetry
probe's waits for spans stay out; they were measured to cost the proxies no CPU), and the
proxies' CPU is read per thread from /proc (utime + stime): the Python threads (the event
loop, and the SDK's exporter threads, which grpc leaves named `python`) and grpc's
`event_engine` threads. `--env` adds variables to the observed proxies (e.g.
`OTEL_TRACES_EXPORTER=none` for metrics only). Prints, per setup and thread group, the
median microseconds of CPU per call, and the ratio of each setup's total to the first's.
"""

from __future__ import annotations

import argparse
import collections
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
if str(BENCH_DIR) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR))

from harness import h2load  # noqa: E402
from harness import setups as harness_setups  # noqa: E402
from harness.pyload import payload  # noqa: E402

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PROXIES = ("out-proxy", "in-proxy")
WARM_UP_CALLS = 2000


def thread_cpu(pid: int) -> dict[tuple[int, str], float]:
    """CPU seconds so far of each thread of `pid`: (thread id, its name) -> seconds."""
    found = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as stat:
                fields = stat.read().rpartition(")")[2].split()
            with open(f"/proc/{pid}/task/{tid}/comm") as comm:
                name = comm.read().strip()
        except OSError:  # the thread ended
            continue
        found[(int(tid), name)] = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    return found


def per_group(before: dict[tuple[int, str], float], after: dict[tuple[int, str], float]
              ) -> dict[str, float]:
    """CPU seconds between two readings, by thread name."""
    groups: dict[str, float] = collections.Counter()
    for key, seconds in after.items():
        groups[key[1]] += seconds - before.get(key, 0.0)
    return dict(groups)


def with_env(extra: dict[str, str]) -> None:
    """Makes the harness give `extra` to its observed setups' proxies."""
    if not extra:
        return
    original = harness_setups.Topology._observed_env

    def observed_env(self: Any, spec: Any, label: str, receiver: Any) -> dict[str, str]:
        return {**original(self, spec, label, receiver), **extra}
    harness_setups.Topology._observed_env = observed_env  # type: ignore[method-assign]


def measure(names: list[str], rounds: int, calls: int, size: int, work: Path
            ) -> dict[str, dict[str, list[float]]]:
    """setup -> thread group (or "TOTAL", "calls/s") -> one figure per round."""
    topology = harness_setups.Topology(names, work)
    started = topology.start()
    frame = h2load.write_frame(work / f"frame-{size}.bin", payload(size))
    figures: dict[str, dict[str, list[float]]] = {
        name: collections.defaultdict(list) for name in names}
    try:
        for name in names:
            setup = started[name]
            if setup.skipped:
                raise SystemExit(f"{name}: {setup.skipped}")
            h2load.run(f"http://{setup.entry}{setup.unary_method}", frame, size,
                       WARM_UP_CALLS, 4, 16)
        for _ in range(rounds):
            for name in names:
                setup = started[name]
                pids = {label: setup.processes[label].pid for label in PROXIES}
                before = {label: thread_cpu(pid) for label, pid in pids.items()}
                run = h2load.run(f"http://{setup.entry}{setup.unary_method}", frame, size,
                                 calls, 4, 16)
                after = {label: thread_cpu(pid) for label, pid in pids.items()}
                if not run.valid:
                    raise SystemExit(f"{name}: h2load: {run.problem}")
                total = 0.0
                for label in PROXIES:
                    for group, seconds in per_group(before[label], after[label]).items():
                        figures[name][f"{label} {group}"].append(seconds / run.calls * 1e6)
                        total += seconds
                figures[name]["TOTAL"].append(total / run.calls * 1e6)
                figures[name]["calls/s"].append(run.throughput)
    finally:
        topology.stop()
    return figures


def report(names: list[str], figures: dict[str, dict[str, list[float]]]) -> str:
    rows = sorted({row for name in names for row in figures[name]} - {"TOTAL", "calls/s"})
    lines = ["us of CPU per call, median of rounds".ljust(34)
             + "".join(name.rjust(20) for name in names)]
    for row in [*rows, "TOTAL", "calls/s"]:
        values = [statistics.median(figures[name][row]) if figures[name][row] else 0.0
                  for name in names]
        if max(values) >= 1.0:
            lines.append(row.ljust(34) + "".join(f"{value:20.1f}" for value in values))
    base = figures[names[0]]["TOTAL"]
    for name in names[1:]:
        # paired by round: each round's windows ran back to back
        ratios = [mine / theirs for mine, theirs in zip(figures[name]["TOTAL"], base,
                                                         strict=True)]
        of_medians = statistics.median(figures[name]["TOTAL"]) / statistics.median(base)
        lines.append(f"{name} / {names[0]}: median {statistics.median(ratios):.3f} "
                     f"(rounds {min(ratios):.3f}-{max(ratios):.3f}, n={len(ratios)}); "
                     f"ratio of medians {of_medians:.3f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--setups", default="sealed,observed-sampled",
                        help="comma-separated harness setups with both proxies; the first "
                             "is the baseline")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--calls", type=int, default=6000, help="h2load calls per window")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                        help="one more variable for the observed setups' proxies")
    args = parser.parse_args(argv)
    if not h2load.available():
        raise SystemExit("h2load not found (Debian: apt-get install nghttp2-client)")
    with_env(dict(assignment.partition("=")[::2] for assignment in args.env))
    names = args.setups.split(",")
    with tempfile.TemporaryDirectory(prefix="fastproxy-telemetry-ab-") as tmp:
        figures = measure(names, args.rounds, args.calls, args.size, Path(tmp))
    print(report(names, figures))


if __name__ == "__main__":
    main()
