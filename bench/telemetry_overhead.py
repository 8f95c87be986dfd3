"""Telemetry's cost on the proxies: CPU per call of the in-proxy (and the out-proxy) with
telemetry off and on, under the same steady load, runs interleaved A B A B.

    python bench/telemetry_overhead.py [--calls 2000] [--in-flight 16] [--size 1024] [--rounds 3]

Two identical sealed stacks (echo upstream, in-proxy, out-proxy) run side by side:
- off: no OTEL_* variables, no --metrics-port (no span, no metric: the handler's plain path);
- on: traces and metrics exported over OTLP/gRPC to a receiver in this process (batched,
  OTEL_BSP_SCHEDULE_DELAY=100; every call sampled, or `--sample-ratio` of them, with
  `--default-sampler` by the proxies' default sampler) and a Prometheus endpoint on each
  proxy, scraped once per round.
Each round sends `--calls` unary calls of `--size` bytes from a grpc.aio client with
`--in-flight` calls outstanding, through the out-proxy, and reads the proxies' CPU time
(utime+stime from /proc/PID/stat) before and after. The client carries no trace context,
so each in-proxy span is a root span of the out-proxy's trace, as in a mesh without an
instrumented app. Prints one line per run and the medians.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry.proto.collector.metrics.v1 import (
    metrics_service_pb2,
    metrics_service_pb2_grpc,
)
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
CALLER = "bench_client"


class CountingReceiver(trace_service_pb2_grpc.TraceServiceServicer,
                       metrics_service_pb2_grpc.MetricsServiceServicer):
    """An OTLP/gRPC endpoint that counts what it gets and keeps nothing."""

    def __init__(self) -> None:
        self.spans = 0
        self.metric_batches = 0
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(self, self.server)
        metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(self, self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def Export(self, request: Any, context: Any) -> Any:
        if isinstance(request, trace_service_pb2.ExportTraceServiceRequest):
            self.spans += sum(len(ss.spans) for rs in request.resource_spans
                              for ss in rs.scope_spans)
            return trace_service_pb2.ExportTraceServiceResponse()
        self.metric_batches += 1
        return metrics_service_pb2.ExportMetricsServiceResponse()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def secret() -> str:
    return "base64:" + base64.b64encode(os.urandom(32)).decode()


def policy(in_ports: dict[str, int]) -> str:
    lines = ["version: 1", "keys:",
             f"  enc: {{type: aes-256-gcm, secret: \"{secret()}\"}}",
             f"  client-id: {{type: hmac-sha256, secret: \"{secret()}\"}}",
             f"  echo-id: {{type: hmac-sha256, secret: \"{secret()}\"}}",
             "services:", f"  {CALLER}:", "    identity: {key: client-id}"]
    for name, port in in_ports.items():
        lines += [f"  echo_{name}:", f"    grpc_services: [bench.v1.{name.title()}]",
                  f"    endpoints: [\"127.0.0.1:{port}\"]", "    identity: {key: echo-id}",
                  "    encrypt: {key: enc}", "    allow:", f"      - caller: {CALLER}",
                  f"        methods: [\"/bench.v1.{name.title()}/*\"]"]
    return "\n".join(lines) + "\n"


class Stack:
    def __init__(self, name: str, policy_path: Path, in_port: int, log_dir: Path,
                 receiver: CountingReceiver | None, extra_env: dict[str, str]) -> None:
        self.name = name
        self.method = f"/bench.v1.{name.title()}/Unary"
        self.upstream_port, self.out_port, self.in_port = free_port(), free_port(), in_port
        env = {key: value for key, value in os.environ.items() if not key.startswith("OTEL_")}
        metrics: list[str] = []
        if receiver is not None:
            env.update({"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{receiver.port}",
                        "OTEL_BSP_SCHEDULE_DELAY": "100", "OTEL_METRIC_EXPORT_INTERVAL": "1000",
                        **extra_env})
            self.in_metrics, self.out_metrics = free_port(), free_port()
            metrics = ["--metrics-port"]
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        common = ["--policy", str(policy_path), "--log-level", "warning"]
        self._spawn("upstream", [sys.executable, "-m", "bench.harness.echo_upstream",
                                 "--port", str(self.upstream_port)], env, log_dir)
        self._spawn("in", [sys.executable, "-m", "proxy_svc", "--role", "in", "--service",
                           f"echo_{name}", "--listen", f"127.0.0.1:{in_port}", "--upstream",
                           f"127.0.0.1:{self.upstream_port}", *common,
                           *([*metrics, str(self.in_metrics)] if metrics else [])],
                    env, log_dir)
        self._spawn("out", [sys.executable, "-m", "proxy_svc", "--role", "out", "--service",
                            CALLER, "--listen", f"127.0.0.1:{self.out_port}", *common,
                            *([*metrics, str(self.out_metrics)] if metrics else [])],
                    env, log_dir)
        self.scrape_ports = [self.in_metrics, self.out_metrics] if metrics else []

    def _spawn(self, role: str, argv: list[str], env: dict[str, str], log_dir: Path) -> None:
        log = (log_dir / f"{self.name}-{role}.log").open("wb")
        self.processes[role] = subprocess.Popen(
            argv, env=env, stdout=log, stderr=log, stdin=subprocess.DEVNULL,
            cwd=Path(__file__).resolve().parent.parent)

    def wait_serving(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        for port in (self.in_port, self.out_port):
            while True:
                try:
                    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                        status = health_pb2_grpc.HealthStub(channel).Check(
                            health_pb2.HealthCheckRequest(), timeout=1).status
                    if status == health_pb2.HealthCheckResponse.SERVING:
                        break
                except grpc.RpcError:
                    pass
                if time.monotonic() > deadline:
                    raise SystemExit(f"{self.name} stack did not start")
                time.sleep(0.1)

    def cpu(self) -> dict[str, float]:
        return {role: cpu_seconds(self.processes[role].pid) for role in ("in", "out")}

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()


async def load(target: str, method: str, calls: int, in_flight: int, size: int) -> float:
    request = os.urandom(size)
    async with grpc.aio.insecure_channel(target) as channel:
        unary = channel.unary_unary(method)
        remaining = calls

        async def worker() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                reply = await unary(request, timeout=30)
                if reply != request:
                    raise SystemExit("wrong reply")

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(in_flight)))
        return time.perf_counter() - started


def measure(stack: Stack, args: argparse.Namespace) -> dict[str, float]:
    before = stack.cpu()
    elapsed = asyncio.run(load(f"127.0.0.1:{stack.out_port}", stack.method, args.calls,
                               args.in_flight, args.size))
    after = stack.cpu()
    for port in stack.scrape_ports:  # as Prometheus would, once per round
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
    return {"in_ms": (after["in"] - before["in"]) / args.calls * 1000,
            "out_ms": (after["out"] - before["out"]) / args.calls * 1000,
            "calls_s": args.calls / elapsed}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--in-flight", type=int, default=16)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sample-ratio", type=float, default=1.0,
                        help="traces: parentbased_traceidratio with this ratio (default 1: "
                             "every call)")
    parser.add_argument("--default-sampler", action="store_true",
                        help="traces: FastProxy's default sampler (OTEL_TRACES_SAMPLER unset: "
                             "parent-based, --sample-ratio of root calls, with the sampling "
                             "shortcut), as a proxy runs out of the box")
    parser.add_argument("--no-traces", action="store_true",
                        help="on: metrics only (OTEL_TRACES_EXPORTER=none)")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                        help="one more variable for the 'on' proxies (repeatable), e.g. "
                             "OTEL_METRICS_EXPORTER=none for Prometheus-only metrics")
    args = parser.parse_args(argv)
    extra_env = {"OTEL_TRACES_SAMPLER_ARG": str(args.sample_ratio)}
    if not args.default_sampler:
        extra_env["OTEL_TRACES_SAMPLER"] = "parentbased_traceidratio"
    if args.no_traces:
        extra_env["OTEL_TRACES_EXPORTER"] = "none"
    for assignment in args.env:
        name, _, value = assignment.partition("=")
        extra_env[name] = value
    receiver = CountingReceiver()
    in_ports = {"off": free_port(), "on": free_port()}
    with tempfile.TemporaryDirectory(prefix="fastproxy-telemetry-bench-") as tmp:
        directory = Path(tmp)
        policy_path = directory / "policy.yaml"
        policy_path.write_text(policy(in_ports))
        stacks = {"off": Stack("off", policy_path, in_ports["off"], directory, None, {}),
                  "on": Stack("on", policy_path, in_ports["on"], directory, receiver,
                              extra_env)}
        results: dict[str, list[dict[str, float]]] = {"off": [], "on": []}
        try:
            for stack in stacks.values():
                stack.wait_serving()
            for stack in stacks.values():  # warm-up, not measured
                asyncio.run(load(f"127.0.0.1:{stack.out_port}", stack.method, 200,
                                 args.in_flight, args.size))
            for round_ in range(args.rounds):
                for name in ("off", "on"):
                    result = measure(stacks[name], args)
                    results[name].append(result)
                    print(f"round {round_ + 1} {name:3}: in-proxy {result['in_ms']:.3f} ms "
                          f"CPU/call, out-proxy {result['out_ms']:.3f} ms, "
                          f"{result['calls_s']:.0f} calls/s", flush=True)
        finally:
            for stack in stacks.values():
                stack.stop()
    medians = {name: {key: statistics.median(r[key] for r in runs)
                      for key in ("in_ms", "out_ms", "calls_s")}
               for name, runs in results.items()}
    for name, median in medians.items():
        print(f"median {name:3}: in-proxy {median['in_ms']:.3f} ms CPU/call, out-proxy "
              f"{median['out_ms']:.3f} ms, {median['calls_s']:.0f} calls/s")
    for role in ("in", "out"):
        off, on = medians["off"][f"{role}_ms"], medians["on"][f"{role}_ms"]
        print(f"{role}-proxy: telemetry on costs {100 * (on - off) / off:+.1f}% CPU per call")
    print(f"receiver got {receiver.spans} spans, {receiver.metric_batches} metric exports")
    receiver.server.stop(0)


if __name__ == "__main__":
    main()
