"""Data-plane benchmark: the same echo calls through each setup, side by side, on loopback.

    python bench/dataplane.py [--smoke] [--runs 3] [--setups direct,nginx,sealed,...]
                              [--payloads 100,1024,65536,1048576] [--seconds 2]
                              [--json bench/results/dataplane.json] [--markdown docs/benchmarks.md]

Starts real processes on 127.0.0.1: a lean grpc.aio echo upstream, the Center (memory store,
policy from a generated file), an out-proxy and an in-proxy per sealed setup, and nginx
(`grpc_pass`, one worker), and for each observed setup a counting OTLP/gRPC receiver. Setups:
direct, nginx, sealed, sealed-no-tunnel (sealed with `--tunnel off` on the out-proxy),
sealed-no-reflection (sealed in front of an upstream without server reflection),
sealed-descriptors (the same, the in-proxy given the kinds by --descriptor-set), sealed+gzip,
sealed-workers2, embedded (the SDK in embedded mode in the load client, straight to an
in-proxy; Python client only), proxyless (the embedded SDK calling an app served with the
embedded server's interceptors: no proxy process), observed (the sealed chain with tracing of
every call and metrics on) and observed-sampled (the same with the proxies' default 1% sampler); see
`harness/setups.py`. Load: h2load (unary, gRPC frames via -d)
and a Python grpc.aio client (`harness/pyload.py`: unary at saturation, at a fixed rate, one
call in flight; bidi).
Every setup is checked with real calls (each reply compared) before anything is timed; an
h2load run counts only if its response data bytes equal calls x (5 + reply size).

Figures per measurement: throughput, latency p50/p90/p99 (Python client), CPU seconds per
1,000 calls of each process of the setup (utime+stime from /proc/PID/stat over exactly the
measured window), and the Python load client's own CPU (`client`), peak RSS (VmHWM) of each
process. Runs are interleaved (every setup once per scenario, then the next scenario; then the
next run) and medians are reported with min-max.

`--merge` (with `--json`): a partial run (`--setups`) replaces only its setups' figures in the
existing JSON file and the generated block of `--markdown`; the other setups keep theirs, and
each ratio pairs setups of the same run.

`--smoke`: one run, 1 KiB unary (h2load and Python-client saturation, one call in flight),
setups direct, sealed, sealed-no-tunnel, sealed-no-reflection, sealed-descriptors, embedded and
proxyless, short
durations; exits non-zero if any check or
measurement fails. Exit status 0 means every measurement was valid.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
if str(BENCH_DIR) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR))

from harness import h2load, report  # noqa: E402
from harness.measure import Durations, Measurement, Runner, Scenario  # noqa: E402
from harness.procstat import tree_peak_rss_kib  # noqa: E402
from harness.setups import ALL_SETUPS, Setup, Topology  # noqa: E402

SMOKE_SETUPS = ("direct,sealed,sealed-no-tunnel,sealed-no-reflection,sealed-descriptors,embedded,"
                "proxyless")
SMOKE_BSP_DELAY_MS = 200  # observed in a smoke run: its few spans leave in 0.2 s, not 5 s

DEFAULT_SETUPS = ("direct", "nginx", "sealed", "sealed-no-tunnel", "sealed-no-reflection",
                  "sealed-descriptors", "sealed+gzip", "sealed-workers2", "embedded",
                  "proxyless", "observed", "observed-sampled")
DEFAULT_PAYLOADS = (100, 1024, 64 * 1024, 1024 * 1024)
TARGET_SIZE = 1024


def scenarios(payloads: Sequence[int], use_h2load: bool, smoke: bool) -> list[Scenario]:
    """What each run measures: for every payload unary at saturation (h2load), one call in
    flight and bidi (Python client); for 1 KiB also Python-client saturation and fixed rate.
    Smoke: saturation (h2load and Python) and one call in flight only."""
    out: list[Scenario] = []
    for size in payloads:
        if use_h2load:
            out.append(Scenario("unary", size, "h2load", "saturate"))
        if size == TARGET_SIZE or not use_h2load:
            out.append(Scenario("unary", size, "py", "saturate"))
        if size == TARGET_SIZE and not smoke:
            out.append(Scenario("unary", size, "py", "rate"))
        out.append(Scenario("unary", size, "py", "single"))
        if not smoke:
            out.append(Scenario("bidi", size, "py", "bidi"))
    return out


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--smoke", action="store_true",
                        help="seconds-long check that the harness works (CI)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--setups", default=",".join(DEFAULT_SETUPS),
                        help=f"comma-separated, from: {', '.join(ALL_SETUPS)}")
    parser.add_argument("--payloads", default=",".join(map(str, DEFAULT_PAYLOADS)),
                        help="message sizes in bytes, comma-separated")
    parser.add_argument("--seconds", type=float, default=2.0,
                        help="length of each Python-client measurement")
    parser.add_argument("--h2load-seconds", type=float, default=2.5,
                        help="target length of each h2load measurement")
    parser.add_argument("--rate", type=float, default=200.0,
                        help="calls/s of the fixed-rate latency measurement")
    parser.add_argument("--no-h2load", action="store_true", help="Python client only")
    parser.add_argument("--json", type=Path, help="write the raw figures here")
    parser.add_argument("--report-only", type=Path, metavar="JSON",
                        help="measure nothing: rewrite --markdown from an earlier --json file")
    parser.add_argument("--markdown", type=Path,
                        help="replace the data-plane section of this file (docs/benchmarks.md)")
    parser.add_argument("--merge", action="store_true",
                        help="with --json: replace only this run's setups in that file (and "
                             "in --markdown), keep the other setups' figures")
    args = parser.parse_args(argv)
    if args.merge and not args.json:
        parser.error("--merge needs --json (the file to merge into)")
    if args.smoke:
        args.runs, args.payloads = 1, str(TARGET_SIZE)
        if args.setups == parser.get_default("setups"):
            args.setups = SMOKE_SETUPS
        args.seconds, args.h2load_seconds, args.rate = 0.3, 0.3, 100.0
    return args


def check(runner: Runner, setups: dict[str, Setup], payloads: Sequence[int]) -> list[str]:
    """Real calls through every setup, each reply compared, before anything is timed."""
    problems = []
    for setup in setups.values():
        if setup.skipped:
            continue
        for size in payloads:
            result = runner.measure(0, setup, Scenario("unary", size, "py", "check"))
            if not result.valid:
                problems.append(f"{setup.name} {size} B: {result.problem}")
    return problems


def rewrite_report(args: argparse.Namespace) -> int:
    """Recomputes summary and targets from the raw measurements of an earlier run."""
    document = json.loads(args.report_only.read_text())
    measurements = report.load_measurements(document)
    use_h2load = any(m.tool == "h2load" for m in measurements)
    document["summary"] = report.summarize(measurements)
    # targets no longer computable here (a merged run) keep their earlier entry and batch
    document["targets"] = {**document.get("targets", {}),
                           **report.targets(measurements, use_h2load)}
    args.report_only.write_text(json.dumps(document, indent=1) + "\n")
    summary = report.markdown(document)
    if args.markdown:
        report.replace_section(args.markdown, summary)
    else:
        print(summary)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.report_only:
        return rewrite_report(args)
    names = [name.strip() for name in args.setups.split(",") if name.strip()]
    payloads = [int(size) for size in args.payloads.split(",")]
    use_h2load = h2load.available() and not args.no_h2load
    plan = scenarios(payloads, use_h2load, args.smoke)
    durations = Durations(args.seconds, args.h2load_seconds, args.rate,
                          min_h2load_calls=20 if args.smoke else 40)
    started_at = datetime.datetime.now(datetime.UTC)
    batch = started_at.isoformat(timespec="seconds")
    measurements: list[Measurement] = []
    setups: dict[str, Setup] = {}
    idle_rss: dict[str, dict[str, int]] = {}
    with tempfile.TemporaryDirectory(prefix="fastproxy-bench-") as tmp:
        topology = Topology(names, Path(tmp),
                            bsp_delay_ms=SMOKE_BSP_DELAY_MS if args.smoke else None)
        try:
            setups = topology.start()
            idle_rss = {name: {label: tree_peak_rss_kib(spawned.pid, "VmRSS")[0]
                               for label, spawned in setup.processes.items()}
                        for name, setup in setups.items()}
            runner = Runner(Path(tmp), durations)
            problems = check(runner, setups, payloads)
            if problems:
                print("correctness check failed:\n  " + "\n  ".join(problems), file=sys.stderr)
                return 1
            live = [setup for setup in setups.values() if not setup.skipped]
            for run in range(1, args.runs + 1):
                for scenario in plan:
                    for setup in live:
                        if scenario.tool == "h2load" and setup.python_client_only:
                            continue
                        result = runner.measure(run, setup, scenario)
                        result.batch = batch
                        measurements.append(result)
                        print(report.progress_line(result), flush=True)
        finally:
            topology.stop()
    document = report.document(args, sys.argv, started_at, setups, measurements, use_h2load,
                               idle_rss)
    if args.json:
        if args.merge and args.json.exists():
            document = report.merge(json.loads(args.json.read_text()), document, ALL_SETUPS)
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(document, indent=1) + "\n")
    summary = report.markdown(document)
    if args.markdown:
        report.replace_section(args.markdown, summary)
    else:
        print(summary)
    invalid = [m for m in measurements if not m.valid]
    for bad in invalid:
        print(f"INVALID run {bad.run} {bad.setup} {bad.scenario}: {bad.problem}",
              file=sys.stderr)
    return 1 if invalid or not measurements else 0


if __name__ == "__main__":
    sys.exit(main())
