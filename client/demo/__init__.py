"""`fastproxy demo`: the whole pipeline on loopback with a sample policy, in one command.

Starts a Center (temporary SQLite store, a sample policy), the demo server, an in-proxy in
front of it and an out-proxy for the caller; runs a client through the sidecar path (a plain
gRPC channel to the out-proxy) and the embedded path (the SDK sealing in-process, straight to
the in-proxy) for every RPC kind, plus a denied and a rate-limited call; prints each result
and a summary; then stops everything cleanly.
"""

from __future__ import annotations

import argparse
import signal
import tempfile
import threading
from pathlib import Path
from typing import Any

from fastproxy.demo.sample_policy import demo_policy
from fastproxy.demo.scenario import (
    Outcome,
    Report,
    audited_call,
    catalog_calls,
    every_kind,
    explain,
    measure,
    percentile,
    run_call,
)
from fastproxy.demo.stack import Stack, StackError, free_address


def add_demo_command(subparsers: Any, add_command: Any) -> None:
    demo = add_command(subparsers, "demo", run_demo,
                       "run the whole pipeline on loopback with a sample policy",
                       talks_to_center=False)
    demo.add_argument("--keep-running", action="store_true",
                      help="leave the stack up after the calls and print its addresses "
                           "(Ctrl-C stops it)")
    demo.add_argument("--calls", type=int, default=200, metavar="N",
                      help="sequential calls per path for the latency figures (default 200)")
    demo.add_argument("--workdir", metavar="DIR",
                      help="keep logs, store and policy here (default: a temporary folder)")


def _say(text: str) -> None:
    print(text, flush=True)


def _show(outcome: Outcome) -> None:
    mark = "ok " if outcome.expected else "!! "
    _say(f"  {mark}{outcome.path:<9} {outcome.what:<36} {outcome.code.name:<18} "
         f"{outcome.millis:6.1f} ms  {outcome.summary}")


def run_demo(args: argparse.Namespace) -> int:
    if args.workdir:
        workdir = Path(args.workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        return _run(args, workdir)
    with tempfile.TemporaryDirectory(prefix="fastproxy-demo-") as tmp:
        return _run(args, Path(tmp))


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _run(args: argparse.Namespace, workdir: Path) -> int:
    signal.signal(signal.SIGTERM, _interrupt)  # SIGTERM stops the demo as Ctrl-C does
    import grpc  # imported here: `fastproxy --help` stays fast and quiet

    import fastproxy

    center, server, in_proxy, out_proxy = (free_address() for _ in range(4))
    policy_file = workdir / "policy.yaml"
    policy_file.write_text(demo_policy(in_proxy))
    report = Report()
    stack = Stack(workdir, lambda line: _say(f"» {line}"))
    try:
        stack.start("center", center, ["center_svc", "--listen", center, "--store",
                                        f"sqlite:///{workdir / 'center.db'}",
                                        "--policy", str(policy_file)])
        stack.start("server", server, ["server_svc", "--listen", server])
        stack.start("in-proxy", in_proxy, [
            "proxy_svc", "--role", "in", "--service", "song_service", "--listen", in_proxy,
            "--upstream", server, "--center", center, "--cache-dir", str(workdir / "cache")])
        stack.start("out-proxy", out_proxy, [
            "proxy_svc", "--role", "out", "--service", "chat_service", "--listen", out_proxy,
            "--center", center])

        _say("» sidecar path: app → out-proxy → in-proxy → server (the app has no FastProxy "
             "code)")
        with grpc.insecure_channel(out_proxy) as channel:
            every_kind(report, "sidecar", channel, _show)
            catalog_calls(report, "sidecar", channel, _show)
            measure(report, "sidecar", channel, args.calls)

        _say("» embedded path: app with fastproxy.client_interceptors(embedded=True) → "
             "in-proxy → server")
        with fastproxy.client_interceptors(service="chat_service", center=center,
                                           embedded=True) as interceptors:
            interceptors.wait_for_policy(10)
            with grpc.intercept_channel(grpc.insecure_channel(in_proxy),
                                        *interceptors) as channel:
                every_kind(report, "embedded", channel, _show)
                measure(report, "embedded", channel, args.calls)
        with fastproxy.client_interceptors(service="analytics_service", center=center,
                                           embedded=True) as interceptors:
            interceptors.wait_for_policy(10)
            with grpc.intercept_channel(grpc.insecure_channel(in_proxy),
                                        *interceptors) as channel:
                from fastproxy.v1 import demo_pb2, demo_pb2_grpc

                catalog = demo_pb2_grpc.CatalogStub(channel)
                _show(run_call(report, "embedded", "Catalog.GetItem (as analytics)",
                               lambda: catalog.GetItem(demo_pb2.GetItemRequest(id="book-001"),
                                                       timeout=5).name,
                               expect=grpc.StatusCode.PERMISSION_DENIED,
                               expect_reason="denied"))
        with fastproxy.client_interceptors(service="reports_service", center=center,
                                           embedded=True) as interceptors:
            interceptors.wait_for_policy(10)
            with grpc.intercept_channel(grpc.insecure_channel(in_proxy),
                                        *interceptors) as channel:
                _show(audited_call(report, channel))
        _say("» why was analytics_service denied? fastproxy explain --caller analytics_service "
             "--method /demo.v1.Catalog/GetItem")
        _say(explain(center, "analytics_service", "/demo.v1.Catalog/GetItem"))
        with grpc.insecure_channel(server) as channel:
            measure(report, "direct", channel, args.calls)

        _summary(report)
        if args.keep_running:
            _keep_running(center, server, in_proxy, out_proxy, workdir)
    except StackError as exc:
        _say(f"fastproxy demo: {exc}")
        stack.stop()
        return 1
    except KeyboardInterrupt:
        _say("» interrupted")
    _say("» stopping everything")
    codes = stack.stop()
    unclean = {name: code for name, code in codes.items() if code != 0}
    if unclean:
        _say(f"fastproxy demo: did not stop cleanly: {unclean}")
        return 1
    return 0 if report.all_expected else 1


def _summary(report: Report) -> None:
    outcomes = report.outcomes
    refused = report.refused()
    unexpected = [o for o in outcomes if not o.expected]
    _say("")
    _say(f"summary: {len(outcomes)} calls, {sum(o.code.name == 'OK' for o in outcomes)} ok, "
         f"refused by reason: " + (", ".join(f"{r} {n}" for r, n in sorted(refused.items()))
                                   or "none")
         + f"; {len(unexpected)} unexpected")
    for path, samples in report.latencies.items():
        if samples:
            _say(f"  latency {path:<9} {len(samples)} unary 1 KiB calls, one in flight: "
                 f"p50 {percentile(samples, 0.50):.2f} ms, p99 {percentile(samples, 0.99):.2f} ms")
    for outcome in unexpected:
        _say(f"  unexpected: {outcome.path} {outcome.what}: {outcome.code.name} "
             f"{outcome.summary}")


def _keep_running(center: str, server: str, in_proxy: str, out_proxy: str,
                  workdir: Path) -> None:
    _say("")
    _say("the stack keeps running (Ctrl-C stops it):")
    _say(f"  center     {center}    fastproxy nodes --center {center}")
    _say(f"  server     {server}    (plaintext, behind the in-proxy)")
    _say(f"  in-proxy   {in_proxy}    song_service, sealed calls only")
    _say(f"  out-proxy  {out_proxy}    point any plain gRPC client here, as chat_service")
    _say(f"  logs, store and policy in {workdir}")
    threading.Event().wait()  # until Ctrl-C or SIGTERM (KeyboardInterrupt)


__all__ = ["add_demo_command", "run_demo"]

