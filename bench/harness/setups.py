"""The setups compared side by side, and the processes that make them.

One upstream (the lean echo server) serves every setup. Each sealed setup has its own
out-proxy and in-proxy and its own gRPC service name, so the CPU of every process is that of
one setup only, and all setups stay up during the whole run (the idle ones cost nothing).

- direct: the load client calls the upstream.
- nginx: client -> nginx `grpc_pass` (one worker, keepalive upstream) -> upstream.
- sealed: client -> out-proxy (caller `bench_client`) -> in-proxy (`echo_sealed`) -> upstream;
  AES-256-GCM payloads, HMAC-SHA256 identities both ways, an allow rule and a rate limit
  (high enough never to refuse); policy from the Center.
- sealed-no-tunnel: exactly sealed (its own service, `echo_no_tunnel`) with `--tunnel off` on
  the out-proxy: each call its own HTTP/2 stream to the in-proxy (the design before the
  tunnel), where `sealed` carries fast-path unary calls over one long-lived stream.
- sealed-no-reflection: exactly sealed (`echo_no_reflection`) in front of a second echo
  upstream that serves no server reflection (`--no-reflection`: a bare grpc.aio server, what
  many production servers are): no method kind comes from the upstream.
- sealed-descriptors: sealed-no-reflection (`echo_descriptors`, the same bare upstream) with
  the in-proxy given the service's kinds by `--descriptor-set` (a `FileDescriptorSet`, as
  protoc writes it): the unary fast path and the tunnel without reflection.
- sealed+gzip: the same as sealed with gzip for messages of 512 bytes or more.
- sealed-workers2: the same as sealed with the OUT-proxy at `--workers 2` (see WORKERS_NOTE).
- embedded: the load client itself carries the SDK in embedded mode
  (`fastproxy.aio_client_interceptors(service=bench_client, center=..., embedded=True)`) and
  calls the in-proxy (`echo_embedded`) directly: the out-proxy's work (route, sign, seal,
  open) moves into the client process. Python client only (h2load cannot seal).
- proxyless: no proxy process at all: the load client carries the SDK in embedded mode (as in
  embedded) and calls an echo app served with the embedded server's interceptors
  (`fastproxy.server.aio_server_interceptors(service=echo_proxyless, center=...)`,
  `app`), which
  admits, opens and seals every call itself. Python client only.
- observed: the sealed chain (`echo_observed`) with tracing and metrics on: both proxies get
  the standard `OTEL_*` variables (OTLP/gRPC export of traces and metrics to the harness's
  counting receiver, `otlp_receiver.py`, sampler `parentbased_always_on`) and serve Prometheus
  metrics on `--metrics-port`. Every other proxy runs with no `OTEL_*` variable at all.
- observed-sampled: the same as observed (`echo_observed_sampled`, its own receiver and
  service names) but with the proxies' DEFAULT sampler (no `OTEL_TRACES_SAMPLER`:
  parent-based, `DEFAULT_TRACE_SAMPLE_RATIO` = 1% of root calls) and
  `OTEL_BSP_SCHEDULE_DELAY=200` (ms) always, so the harness can tell when the window's spans
  have left (`telemetry_probe.py`: span counts stable for 2 x that delay). A shorter export
  schedule costs at least as much CPU as the default 5 s (smaller, more frequent batches),
  so its figure is conservative.
"""

from __future__ import annotations

import base64
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

from fastproxy.telemetry.setup import DEFAULT_TRACE_SAMPLE_RATIO
from harness.processes import Spawned, free_port, spawn, stop, wait_listening, wait_serving

# The OTLP variables of the observed proxies, besides the endpoint and the service name.
# observed: batching (OTEL_BSP_*) keeps the SDK's defaults unless `Topology(bsp_delay_ms=...)`
# (smoke); observed-sampled always exports every SAMPLED_BSP_DELAY_MS.
# Metrics are exported every 10 s (the SDK's default is 60 s) so a short run sees some.
OBSERVED_ENV = {
    "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
    "OTEL_METRIC_EXPORT_INTERVAL": "10000",
}
EVERY_CALL_SAMPLER = {"OTEL_TRACES_SAMPLER": "parentbased_always_on"}
SAMPLED_BSP_DELAY_MS = 200
# Each observed proxy's spans carry its own service.name; the receiver counts per name.
OBSERVED_SERVICE_NAMES = {"out-proxy": "bench-observed-out-proxy",
                          "in-proxy": "bench-observed-in-proxy"}
OBSERVED_SAMPLED_SERVICE_NAMES = {"out-proxy": "bench-observed-sampled-out-proxy",
                                  "in-proxy": "bench-observed-sampled-in-proxy"}

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
    tunnel: bool = True  # the out-proxy's --tunnel
    reflection: bool = True  # the upstream serves server reflection
    descriptors: bool = False  # the in-proxy gets the service's --descriptor-set


SEALED: dict[str, SealedSpec] = {
    "sealed": SealedSpec("bench.v1.Sealed", "echo_sealed"),
    "sealed-no-tunnel": SealedSpec("bench.v1.NoTunnel", "echo_no_tunnel", tunnel=False),
    "sealed-no-reflection": SealedSpec("bench.v1.NoReflection", "echo_no_reflection",
                                       reflection=False),
    "sealed-descriptors": SealedSpec("bench.v1.Descriptors", "echo_descriptors",
                                     reflection=False, descriptors=True),
    "sealed+gzip": SealedSpec("bench.v1.Gzip", "echo_gzip", gzip=True),
    "sealed-workers2": SealedSpec("bench.v1.Workers2", "echo_workers2", out_workers=2),
}
EMBEDDED = SealedSpec("bench.v1.Embedded", "echo_embedded")
PROXYLESS = SealedSpec("bench.v1.Proxyless", "echo_proxyless")


@dataclass(frozen=True, slots=True)
class ObservedSpec:
    """A sealed chain with telemetry on. `sample_ratio`: the share of calls traced (1.0:
    every call, `EVERY_CALL_SAMPLER`; else the proxies' default sampler, no
    OTEL_TRACES_SAMPLER); `bsp_delay_ms`: OTEL_BSP_SCHEDULE_DELAY (None: the SDK's 5 s, or
    the Topology's)."""

    sealed: SealedSpec
    service_names: dict[str, str]
    sample_ratio: float
    bsp_delay_ms: int | None = None


OBSERVED_SETUPS: dict[str, ObservedSpec] = {
    "observed": ObservedSpec(SealedSpec("bench.v1.Observed", "echo_observed"),
                             OBSERVED_SERVICE_NAMES, 1.0),
    "observed-sampled": ObservedSpec(
        SealedSpec("bench.v1.ObservedSampled", "echo_observed_sampled"),
        OBSERVED_SAMPLED_SERVICE_NAMES, DEFAULT_TRACE_SAMPLE_RATIO, SAMPLED_BSP_DELAY_MS),
}
# every callee of the bench policy, by the setup that calls it
CALLEES: dict[str, SealedSpec] = {
    **SEALED, "embedded": EMBEDDED, "proxyless": PROXYLESS,
    **{name: spec.sealed for name, spec in OBSERVED_SETUPS.items()}}
ALL_SETUPS = ("direct", "nginx", *SEALED, "embedded", "proxyless", *OBSERVED_SETUPS)
# the label of the bare grpc.aio server (the upstream without reflection) in a setup's
# processes: its RSS at start is the reference of the proxies' idle RSS
BARE_LABEL = "upstream"
BARE_SETUP = "sealed-no-reflection"


@dataclass
class Setup:
    """One way of reaching the echo upstream. `processes` are those whose CPU and memory are
    measured for it (label -> process)."""

    name: str
    entry: str = ""
    unary_method: str = "/bench.v1.Direct/Unary"
    processes: dict[str, Spawned] = field(default_factory=dict)
    skipped: str = ""
    # embedded: the load client runs the SDK in embedded mode as this caller, policy from
    # `center`; such a setup cannot be driven by h2load
    embedded_service: str = ""
    center: str = ""
    # observed setups: the OTLP receiver's address, each proxy's Prometheus port and
    # service.name (label -> port, name), the share of calls traced, OTEL_BSP_SCHEDULE_DELAY
    otlp_receiver: str = ""
    metrics_ports: dict[str, int] = field(default_factory=dict)
    otlp_service_names: dict[str, str] = field(default_factory=dict)
    trace_sample_ratio: float = 1.0
    bsp_delay_ms: int | None = None

    @property
    def python_client_only(self) -> bool:
        return bool(self.embedded_service)


def _secret() -> str:
    return "base64:" + base64.b64encode(os.urandom(32)).decode()


def policy_yaml(in_ports: dict[str, int]) -> str:
    """The bench policy: one callee service per sealed, embedded and observed setup, all
    callable by `bench_client`."""
    lines = ["version: 1", "keys:",
             f"  bench-enc: {{type: aes-256-gcm, secret: \"{_secret()}\"}}",
             f"  bench-client-id: {{type: hmac-sha256, secret: \"{_secret()}\"}}"]
    # an identity key belongs to one service: one per callee
    lines += [f"  {spec.callee}-id: {{type: hmac-sha256, secret: \"{_secret()}\"}}"
              for spec in CALLEES.values()]
    lines += ["services:", f"  {CALLER}:", "    identity: {key: bench-client-id}"]
    for name, spec in CALLEES.items():
        lines += [f"  {spec.callee}:",
                  f"    grpc_services: [{spec.grpc_service}]",
                  f"    endpoints: [\"127.0.0.1:{in_ports[name]}\"]",
                  f"    identity: {{key: {spec.callee}-id}}",
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
    return hasattr(fastproxy, "aio_client_interceptors")


class Topology:
    """Starts the upstream, the Center, nginx, the OTLP receiver and the proxies of the chosen
    setups. `bsp_delay_ms` sets OTEL_BSP_SCHEDULE_DELAY of the `observed` proxies (None: the
    SDK's default, 5 s; the smoke run uses a short one so its small batches leave soon);
    `observed-sampled` always uses its own (`SAMPLED_BSP_DELAY_MS`)."""

    def __init__(self, names: list[str], work_dir: Path,
                 bsp_delay_ms: int | None = None) -> None:
        self.names = names
        self.work_dir = work_dir
        self.bsp_delay_ms = bsp_delay_ms
        self.log_dir = work_dir / "logs"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.started: list[Spawned] = []
        self.setups: dict[str, Setup] = {}

    def _spawn(self, name: str, argv: list[str], address: str,
               env: dict[str, str] | None = None) -> Spawned:
        spawned = spawn(name, argv, address, self.log_dir, env)
        self.started.append(spawned)
        return spawned

    def _proxy(self, role: str, tag: str, service: str, listen: str, center: Spawned,
               extra: list[str], env: dict[str, str] | None = None) -> Spawned:
        return self._spawn(f"{role}-proxy-{tag}", [
            sys.executable, "-m", "proxy_svc", "--role", role, "--service", service,
            "--listen", listen, "--center", center.address, "--log-level", "warning",
            *extra], listen, env)

    def _observed_env(self, spec: ObservedSpec, label: str,
                      receiver: Spawned) -> dict[str, str]:
        env = {**OBSERVED_ENV, "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://{receiver.address}",
               "OTEL_SERVICE_NAME": spec.service_names[label]}
        if spec.sample_ratio >= 1.0:
            env.update(EVERY_CALL_SAMPLER)
        delay = self._bsp_delay_ms(spec)
        if delay is not None:
            env["OTEL_BSP_SCHEDULE_DELAY"] = str(delay)
        return env

    def _bsp_delay_ms(self, spec: ObservedSpec) -> int | None:
        return spec.bsp_delay_ms if spec.bsp_delay_ms is not None else self.bsp_delay_ms

    def _descriptor_set(self, spec: SealedSpec) -> Path:
        """The echo service's `FileDescriptorSet` (what `protoc --descriptor_set_out`
        writes), for the in-proxy's `--descriptor-set`."""
        from google.protobuf import descriptor_pb2

        from harness.echo_upstream import described

        path = self.work_dir / f"{spec.callee}.pb"
        path.write_bytes(descriptor_pb2.FileDescriptorSet(file=[
            descriptor_pb2.FileDescriptorProto.FromString(described(spec.grpc_service))
        ]).SerializeToString())
        return path

    def start(self) -> dict[str, Setup]:
        py = sys.executable
        upstream_addr = f"127.0.0.1:{free_port()}"
        upstream = self._spawn("upstream", [
            py, str(BENCH_DIR / "harness" / "echo_upstream.py"),
            "--port", upstream_addr.rpartition(":")[2]], upstream_addr)
        bare: Spawned | None = None
        if any(name in SEALED and not SEALED[name].reflection for name in self.names):
            bare_addr = f"127.0.0.1:{free_port()}"
            bare = self._spawn("upstream-bare", [
                py, str(BENCH_DIR / "harness" / "echo_upstream.py"), "--no-reflection",
                "--port", bare_addr.rpartition(":")[2]], bare_addr)
        sealed = [name for name in self.names if name in CALLEES]
        in_ports = {name: free_port() for name in sealed}
        out_ports = {name: free_port() for name in sealed}
        center: Spawned | None = None
        if sealed:
            policy = self.work_dir / "policy.yaml"
            policy.write_text(policy_yaml({**{n: 1 for n in CALLEES}, **in_ports}))
            center_addr = f"127.0.0.1:{free_port()}"
            center = self._spawn("center", [py, "-m", "center_svc", "--listen", center_addr,
                                            "--store", "memory://", "--policy", str(policy)],
                                 center_addr)
        wait_listening(upstream)
        if bare is not None:
            wait_listening(bare)
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
                serving = upstream if spec.reflection else bare
                assert serving is not None
                in_extra = ["--upstream", serving.address]
                if spec.descriptors:
                    in_extra += ["--descriptor-set", str(self._descriptor_set(spec))]
                in_proxy = self._proxy("in", tag, spec.callee, f"127.0.0.1:{in_ports[name]}",
                                       center, in_extra)
                out_proxy = self._proxy("out", tag, CALLER, f"127.0.0.1:{out_ports[name]}",
                                        center, ["--workers", str(spec.out_workers),
                                                 "--tunnel", "on" if spec.tunnel else "off"])
                setup.entry = out_proxy.address
                setup.unary_method = f"/{spec.grpc_service}/Unary"
                setup.processes = {"out-proxy": out_proxy, "in-proxy": in_proxy,
                                   "upstream": serving, "center": center}
            elif name == "proxyless":
                assert center is not None
                if not embedded_available():
                    setup.skipped = "the SDK's embedded mode is not in the tree"
                    continue
                app_addr = f"127.0.0.1:{in_ports[name]}"
                app = self._spawn("app-proxyless", [
                    py, str(BENCH_DIR / "harness" / "echo_upstream.py"),
                    "--port", str(in_ports[name]), "--no-reflection",
                    "--fastproxy-service", PROXYLESS.callee, "--center", center.address],
                    app_addr)
                wait_listening(app)
                setup.entry = app_addr
                setup.unary_method = f"/{PROXYLESS.grpc_service}/Unary"
                setup.embedded_service, setup.center = CALLER, center.address
                setup.processes = {"app": app, "center": center}
            elif name == "embedded":
                assert center is not None
                if not embedded_available():
                    setup.skipped = "the SDK's embedded mode is not in the tree"
                    continue
                in_proxy = self._proxy("in", name, EMBEDDED.callee,
                                       f"127.0.0.1:{in_ports[name]}", center,
                                       ["--upstream", upstream_addr])
                setup.entry = in_proxy.address
                setup.unary_method = f"/{EMBEDDED.grpc_service}/Unary"
                setup.embedded_service, setup.center = CALLER, center.address
                setup.processes = {"in-proxy": in_proxy, "upstream": upstream,
                                   "center": center}
            elif name in OBSERVED_SETUPS:
                assert center is not None
                observed = OBSERVED_SETUPS[name]
                receiver_addr = f"127.0.0.1:{free_port()}"
                receiver = self._spawn(f"otlp-receiver-{name}", [
                    py, str(BENCH_DIR / "harness" / "otlp_receiver.py"),
                    "--port", receiver_addr.rpartition(":")[2]], receiver_addr)
                wait_listening(receiver)
                setup.metrics_ports = {"out-proxy": free_port(), "in-proxy": free_port()}
                in_proxy = self._proxy(
                    "in", name, observed.sealed.callee, f"127.0.0.1:{in_ports[name]}", center,
                    ["--upstream", upstream_addr,
                     "--metrics-port", str(setup.metrics_ports["in-proxy"])],
                    self._observed_env(observed, "in-proxy", receiver))
                out_proxy = self._proxy(
                    "out", name, CALLER, f"127.0.0.1:{out_ports[name]}", center,
                    ["--metrics-port", str(setup.metrics_ports["out-proxy"])],
                    self._observed_env(observed, "out-proxy", receiver))
                setup.entry = out_proxy.address
                setup.unary_method = f"/{observed.sealed.grpc_service}/Unary"
                setup.otlp_receiver = receiver.address
                setup.otlp_service_names = dict(observed.service_names)
                setup.trace_sample_ratio = observed.sample_ratio
                setup.bsp_delay_ms = self._bsp_delay_ms(observed)
                setup.processes = {"out-proxy": out_proxy, "in-proxy": in_proxy,
                                   "upstream": upstream, "center": center,
                                   "otlp-receiver": receiver}
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
