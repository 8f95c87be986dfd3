"""The setups compared side by side, and the processes that make them.

One upstream (the lean echo server) serves every setup. Each sealed setup has its own
out-proxy and in-proxy and its own gRPC service name, so the CPU of every process is that of
one setup only, and all setups stay up during the whole run (the idle ones cost nothing).

- direct: the load client calls the upstream.
- nginx: client -> nginx `grpc_pass` (one worker, keepalive upstream) -> upstream.
- sealed: client -> out-proxy (caller `bench_client`) -> in-proxy (`echo_sealed`) -> upstream;
  AES-256-GCM payloads, HMAC-SHA256 identities both ways, an allow rule and a rate limit
  (high enough never to refuse); policy from the Center.
- sealed+gzip: the same with gzip for messages of 512 bytes or more.
- sealed-workers2: the same as sealed with the OUT-proxy at `--workers 2` (see WORKERS_NOTE).
- embedded, observed: slots, skipped until the SDK's embedded mode and observability exist.
"""

from __future__ import annotations

import base64
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

from harness.processes import Spawned, free_port, spawn, stop, wait_listening, wait_serving

BENCH_DIR = Path(__file__).resolve().parent.parent
NGINX_TEMPLATE = BENCH_DIR / "nginx" / "grpc_pass.conf.template"
CALLER = "bench_client"
WORKERS_NOTE = (
    "the out-proxy is the one scaled: the apps' connections land on it, and SO_REUSEPORT "
    "spreads connections (not calls) over workers, so its workers share the load when clients "
    "open several connections (h2load -c 4). An in-proxy behind one out-proxy receives one "
    "HTTP/2 connection per out-proxy worker, so extra in-proxy workers would mostly idle.")


@dataclass(frozen=True, slots=True)
class SealedSpec:
    grpc_service: str
    callee: str
    gzip: bool = False
    out_workers: int = 1


SEALED: dict[str, SealedSpec] = {
    "sealed": SealedSpec("bench.v1.Sealed", "echo_sealed"),
    "sealed+gzip": SealedSpec("bench.v1.Gzip", "echo_gzip", gzip=True),
    "sealed-workers2": SealedSpec("bench.v1.Workers2", "echo_workers2", out_workers=2),
}
ALL_SETUPS = ("direct", "nginx", *SEALED, "embedded", "observed")


@dataclass
class Setup:
    """One way of reaching the echo upstream. `processes` are those whose CPU and memory are
    measured for it (label -> process)."""

    name: str
    entry: str = ""
    unary_method: str = "/bench.v1.Direct/Unary"
    processes: dict[str, Spawned] = field(default_factory=dict)
    skipped: str = ""


def _secret() -> str:
    return "base64:" + base64.b64encode(os.urandom(32)).decode()


def policy_yaml(in_ports: dict[str, int]) -> str:
    """The bench policy: one callee service per sealed setup, all callable by `bench_client`."""
    lines = ["version: 1", "keys:",
             f"  bench-enc: {{type: aes-256-gcm, secret: \"{_secret()}\"}}",
             f"  bench-client-id: {{type: hmac-sha256, secret: \"{_secret()}\"}}",
             f"  bench-echo-id: {{type: hmac-sha256, secret: \"{_secret()}\"}}",
             "services:",
             f"  {CALLER}:", "    identity: {key: bench-client-id}"]
    for name, spec in SEALED.items():
        lines += [f"  {spec.callee}:",
                  f"    grpc_services: [{spec.grpc_service}]",
                  f"    endpoints: [\"127.0.0.1:{in_ports[name]}\"]",
                  "    identity: {key: bench-echo-id}",
                  "    encrypt: {key: bench-enc}",
                  "    timeout_ms: 300000",
                  "    allow:",
                  f"      - caller: {CALLER}",
                  f"        methods: [\"/{spec.grpc_service}/*\"]",
                  "        rate_limit: {rps: 10000000, burst: 1000000}"]
        if spec.gzip:
            lines.append("    compress: {algorithm: gzip, min_bytes: 512}")
    return "\n".join(lines) + "\n"


def nginx_available() -> bool:
    return shutil.which("nginx") is not None


def render_nginx(prefix: Path, listen: str, upstream: str) -> Path:
    text = (NGINX_TEMPLATE.read_text().replace("@PREFIX@", str(prefix))
            .replace("@LISTEN@", listen).replace("@UPSTREAM@", upstream))
    path = prefix / "nginx.conf"
    path.write_text(text)
    return path


def embedded_available() -> bool:
    try:
        import fastproxy
    except ImportError:
        return False
    return hasattr(fastproxy, "client_interceptors")


class Topology:
    """Starts the upstream, the Center, nginx and the proxies of the chosen setups."""

    def __init__(self, names: list[str], work_dir: Path) -> None:
        self.names = names
        self.work_dir = work_dir
        self.log_dir = work_dir / "logs"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.started: list[Spawned] = []
        self.setups: dict[str, Setup] = {}

    def _spawn(self, name: str, argv: list[str], address: str) -> Spawned:
        spawned = spawn(name, argv, address, self.log_dir)
        self.started.append(spawned)
        return spawned

    def start(self) -> dict[str, Setup]:
        py = sys.executable
        upstream_addr = f"127.0.0.1:{free_port()}"
        upstream = self._spawn("upstream", [
            py, str(BENCH_DIR / "harness" / "echo_upstream.py"),
            "--port", upstream_addr.rpartition(":")[2]], upstream_addr)
        sealed = [name for name in self.names if name in SEALED]
        in_ports = {name: free_port() for name in sealed}
        out_ports = {name: free_port() for name in sealed}
        center: Spawned | None = None
        if sealed:
            policy = self.work_dir / "policy.yaml"
            policy.write_text(policy_yaml({**{n: 1 for n in SEALED}, **in_ports}))
            center_addr = f"127.0.0.1:{free_port()}"
            center = self._spawn("center", [py, "-m", "center_svc", "--listen", center_addr,
                                            "--store", "memory://", "--policy", str(policy)],
                                 center_addr)
        wait_listening(upstream)
        if center is not None:
            wait_serving(center)
        for name in self.names:
            setup = Setup(name)
            self.setups[name] = setup
            if name == "direct":
                setup.entry, setup.processes = upstream_addr, {"upstream": upstream}
            elif name == "nginx":
                if not nginx_available():
                    setup.skipped = "nginx is not installed (Debian package `nginx`)"
                    continue
                prefix = self.work_dir / "nginx"
                prefix.mkdir(exist_ok=True)
                listen = f"127.0.0.1:{free_port()}"
                conf = render_nginx(prefix, listen, upstream_addr)
                nginx = self._spawn("nginx", ["nginx", "-p", str(prefix), "-c", str(conf)],
                                    listen)
                wait_listening(nginx)
                setup.entry, setup.processes = listen, {"nginx": nginx, "upstream": upstream}
            elif name in SEALED:
                assert center is not None
                spec = SEALED[name]
                tag = name.replace("+", "-")
                in_proxy = self._spawn(f"in-proxy-{tag}", [
                    py, "-m", "proxy_svc", "--role", "in", "--service", spec.callee,
                    "--listen", f"127.0.0.1:{in_ports[name]}", "--upstream", upstream_addr,
                    "--center", center.address, "--log-level", "warning"],
                    f"127.0.0.1:{in_ports[name]}")
                out_proxy = self._spawn(f"out-proxy-{tag}", [
                    py, "-m", "proxy_svc", "--role", "out", "--service", CALLER,
                    "--listen", f"127.0.0.1:{out_ports[name]}", "--center", center.address,
                    "--workers", str(spec.out_workers), "--log-level", "warning"],
                    f"127.0.0.1:{out_ports[name]}")
                setup.entry = out_proxy.address
                setup.unary_method = f"/{spec.grpc_service}/Unary"
                setup.processes = {"out-proxy": out_proxy, "in-proxy": in_proxy,
                                   "upstream": upstream, "center": center}
            elif name == "embedded":
                # TODO(embedded): when `fastproxy.client_interceptors(service=..., center=...,
                # embedded=True)` exists, run pyload with those interceptors straight at an
                # in-proxy (h2load cannot seal, so Python client figures only).
                setup.skipped = ("the SDK's embedded mode is not in the tree yet"
                                 if not embedded_available() else
                                 "the SDK's embedded mode (`fastproxy.aio_client_interceptors("
                                 "..., embedded=True)`) arrived after this harness; driving "
                                 "it from the Python client is still to do")
            elif name == "observed":
                # TODO(observed): the sealed chain with tracing and metrics exported, once the
                # observability issue adds the flags; same processes as `sealed`.
                setup.skipped = "tracing and metrics do not exist yet (observability issue)"
            else:
                raise ValueError(f"unknown setup {name!r}; known: {', '.join(ALL_SETUPS)}")
        for setup in self.setups.values():
            for label, spawned in setup.processes.items():
                if label.endswith("proxy"):
                    wait_serving(spawned, connections=8)
        return self.setups

    def stop(self) -> None:
        for spawned in reversed(self.started):
            stop(spawned)
