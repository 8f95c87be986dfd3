"""A proxy's three uses of TLS, configured apart (issue 17, point 1), and an out-proxy that
no stranger can call as its service (issue 13, point 7). Real processes on loopback, with
certificates made by `fastproxy certs gen`:

- its credential at the Center (`--center-tls-*`) leaves its listener plaintext, so a plain
  app beside an out-proxy still reaches it;
- mutual TLS between the proxies (`--peer-tls-*`): an in-proxy takes no caller without a
  certificate from the peers' CA, nor one from another trust domain;
- an out-proxy off loopback without client certificates refuses to start, unless told
  `--allow-unauthenticated-apps`; with `--listen-client-ca` only apps with a certificate
  get in.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from conftest import CenterProcess, launch_center
from support.dataplane import (
    CALLEE,
    CALLER,
    SERVING,
    DataplanePolicy,
    Proxies,
    ProxyProcess,
    channel,
    free_address,
)
from support.upstream_app import UNARY, UpstreamProcess

from proxy_svc.config import parse_config

FASTPROXY = (sys.executable, "-m", "fastproxy.cli")


@dataclass(frozen=True)
class Certs:
    folder: Path

    def file(self, name: str) -> str:
        return str(self.folder / name)

    def credentials(self, ca: str, name: str | None = None) -> grpc.ChannelCredentials:
        """TLS verifying with `ca`.pem, presenting `name`.pem if given."""
        root = (self.folder / f"{ca}.pem").read_bytes()
        if name is None:
            return grpc.ssl_channel_credentials(root_certificates=root)
        return grpc.ssl_channel_credentials(
            root_certificates=root, private_key=(self.folder / f"{name}-key.pem").read_bytes(),
            certificate_chain=(self.folder / f"{name}.pem").read_bytes())

    def center(self, name: str) -> tuple[str, ...]:
        return ("--center-tls-ca", self.file("center-ca.pem"),
                "--center-tls-cert", self.file(f"{name}.pem"),
                "--center-tls-key", self.file(f"{name}-key.pem"))

    def peer(self, name: str) -> tuple[str, ...]:
        return ("--peer-tls-cert", self.file(f"{name}.pem"),
                "--peer-tls-key", self.file(f"{name}-key.pem"),
                "--peer-tls-ca", self.file("peer-ca.pem"))


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    folder = tmp_path_factory.mktemp("certs") / "tls"
    done = subprocess.run(
        [*FASTPROXY, "certs", "gen", str(folder), "--center",
         "--node", f"{CALLER}[out]", "--node", f"{CALLEE}[in]",
         "--proxy", f"{CALLEE}@127.0.0.1", "--proxy", CALLER,
         "--listener", f"{CALLER}@127.0.0.1", "--app", "chat_app"],
        capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "proxy-song_service.pem" in done.stdout
    return Certs(folder)


@pytest.fixture(scope="module")
def upstream() -> Iterator[UpstreamProcess]:
    with UpstreamProcess(name="song") as process:
        yield process


@pytest.fixture(scope="module")
def proxies(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxies]:
    proxies = Proxies(tmp_path_factory.mktemp("proxies"))
    try:
        yield proxies
    finally:
        proxies.stop_all()


@dataclass(frozen=True)
class Stack:
    center: CenterProcess
    policy: Path
    inproxy: ProxyProcess


@pytest.fixture(scope="module")
def stack(certs: Certs, upstream: UpstreamProcess, proxies: Proxies,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A Center that knows nodes by their certificates only (no token file), and
    song_service's in-proxy, which requires a certificate from the peers' CA of its callers."""
    folder = tmp_path_factory.mktemp("stack")
    in_address = free_address()
    policy = folder / "policy.yaml"
    policy.write_text(DataplanePolicy(song_endpoints=(in_address,)).yaml_text())
    center = launch_center(
        ["--tls-cert", certs.file("center.pem"), "--tls-key", certs.file("center-key.pem"),
         "--client-ca", certs.file("center-ca.pem"), "--policy", str(policy)],
        folder / "center.log", credentials=certs.credentials("center-ca"))
    try:
        inproxy = proxies.start(
            "in", CALLEE, in_address, wait=False, center=center.address,
            upstream=upstream.address,
            extra=(*certs.center(f"node-{CALLEE}-in"), *certs.peer(f"proxy-{CALLEE}")))
        inproxy.wait_status(SERVING, credentials=certs.credentials("peer-ca",
                                                                   f"proxy-{CALLER}"))
        yield Stack(center, policy, inproxy)
    finally:
        if center.proc.poll() is None:
            assert center.terminate() == 0


def test_an_out_proxy_with_a_certificate_identity_still_serves_a_plain_app(
        certs: Certs, stack: Stack, proxies: Proxies) -> None:
    """`--tls-cert` used to be the proxy's credential at the Center and, at once, TLS on its
    listener requiring client certificates: a plain app could no longer call its own
    out-proxy. Each use has its flags now; the listener stays plaintext by default."""
    out = proxies.start("out", CALLER, free_address(), center=stack.center.address,
                        extra=(*certs.center(f"node-{CALLER}-out"),
                               *certs.peer(f"proxy-{CALLER}")))
    assert "listener plaintext, to in-proxies mutual TLS" in out.log()
    with channel(out.address) as plain_app:
        assert plain_app.unary_unary(UNARY)(b"plain app", timeout=10) == b"plain app"


def test_proxies_speak_mutual_tls_with_certificates_from_certs_gen(
        certs: Certs, stack: Stack, proxies: Proxies) -> None:
    """The in-proxy's listener takes only callers with a certificate from the peers' CA:
    none, a node's certificate for the Center (another CA) and plaintext are all turned
    away in the handshake; so is an out-proxy that speaks plaintext to it."""
    in_address = stack.inproxy.address
    for credentials in (certs.credentials("peer-ca"),
                        certs.credentials("peer-ca", f"node-{CALLER}-out"),
                        None):
        with channel(in_address, credentials) as ch, pytest.raises(grpc.RpcError) as refused:
            ch.unary_unary(UNARY)(b"no peer certificate", timeout=5)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    plain_out = proxies.start("out", CALLER, free_address(), center=stack.center.address,
                              extra=certs.center(f"node-{CALLER}-out"))
    with channel(plain_out.address) as app, pytest.raises(grpc.RpcError) as refused:
        app.unary_unary(UNARY)(b"plaintext between proxies", timeout=5)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert plain_out.terminate() == 0


def run_out_proxy(*flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "proxy_svc", "--role", "out", "--service",
                           CALLER, *flags], capture_output=True, text=True, timeout=60)


def test_an_out_proxy_off_loopback_without_client_authentication_refuses_to_start(
        certs: Certs, stack: Stack, proxies: Proxies) -> None:
    """Issue 13, point 7: an out-proxy signs every call it forwards as its service, so
    whoever reaches it calls as that service. Off loopback it starts only with client
    certificates required, or when told that the network admits only the app."""
    port = free_address().rsplit(":", 1)[1]
    done = run_out_proxy("--listen", f"0.0.0.0:{port}", "--policy", str(stack.policy))
    assert done.returncode == 2
    (line,) = done.stderr.splitlines()
    assert line.startswith(f"proxy_svc: error: refusing to listen on 0.0.0.0:{port} without "
                           f"client authentication: this out-proxy calls as {CALLER}")
    assert "--listen-client-ca" in line and "--allow-unauthenticated-apps" in line
    # TLS without client certificates is no client authentication either
    done = run_out_proxy("--listen", f"0.0.0.0:{port}", "--policy", str(stack.policy),
                         "--listen-tls-cert", certs.file(f"listener-{CALLER}.pem"),
                         "--listen-tls-key", certs.file(f"listener-{CALLER}-key.pem"))
    assert done.returncode == 2 and "refusing to listen" in done.stderr

    allowed = proxies.start("out", CALLER, f"0.0.0.0:{port}", wait=False,
                            policy=stack.policy, extra=("--allow-unauthenticated-apps",
                                                        *certs.peer(f"proxy-{CALLER}")))
    allowed.address = f"127.0.0.1:{port}"
    allowed.wait_status(SERVING)
    assert (f"no client authentication on 0.0.0.0:{port} (--allow-unauthenticated-apps): "
            f"whoever reaches this out-proxy calls as {CALLER}") in allowed.log()
    with channel(allowed.address) as app:
        assert app.unary_unary(UNARY)(b"allowed", timeout=10) == b"allowed"
    assert allowed.terminate() == 0


def test_an_out_proxy_requiring_client_certificates_serves_only_apps_that_have_one(
        certs: Certs, stack: Stack, proxies: Proxies) -> None:
    address = free_address()
    port = address.rsplit(":", 1)[1]
    out = proxies.start("out", CALLER, f"0.0.0.0:{port}", wait=False, policy=stack.policy,
                        extra=("--listen-tls-cert", certs.file(f"listener-{CALLER}.pem"),
                               "--listen-tls-key", certs.file(f"listener-{CALLER}-key.pem"),
                               "--listen-client-ca", certs.file("app-ca.pem"),
                               *certs.peer(f"proxy-{CALLER}")))
    out.address = address
    app = certs.credentials("app-ca", "app-chat_app")
    out.wait_status(SERVING, credentials=app)
    assert "listener TLS, client certificates required" in out.log()
    with channel(address, app) as ch:
        assert ch.unary_unary(UNARY)(b"an app with a certificate", timeout=10) \
            == b"an app with a certificate"
    # a proxy's certificate is no app's: another CA
    for stranger in (certs.credentials("app-ca"),
                     certs.credentials("app-ca", f"proxy-{CALLER}")):
        with channel(address, stranger) as ch, pytest.raises(grpc.RpcError) as refused:
            ch.unary_unary(UNARY)(b"no app certificate", timeout=5)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert out.terminate() == 0


@pytest.mark.parametrize(("flags", "error"), [
    (("--role", "in", "--upstream", "127.0.0.1:1", "--listen-tls-cert", "c.pem",
      "--listen-tls-key", "k.pem"),
     "--listen-tls-cert is for an out-proxy: an in-proxy's listener is where out-proxies "
     "call, secured with --peer-tls-cert, --peer-tls-key and --peer-tls-ca"),
    (("--role", "in", "--upstream", "127.0.0.1:1", "--allow-unauthenticated-apps"),
     "--allow-unauthenticated-apps is for an out-proxy (--role out)"),
    (("--role", "out", "--peer-tls-cert", "c.pem"),
     "--peer-tls-cert, --peer-tls-key and --peer-tls-ca go together (mutual TLS between the "
     "proxies)"),
    (("--role", "out", "--listen-client-ca", "ca.pem"),
     "--listen-tls-cert and --listen-tls-key go together (--listen-client-ca needs them)"),
    (("--role", "out", "--tls-cert", "c.pem", "--tls-key", "k.pem", "--peer-tls-cert",
      "c.pem"),
     "--tls-cert sets the Center's, the listener's and the peers' TLS at once (the older "
     "form): with --peer-tls-cert give each its own flags instead"),
    (("--role", "out", "--tls-ca", "a.pem", "--center-tls-ca", "b.pem"),
     "--tls-ca and --center-tls-ca both name the Center's; give one"),
])
def test_tls_flags_that_do_not_fit_together_are_one_line(
        flags: tuple[str, ...], error: str, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(DataplanePolicy().yaml_text())
    with pytest.raises(SystemExit) as exited:
        parse_config(["--service", CALLER, "--listen", "127.0.0.1:0", "--policy", str(policy),
                      *flags])
    assert exited.value.code == 2
    assert capsys.readouterr().err.splitlines() == [f"proxy_svc: error: {error}"]

