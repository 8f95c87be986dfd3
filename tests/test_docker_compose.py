"""docker/compose.yaml runs for real, minus Docker: no engine runs here, so this test reads
the compose file and runs the very same commands, configuration and health checks on
loopback (service names and ports mapped to free 127.0.0.1 ports, mounts to temporary
folders). If the compose file and the product drift apart, this fails."""

from __future__ import annotations

import os
import re
import runpy
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DOCKER = ROOT / "docker"
THIRD_PARTY = {"otel-collector"}  # an upstream image; nothing of ours runs in it
ONE_SHOT = {"center-key", "client"}  # run to completion; the client checks its calls
CONFIG_MOUNT = "/etc/fastproxy"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LoopbackCompose:
    def __init__(self, compose: dict[str, Any], workdir: Path) -> None:
        self.services: dict[str, dict[str, Any]] = compose["services"]
        self.workdir = workdir
        hosts = "|".join(re.escape(name) for name in [*self.services, "0.0.0.0", "127.0.0.1"])
        self.address = re.compile(rf"^(?:[a-z]+://)?({hosts}):(\d+)$")
        self.ports: dict[str, int] = {}

    def _port(self, port: str) -> int:
        return self.ports.setdefault(port, _free_port())

    def rewrite(self, service: str, arg: str) -> str:
        match = self.address.match(arg)
        if match:
            scheme = arg[: arg.index(match.group(1))]
            return f"{scheme}127.0.0.1:{self._port(match.group(2))}"
        for volume in self.services[service].get("volumes", []):
            source, target = volume.split(":")[:2]
            # a named volume is one folder, whichever service mounts it
            local = (self.workdir / "config" if source == "./config"
                     else self.workdir / f"volume-{source}")
            local.mkdir(parents=True, exist_ok=True)
            arg = arg.replace(target, str(local))
        return arg

    def argv(self, service: str, words: list[str]) -> list[str]:
        args = [self.rewrite(service, word) for word in words]
        if args[0] == "python":
            return [sys.executable, *args[1:]]
        if args[0] == "fastproxy":
            return [sys.executable, "-m", "fastproxy.cli", *args[1:]]
        raise AssertionError(f"{service}: unexpected program {args[0]!r}")

    def env(self, service: str) -> dict[str, str]:
        spec = self.services[service]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        for env_file in spec.get("env_file", []):
            path = self.workdir / "config" / Path(env_file).name
            for line in path.read_text().splitlines():
                key, _, value = line.partition("=")
                env[key] = value
        for key, value in (spec.get("environment") or {}).items():
            env[key] = self.rewrite(service, str(value))
        return env

    def order(self) -> Iterator[str]:
        done: set[str] = set()
        pending = [s for s in self.services if s not in THIRD_PARTY]
        while pending:
            ready = [s for s in pending
                     if set(self.services[s].get("depends_on", {})) - THIRD_PARTY <= done]
            assert ready, f"depends_on cycle among {pending}"
            for service in ready:
                yield service
                done.add(service)
                pending.remove(service)


def _healthy(compose: LoopbackCompose, service: str, process: subprocess.Popen[bytes],
             timeout_s: float) -> bool:
    check = compose.argv(service, compose.services[service]["healthcheck"]["test"][1:])
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and process.poll() is None:
        if subprocess.run(check, capture_output=True, timeout=30,
                          env=compose.env(service)).returncode == 0:
            return True
        time.sleep(0.2)
    return False


def test_compose_stack_runs_on_loopback_and_the_client_succeeds(tmp_path: Path) -> None:
    compose_file = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    make_config = runpy.run_path(str(DOCKER / "make_config.py"))["make_config"]
    make_config(tmp_path / "config", mount=str(tmp_path / "config"))
    compose = LoopbackCompose(compose_file, tmp_path)
    running: dict[str, subprocess.Popen[bytes]] = {}
    logs: dict[str, Path] = {}
    try:
        for service in compose.order():
            spec = compose.services[service]
            assert spec["image"] == "fastproxy:dev", service
            argv = compose.argv(service, spec["command"])
            logs[service] = tmp_path / f"{service}.log"
            with logs[service].open("wb") as log:
                if service in ONE_SHOT:
                    done = subprocess.run(argv, env=compose.env(service), stdout=log,
                                          stderr=subprocess.STDOUT, timeout=90)
                    output = logs[service].read_text()
                    assert done.returncode == 0, output
                    if service == "client":
                        assert "0 unexpected" in output, output
                    continue
                running[service] = subprocess.Popen(argv, env=compose.env(service),
                                                    stdout=log, stderr=subprocess.STDOUT)
            if not _healthy(compose, service, running[service], 40):
                pytest.fail(f"{service} never became healthy:\n{logs[service].read_text()}")
    finally:
        for process in reversed(list(running.values())):
            process.send_signal(signal.SIGTERM)
        codes: dict[str, int | str] = {}
        for service, process in running.items():
            try:
                codes[service] = process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
                codes[service] = "killed"
    assert all(code == 0 for code in codes.values()), codes
    assert set(running) == {"center", "server", "in-proxy", "out-proxy"}


def test_compose_file_names_only_our_image_or_the_collector() -> None:
    compose_file = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    images = {name: spec.get("image") for name, spec in compose_file["services"].items()}
    assert images.pop("otel-collector").startswith("otel/opentelemetry-collector")
    assert set(images.values()) == {"fastproxy:dev"}
    for name, spec in compose_file["services"].items():
        if name not in THIRD_PARTY | ONE_SHOT:
            assert spec["healthcheck"]["test"][:3] == ["CMD", "fastproxy", "health"], name


# -- compose-replicas.yaml: checked statically (its etcd image does not run here) ------------


def _replicas_compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((DOCKER / "compose-replicas.yaml").read_text())
    return loaded


def _flag(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def test_replicas_compose_runs_three_etcd_members_as_one_cluster() -> None:
    services = _replicas_compose()["services"]
    members = sorted(name for name, spec in services.items()
                     if spec["image"].startswith("gcr.io/etcd-development/etcd:"))
    assert members == ["etcd1", "etcd2", "etcd3"]
    cluster = {f"{m}=https://{m}:2380" for m in members}
    for member in members:
        command = services[member]["command"]
        assert command[0] == "etcd"
        assert _flag(command, "--name") == member
        assert set(_flag(command, "--initial-cluster").split(",")) == cluster
        assert _flag(command, "--initial-advertise-peer-urls") == f"https://{member}:2380"
        assert _flag(command, "--advertise-client-urls") == f"https://{member}:2379"
        # only clients with a certificate from the configuration's CA, over TLS
        assert "--client-cert-auth" in command and "--peer-client-cert-auth" in command
        assert _flag(command, "--cert-file") == f"{CONFIG_MOUNT}/tls/etcd-{member}.pem"
        assert any(volume.endswith(":/var/lib/etcd") for volume in services[member]["volumes"])
        assert "etcdctl" in services[member]["healthcheck"]["test"]


def test_replicas_compose_centers_share_the_cluster_and_their_flags_parse(
        tmp_path: Path) -> None:
    from center_svc.config import parse_config
    from center_svc.etcd_store import parse_etcd_url

    services = _replicas_compose()["services"]
    make_config = runpy.run_path(str(DOCKER / "make_config.py"))["make_config"]
    make_config(tmp_path / "config", mount=str(tmp_path / "config"))
    centers = sorted(name for name, spec in services.items()
                     if spec.get("command", [])[:3] == ["python", "-m", "center_svc"])
    assert centers == ["center-a", "center-b"]
    stores = set()
    for name in centers:
        command = [word.replace(CONFIG_MOUNT, str(tmp_path / "config"))
                   for word in services[name]["command"][3:]]
        config = parse_config(command, env={})  # exits on a flag the Center refuses
        endpoints, _prefix = parse_etcd_url(config.store)
        assert sorted(endpoints) == ["etcd1:2379", "etcd2:2379", "etcd3:2379"]
        assert config.etcd_credentials.uses_tls and config.etcd_credentials.cert
        assert not config.development
        stores.add(config.store)
        assert set(services[name]["depends_on"]) == {"etcd1", "etcd2", "etcd3"}
        assert services[name]["healthcheck"]["test"][:3] == ["CMD", "fastproxy", "health"]
    assert len(stores) == 1  # one store, one prefix: replicas of one Center


def test_replicas_compose_nodes_take_both_centers() -> None:
    services = _replicas_compose()["services"]
    for name in ("in-proxy", "out-proxy"):
        command = services[name]["command"]
        assert _flag(command, "--center") == "center-a:7070,center-b:7070", name
        assert set(services[name]["depends_on"]) >= {"center-a", "center-b"}
    # the Centers' certificate names both replicas, as the nodes dial them
    assert {"center-a", "center-b"} <= set(
        runpy.run_path(str(DOCKER / "make_config.py"))["CENTER_REPLICAS"])


# -- both compose files: safe by default (issue 13, point 7) ----------------------------------


@pytest.mark.parametrize("name", ["compose.yaml", "compose-replicas.yaml"])
def test_compose_proxies_use_mutual_tls_and_publish_neither_upstream_nor_out_proxy(
        name: str, tmp_path: Path) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    from fastproxy.hosting.commandline import is_loopback
    from proxy_svc.config import parse_config

    services = yaml.safe_load((DOCKER / name).read_text())["services"]
    config = tmp_path / "config"
    runpy.run_path(str(DOCKER / "make_config.py"))["make_config"](config, mount=str(config))
    pinned = tmp_path / "center-key"
    pinned.mkdir()
    (pinned / "center.pub").write_bytes(Ed25519PrivateKey.generate().public_key().public_bytes(
        Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))

    # nothing of ours is published on the host (the collector only on its loopback)
    for service, spec in services.items():
        for port in spec.get("ports", []):
            assert service in THIRD_PARTY and str(port).startswith("127.0.0.1:"), service
    # the upstream shares the in-proxy's network namespace and listens on its loopback:
    # nothing reaches it but through the in-proxy
    server, inproxy = services["server"], services["in-proxy"]
    assert server["network_mode"] == "service:in-proxy"
    assert is_loopback(_flag(server["command"], "--listen"))
    assert _flag(inproxy["command"], "--upstream") == _flag(server["command"], "--listen")
    # the out-proxy listens on loopback, for the app in its network namespace
    outproxy, client = services["out-proxy"], services["client"]
    assert is_loopback(_flag(outproxy["command"], "--listen"))
    assert client["network_mode"] == "service:out-proxy"
    assert _flag(client["command"], "--out-proxy") == _flag(outproxy["command"], "--listen")

    def proxy_config(spec: dict[str, Any]) -> Any:
        words = [word.replace(CONFIG_MOUNT, str(config))
                 .replace("/var/lib/fastproxy-center", str(pinned))
                 for word in spec["command"][3:]]
        return parse_config(words)  # exits on a flag the proxy refuses

    peer_ca = (config / "tls/peer-ca.pem").read_bytes()
    inbound, outbound = proxy_config(inproxy), proxy_config(outproxy)
    # mutual TLS between the proxies, with the peers' own CA
    assert inbound.listener_tls is not None and inbound.listener_tls.client_ca == peer_ca
    assert outbound.peer_tls is not None and outbound.peer_tls.ca == peer_ca
    assert outbound.listener_tls is None  # the app beside it speaks plain gRPC
    # the in-proxy's certificate names the host its callers dial (its --advertise)
    cert = x509.load_pem_x509_certificate(inbound.listener_tls.cert)
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    advertised = _flag(inproxy["command"], "--advertise").rpartition(":")[0]
    assert advertised in names.get_values_for_type(x509.DNSName)
    # its health check presents a certificate, as the listener requires
    assert "--tls-cert" in inproxy["healthcheck"]["test"]
