"""The proxyless path alone: the SDK in embedded mode calling an app served with the embedded
server's interceptors, against a plain grpc.aio call and against no-op interceptors on both
sides (grpc's own interceptor machinery: the floor that is not FastProxy's).

    python bench/proxyless_micro.py [--rounds 3] [--seconds 3] [--concurrency 8]
        [--setups plain,noop,proxyless] [--code NAME=DIR ...] [--json PATH]

Each setup runs as two processes of its own, a grpc.aio echo server of raw bytes (1 KiB
unary, `--size`) and a grpc.aio client, no proxy; setups are interleaved round by round.
`proxyless` reads its policy from a file; `proxyless-center` watches a Center (a
`python -m center_svc` of its own) as an app would: grpc.aio then runs on the SDK's and the
embedded server's background loop too. Per setup and round: CPU per call of the client and
of the server (user+system from /proc, in ms), one call in flight (`single`: p50 latency and
CPU per call) and `--concurrency` calls in flight (`load`). `--code NAME=DIR` runs the
proxyless setup (and `proxyless-center` with `--center`) also
with the `fastproxy` package found in DIR (a copy of `client/` at another commit, e.g.
`git archive BASE client | tar -x -C /tmp/base`), so two versions of the code are compared
within one run (A/B).

    python bench/proxyless_micro.py --serve MODE --policy FILE      # the server (internal)
    python bench/proxyless_micro.py --client MODE --policy FILE ... # the client (internal)
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

METHOD = "/bench.v1.Proxyless/Unary"
SERVICE, CALLER = "echo_proxyless", "bench_client"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def use_code(directory: str) -> None:
    """Import `fastproxy` (all but its generated `v1`/`etcd` packages) from `directory`."""
    root = os.path.abspath(directory)

    class Finder(importlib.abc.MetaPathFinder):
        def find_spec(self, fullname: str, path: Any, target: ModuleType | None = None
                      ) -> importlib.machinery.ModuleSpec | None:
            if fullname != "fastproxy" and not fullname.startswith("fastproxy."):
                return None
            if fullname.startswith(("fastproxy.v1", "fastproxy.etcd")):
                return None
            parts = fullname.split(".")[1:]
            base = os.path.join(root, *parts)
            if os.path.isdir(base):
                return importlib.util.spec_from_file_location(
                    fullname, os.path.join(base, "__init__.py"),
                    submodule_search_locations=[base])
            if os.path.isfile(base + ".py"):
                return importlib.util.spec_from_file_location(fullname, base + ".py")
            return None

    sys.meta_path.insert(0, Finder())


def policy_yaml(port: int) -> str:
    def secret() -> str:
        return "base64:" + base64.b64encode(os.urandom(32)).decode()
    return "\n".join([
        "version: 1", "keys:",
        f"  enc: {{type: aes-256-gcm, secret: \"{secret()}\"}}",
        f"  client-id: {{type: hmac-sha256, secret: \"{secret()}\"}}",
        f"  app-id: {{type: hmac-sha256, secret: \"{secret()}\"}}",
        "services:",
        f"  {CALLER}:", "    identity: {key: client-id}",
        f"  {SERVICE}:", "    grpc_services: [bench.v1.Proxyless]",
        f"    endpoints: [\"127.0.0.1:{port}\"]", "    identity: {key: app-id}",
        "    encrypt: {key: enc}", "    timeout_ms: 300000", "    allow:",
        f"      - caller: {CALLER}", "        methods: [\"/bench.v1.Proxyless/*\"]",
        "        rate_limit: {rps: 10000000, burst: 1000000}", ""])


def _source(policy: str) -> dict[str, str]:
    """Where the policy comes from: `policy` is a file, or `center=HOST:PORT`."""
    if policy.startswith("center="):
        return {"center": policy.removeprefix("center=")}
    return {"policy_file": policy}


# --- the server -----------------------------------------------------------------------------


async def serve(mode: str, policy: str, port: int) -> None:
    import grpc

    async def unary(request: bytes, _context: Any) -> bytes:
        return request

    class Echo(grpc.GenericRpcHandler):  # type: ignore[misc]
        handler = grpc.unary_unary_rpc_method_handler(unary)

        def service(self, details: Any) -> Any:
            return self.handler

    class NoOp(grpc.aio.ServerInterceptor):  # type: ignore[misc]
        async def intercept_service(self, continuation: Any, details: Any) -> Any:
            return await continuation(details)

    interceptors: Any = None
    if mode == "noop":
        interceptors = [NoOp()]
    elif mode == "proxyless":
        from fastproxy.server import aio_server_interceptors

        interceptors = aio_server_interceptors(service=SERVICE, **_source(policy))
        if not interceptors[0].policy.wait_loaded(30.0):
            raise SystemExit("no policy")
    server = grpc.aio.server(interceptors=interceptors)
    server.add_generic_rpc_handlers((Echo(),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print("listening", flush=True)
    await server.wait_for_termination()


# --- the client -----------------------------------------------------------------------------


def proc_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


async def client(mode: str, policy: str, port: int, server_pid: int, seconds: float,
                 concurrency: int, size: int, load_only: bool = False) -> dict[str, Any]:
    import grpc

    class NoOp(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
        async def intercept_unary_unary(self, continuation: Any, details: Any,
                                        request: Any) -> Any:
            return await continuation(details, request)

    interceptors: Any = None
    made: Any = None
    if mode == "noop":
        interceptors = [NoOp()]
    elif mode == "proxyless":
        import fastproxy

        made = fastproxy.aio_client_interceptors(service=CALLER, embedded=True,
                                                 **_source(policy))
        if not made.wait_for_policy(30.0):
            raise SystemExit("no policy")
        interceptors = made
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}", interceptors=interceptors)
    unary = channel.unary_unary(METHOD)
    payload = os.urandom(size)
    for _ in range(200):
        assert await unary(payload) == payload
    out: dict[str, Any] = {}

    async def phase(name: str, workers: int) -> None:
        calls = 0
        latencies: list[float] = []
        until = time.monotonic() + seconds

        async def worker() -> None:
            nonlocal calls
            while time.monotonic() < until:
                started = time.perf_counter()
                reply = await unary(payload)
                latencies.append(time.perf_counter() - started)
                if reply != payload:
                    raise SystemExit("wrong reply")
                calls += 1
        cpu0, server0, wall0 = time.process_time(), proc_cpu_s(server_pid), time.monotonic()
        await asyncio.gather(*(worker() for _ in range(workers)))
        cpu1, server1, wall1 = time.process_time(), proc_cpu_s(server_pid), time.monotonic()
        latencies.sort()
        out[name] = {"calls": calls, "rate": calls / (wall1 - wall0),
                     "client_ms": (cpu1 - cpu0) * 1000 / calls,
                     "server_ms": (server1 - server0) * 1000 / calls,
                     "p50_ms": latencies[len(latencies) // 2] * 1000}

    if not load_only:
        await phase("single", 1)
    await phase("load", concurrency)
    await channel.close()
    if made is not None:
        made.close()
    return out


# --- the orchestration ----------------------------------------------------------------------


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def run_one(mode: str, code: str | None, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    port = _free_port()
    policy = work / f"policy-{port}.yaml"
    policy.write_text(policy_yaml(port))
    env = dict(os.environ)
    if code:
        env["PROXYLESS_CODE"] = code
    source = str(policy)
    center: subprocess.Popen[bytes] | None = None
    if mode == "proxyless-center":
        mode = "proxyless"
        center_port = _free_port()
        center = subprocess.Popen(
            [sys.executable, "-m", "center_svc", "--listen", f"127.0.0.1:{center_port}",
             "--store", "memory://", "--policy", str(policy)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        source = f"center=127.0.0.1:{center_port}"
    base = [sys.executable, __file__, "--policy", source, "--port", str(port)]
    server = subprocess.Popen([*base, "--serve", mode], stdout=subprocess.PIPE, env=env,
                              text=True)
    try:
        assert server.stdout is not None
        if server.stdout.readline().strip() != "listening":
            raise SystemExit(f"{mode}: server did not start")
        done = subprocess.run([*base, "--client", mode, "--server-pid", str(server.pid),
                               "--seconds", str(args.seconds), "--concurrency",
                               str(args.concurrency), "--size", str(args.size)],
                              capture_output=True, text=True, env=env, timeout=120)
        if done.returncode != 0:
            raise SystemExit(f"{mode}: client failed: {done.stderr[-2000:]}")
        result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
        return result
    finally:
        server.terminate()
        server.wait(10)
        if center is not None:
            center.terminate()
            center.wait(10)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--setups", default="plain,noop,proxyless,proxyless-center")
    parser.add_argument("--code", action="append", default=[],
                        help="NAME=DIR: also run proxyless with fastproxy from DIR")
    parser.add_argument("--center", action="store_true",
                        help="the --code variants also with their policy from a Center")
    parser.add_argument("--json", default="")
    parser.add_argument("--serve", default="")
    parser.add_argument("--client", default="")
    parser.add_argument("--policy", default="")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--server-pid", type=int, default=0)
    parser.add_argument("--load-only", action="store_true")
    args = parser.parse_args(argv)
    if os.environ.get("PROXYLESS_CODE"):
        use_code(os.environ["PROXYLESS_CODE"])
    if args.serve:
        asyncio.run(serve(args.serve, args.policy, args.port))
        return
    if args.client:
        result = asyncio.run(client(args.client, args.policy, args.port, args.server_pid,
                                    args.seconds, args.concurrency, args.size,
                                    args.load_only))
        print(json.dumps(result))
        return
    variants: list[tuple[str, str, str | None]] = [
        (name, name, None) for name in args.setups.split(",")]
    for spec in args.code:
        label, _, directory = spec.partition("=")
        for mode in ("proxyless", "proxyless-center") if args.center else ("proxyless",):
            variants.append((f"{mode}@{label}", mode, directory))
    results: dict[str, list[dict[str, Any]]] = {label: [] for label, _, _ in variants}
    print(f"load average: {os.getloadavg()}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds):
            for label, mode, code in variants:
                result = run_one(mode, code, args, Path(tmp))
                results[label].append(result)
                print(f"round {round_ + 1} {label:22} " + "  ".join(
                    f"{phase}: client {r['client_ms']:.3f} server {r['server_ms']:.3f} "
                    f"p50 {r['p50_ms']:.3f} ms {r['rate']:.0f}/s"
                    for phase, r in result.items()), flush=True)
    print(f"load average: {os.getloadavg()}")
    print("medians (ms per call)")
    for label, runs in results.items():
        line = []
        for phase in ("single", "load"):
            client_ms = statistics.median(r[phase]["client_ms"] for r in runs)
            server_ms = statistics.median(r[phase]["server_ms"] for r in runs)
            p50 = statistics.median(r[phase]["p50_ms"] for r in runs)
            line.append(f"{phase}: client {client_ms:.3f} server {server_ms:.3f} "
                        f"sum {client_ms + server_ms:.3f} p50 {p50:.3f}")
        print(f"  {label:22} " + "  |  ".join(line))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
