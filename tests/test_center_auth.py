"""Who may talk to the Center: node and admin tokens, TLS client certificates."""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from conftest import CenterProcess, StartCenter, WatchClient, wait_until
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from support.center_policy import PolicyKeys, apply, parse, policy_yaml
from support.dataplane import CALLER, CenterAdmin, DataplanePolicy, Proxies, free_address

from fastproxy.v1 import center_pb2, center_pb2_grpc, policy_pb2

OUT = policy_pb2.ROLE_OUT
IN = policy_pb2.ROLE_IN
CLIENT = policy_pb2.ROLE_CLIENT
APP = policy_pb2.ROLE_APP


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def rpc_code(call: Callable[..., object], *args: object, **kwargs: object) -> grpc.StatusCode:
    """The status code `call(*args, **kwargs)` fails with (the test fails if it succeeds)."""
    with pytest.raises(grpc.RpcError) as refused:
        call(*args, **kwargs)
    code: grpc.StatusCode = refused.value.code()
    return code


def latest_revision(center: CenterProcess, metadata: tuple[tuple[str, str], ...] = (),
                    credentials: grpc.ChannelCredentials | None = None) -> int:
    info = center.stub(credentials).GetCenterInfo(center_pb2.GetCenterInfoRequest(),
                                                  timeout=5, metadata=metadata)
    revision: int = info.latest_revision
    return revision


# -- tokens ----------------------------------------------------------------------------------


@pytest.fixture
def token_center(start_center: StartCenter, tmp_path: Path) -> CenterProcess:
    node_tokens = tmp_path / "node-tokens"
    node_tokens.write_text("# service: token\nchat_service: chat-token\n"
                           "song_service: song-token\n")
    admin_tokens = tmp_path / "admin-tokens"
    admin_tokens.write_text("alice: alice-token\n")
    center = start_center("--node-tokens", str(node_tokens), "--admin-tokens",
                          str(admin_tokens))
    response = apply(center.stub(), policy_yaml(PolicyKeys()), metadata=bearer("alice-token"))
    assert response.applied
    return center


def test_a_token_that_names_no_role_is_warned_about_at_start_and_on_reload(
        start_center: StartCenter, tmp_path: Path) -> None:
    """A plain `service: token` line still lets its holder watch in every role (as before);
    the Center says so, naming the line, so that an app's token is not also an out-proxy's."""
    node_tokens = tmp_path / "node-tokens"
    node_tokens.write_text("chat_service: chat-token\nsong_service[in]: song-token\n")
    center = start_center("--node-tokens", str(node_tokens), "--policy-poll", "0.1")
    warning = (f"{node_tokens}:1: the token of 'chat_service' lets its holder watch in every "
               "role (app, client, in, out); name the roles each holder needs, e.g. "
               "'chat_service[in]: TOKEN' for an in-proxy")
    assert warning in center.log()
    assert "song_service' lets" not in center.log() and "chat-token" not in center.log()
    node_tokens.write_text("song_service[in]: song-token\nweather_service: weather-token\n")
    wait_until(lambda: f"{node_tokens}:2: the token of 'weather_service' lets" in center.log(),
               10, what="the reloaded file's warning")


def test_a_node_token_watches_as_its_own_service_only(token_center: CenterProcess) -> None:
    center = token_center
    chat = center.watch(bearer("chat-token")).hello("chat-1", OUT, "chat_service")
    assert parse(chat.next_snapshot()).node_service == "chat_service"

    as_song = center.watch(bearer("chat-token")).hello("chat-1", OUT, "song_service")
    assert as_song.final_code() == grpc.StatusCode.PERMISSION_DENIED
    assert as_song.received == []
    for metadata in (bearer("wrong-token"), ()):
        stranger = center.watch(metadata).hello("x-1", OUT, "chat_service")
        assert stranger.final_code() == grpc.StatusCode.UNAUTHENTICATED
        assert stranger.received == []
    admin = center.watch(bearer("alice-token")).hello("a-1", OUT, "chat_service")
    assert admin.final_code() == grpc.StatusCode.PERMISSION_DENIED


def test_a_token_bound_to_the_app_role_is_refused_every_role_that_receives_keys(
        start_center: StartCenter, tmp_path: Path) -> None:
    """Issue 13, point 3: one token, every role. An app's SDK token (`service[app]`) may
    watch as `app` only, whose snapshot holds no key; `service: token` keeps every role."""
    node_tokens = tmp_path / "node-tokens"
    node_tokens.write_text("chat_service[app]: chat-app-token\n"
                           "chat_service[out, client]: chat-out-token\n"
                           "song_service: song-token\n")
    admin_tokens = tmp_path / "admin-tokens"
    admin_tokens.write_text("alice: alice-token\n")
    center = start_center("--node-tokens", str(node_tokens), "--admin-tokens",
                          str(admin_tokens))
    assert apply(center.stub(), policy_yaml(PolicyKeys()),
                 metadata=bearer("alice-token")).applied

    app = center.watch(bearer("chat-app-token")).hello("app-1", APP, "chat_service")
    app_view = parse(app.next_snapshot())
    assert app_view.role == APP and not app_view.keys
    for role in (OUT, CLIENT, IN):
        refused = center.watch(bearer("chat-app-token")).hello("app-1", role, "chat_service")
        assert refused.final_code() == grpc.StatusCode.PERMISSION_DENIED
        assert refused.received == []
        assert refused.error is not None
        assert "may not watch as role" in refused.error.details()
    out = center.watch(bearer("chat-out-token")).hello("out-1", CLIENT, "chat_service")
    assert parse(out.next_snapshot()).keys
    out_as_in = center.watch(bearer("chat-out-token")).hello("out-1", IN, "chat_service")
    assert out_as_in.final_code() == grpc.StatusCode.PERMISSION_DENIED
    for role in (IN, OUT, CLIENT, APP):  # no brackets: every role, as before
        song = center.watch(bearer("song-token")).hello("song-1", role, "song_service")
        assert parse(song.next_snapshot()).node_service == "song_service"
    log = center.log()
    assert "watch refused from ipv4:127.0.0.1:" in log
    assert "node:chat_service may not watch as role out (its credential allows app)" in log
    assert "chat-app-token" not in log


def test_refused_watches_are_logged_with_the_peer_and_the_reason_never_the_token(
        token_center: CenterProcess) -> None:
    center = token_center
    for metadata in (bearer("a-guessed-token"), ()):
        refused = center.watch(metadata).hello("x-1", OUT, "chat_service")
        assert refused.final_code() == grpc.StatusCode.UNAUTHENTICATED
    log = center.log()
    assert "watch refused from ipv4:127.0.0.1:" in log
    assert ": unknown token" in log
    assert ": no bearer token and no client certificate" in log
    assert "a-guessed-token" not in log


@pytest.mark.parametrize(("line", "error"), [
    ("chat_service[inn]: t", "unknown role 'inn' (roles: app, client, in, out)"),
    ("chat_service[in: t", "expected 'name[role,role]: token'"),
    ("just-a-name", "expected 'name: token' or 'name[roles]: token'"),
    ("a: same-token\nb: same-token", "the token of 'b' is already listed at"),
])
def test_a_bad_token_file_stops_the_center_with_one_line_naming_file_and_line(
        tmp_path: Path, line: str, error: str) -> None:
    tokens = tmp_path / "node-tokens"
    tokens.write_text(f"# nodes\n{line}\n")
    done = subprocess.run([sys.executable, "-m", "center_svc", "--store", "memory://",
                           "--node-tokens", str(tokens)], capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 2
    (printed,) = done.stderr.splitlines()
    assert printed.startswith(f"center_svc: error: {tokens}:")
    assert error in printed
    assert "same-token" not in printed


def test_token_files_are_read_again_when_they_change(start_center: StartCenter,
                                                      tmp_path: Path) -> None:
    """Issue 17: a new service's nodes get in without a restart; a token removed ends the
    streams it opened; a broken edit keeps the tokens in force."""
    node_tokens = tmp_path / "node-tokens"
    node_tokens.write_text("chat_service: chat-token\n")
    admin_tokens = tmp_path / "admin-tokens"
    admin_tokens.write_text("alice: alice-token\n")
    center = start_center("--node-tokens", str(node_tokens), "--admin-tokens",
                          str(admin_tokens), "--policy-poll", "0.1")
    assert apply(center.stub(), policy_yaml(PolicyKeys()),
                 metadata=bearer("alice-token")).applied
    chat = center.watch(bearer("chat-token")).hello("chat-1", OUT, "chat_service")
    chat.next_snapshot()
    early = center.watch(bearer("song-token")).hello("song-1", IN, "song_service")
    assert early.final_code() == grpc.StatusCode.UNAUTHENTICATED

    node_tokens.write_text("song_service: song-token\n")

    def song_watches() -> bool:
        song = center.watch(bearer("song-token")).hello("song-1", IN, "song_service")
        wait_until(lambda: song.received or song.ended.is_set(), 5, what="an answer")
        return bool(song.received)

    wait_until(song_watches, 10, what="the new song_service token to be taken")
    assert chat.final_code() == grpc.StatusCode.UNAUTHENTICATED
    assert chat.error is not None
    assert "credential revoked: its token is no longer listed" in chat.error.details()

    node_tokens.write_text("song_service: song-token\nbroken line\n")
    wait_until(lambda: "token file refused; the tokens in force stay" in center.log(), 10,
               what="the broken token file to be refused")
    still = center.watch(bearer("song-token")).hello("song-2", IN, "song_service")
    assert parse(still.next_snapshot()).node_service == "song_service"
    assert "song-token" not in center.log()


def test_a_proxy_refused_for_its_token_gets_in_once_the_token_file_lists_it(
        start_center: StartCenter, tmp_path: Path) -> None:
    """Issue 17: a new service's proxy needs no Center restart, nor one of its own."""
    node_tokens = tmp_path / "node-tokens"
    node_tokens.write_text("# no node yet\n")
    admin_tokens = tmp_path / "admin-tokens"
    admin_tokens.write_text("alice: alice-token\n")
    center = start_center("--node-tokens", str(node_tokens), "--admin-tokens",
                          str(admin_tokens), "--policy-poll", "0.1")
    admin = CenterAdmin(center.address, bearer("alice-token"))
    revision = admin.apply(DataplanePolicy())
    proxies = Proxies(tmp_path)
    try:
        proxy = proxies.start("out", CALLER, free_address(), wait=False,
                              center=center.address,
                              extra=("--node-id", "chat-out", "--token", "chat-token"))
        wait_until(lambda: "refused this node's credential" in proxy.log(), 15,
                   what="the proxy to be refused")
        assert "watch refused from ipv4:127.0.0.1:" in center.log()
        node_tokens.write_text("chat_service[out]: chat-token\n")
        admin.wait_acked(["chat-out"], revision, timeout=20)
        assert proxy.log().count("refused this node's credential") == 1
    finally:
        proxies.stop_all()


def test_admin_rpcs_need_an_admin_token_and_a_refused_apply_changes_nothing(
        token_center: CenterProcess) -> None:
    center = token_center
    stub = center.stub()
    other = policy_yaml(PolicyKeys())
    for metadata, expected in ((bearer("chat-token"), grpc.StatusCode.PERMISSION_DENIED),
                               ((), grpc.StatusCode.UNAUTHENTICATED),
                               (bearer("wrong-token"), grpc.StatusCode.UNAUTHENTICATED)):
        assert rpc_code(apply, stub, other, metadata=metadata) == expected
        assert rpc_code(stub.RollbackPolicy, center_pb2.RollbackPolicyRequest(revision=1),
                        timeout=5, metadata=metadata) == expected
        for method, request in ((stub.GetPolicy, center_pb2.GetPolicyRequest()),
                                (stub.ListRevisions, center_pb2.ListRevisionsRequest()),
                                (stub.ListNodes, center_pb2.ListNodesRequest())):
            assert rpc_code(method, request, timeout=5, metadata=metadata) == expected
    assert latest_revision(center) == 1
    history = stub.ListRevisions(center_pb2.ListRevisionsRequest(), timeout=5,
                                 metadata=bearer("alice-token"))
    assert [r.revision for r in history.revisions] == [1]


# -- TLS client certificates -----------------------------------------------------------------


@dataclass(frozen=True)
class Issued:
    key_pem: bytes
    cert_pem: bytes


class TestCA:
    """A throwaway certificate authority."""

    __test__ = False

    def __init__(self, name: str) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        self.name = subject
        self.cert = (
            _builder(subject, subject, self.key.public_key())
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.cert_pem = self.cert.public_bytes(serialization.Encoding.PEM)

    def issue(self, common_name: str, *, server: bool = False,
              roles: tuple[str, ...] = ()) -> Issued:
        """A certificate for `common_name`; `roles` become `urn:fastproxy:role:ROLE` URI
        subject alternative names."""
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        builder = _builder(subject, self.name, key.public_key()).add_extension(
            x509.BasicConstraints(ca=False, path_length=None), critical=True)
        if roles:
            builder = builder.add_extension(x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(f"urn:fastproxy:role:{role}")
                 for role in roles]), critical=False)
        if server:
            builder = builder.add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            usage = ExtendedKeyUsageOID.SERVER_AUTH
        else:
            usage = ExtendedKeyUsageOID.CLIENT_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        return Issued(
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()),
            cert.public_bytes(serialization.Encoding.PEM),
        )


def _builder(subject: x509.Name, issuer: x509.Name,
             public_key: ec.EllipticCurvePublicKey) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
            .public_key(public_key).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=1)))


def test_tls_client_certificates_name_the_service_or_the_admin(
        start_center: StartCenter, tmp_path: Path) -> None:
    ca, rogue_ca = TestCA("fastproxy test CA"), TestCA("rogue CA")
    server = ca.issue("center", server=True)
    files = {"server.pem": server.cert_pem, "server.key": server.key_pem,
             "ca.pem": ca.cert_pem}
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)

    def client(issued: Issued) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(root_certificates=ca.cert_pem,
                                            private_key=issued.key_pem,
                                            certificate_chain=issued.cert_pem)

    admin = client(ca.issue("admin:alice"))
    chat = client(ca.issue("chat_service"))
    chat_app = client(ca.issue("chat_service", roles=("app",)))
    rogue_chat = client(rogue_ca.issue("chat_service"))
    center = start_center("--tls-cert", str(tmp_path / "server.pem"),
                          "--tls-key", str(tmp_path / "server.key"),
                          "--client-ca", str(tmp_path / "ca.pem"), credentials=admin)

    assert apply(center.stub(admin), policy_yaml(PolicyKeys())).applied
    assert rpc_code(apply, center.stub(chat), policy_yaml(PolicyKeys())) \
        == grpc.StatusCode.PERMISSION_DENIED

    watcher = center.watch(credentials=chat).hello("chat-1", OUT, "chat_service")
    assert parse(watcher.next_snapshot()).node_service == "chat_service"
    as_song = center.watch(credentials=chat).hello("chat-1", OUT, "song_service")
    assert as_song.final_code() == grpc.StatusCode.PERMISSION_DENIED
    assert as_song.received == []
    # a certificate naming its roles (URI SAN urn:fastproxy:role:app) is held to them
    app = center.watch(credentials=chat_app).hello("chat-app", APP, "chat_service")
    assert parse(app.next_snapshot()).role == APP
    app_as_out = center.watch(credentials=chat_app).hello("chat-app", OUT, "chat_service")
    assert app_as_out.final_code() == grpc.StatusCode.PERMISSION_DENIED
    assert app_as_out.received == []

    assert rpc_code(latest_revision, center, credentials=rogue_chat) \
        == grpc.StatusCode.UNAVAILABLE  # the handshake fails: no RPC at all
    rogue_watch = center.watch(credentials=rogue_chat).hello("chat-9", OUT, "chat_service")
    assert rogue_watch.final_code() == grpc.StatusCode.UNAVAILABLE
    assert rogue_watch.received == []
    assert latest_revision(center, credentials=admin) == 1


# -- one TLS listener for tokens and certificates (issue 17, point 1) ------------------------


@dataclass(frozen=True)
class MixedCenter:
    center: CenterProcess
    ca: TestCA
    files: Path  # ca.pem, rogue.pem, rogue.key

    def tls(self, issued: Issued | None = None) -> grpc.ChannelCredentials:
        """TLS verifying the Center; with `issued`'s client certificate, or none."""
        if issued is None:
            return grpc.ssl_channel_credentials(root_certificates=self.ca.cert_pem)
        return grpc.ssl_channel_credentials(root_certificates=self.ca.cert_pem,
                                            private_key=issued.key_pem,
                                            certificate_chain=issued.cert_pem)


@pytest.fixture
def mixed_center(start_center: StartCenter, tmp_path: Path) -> MixedCenter:
    """A Center with --client-ca and token files: certificates asked for, not required."""
    ca, rogue_ca = TestCA("fastproxy test CA"), TestCA("rogue CA")
    server, rogue = ca.issue("center", server=True), rogue_ca.issue("admin:mallory")
    for name, content in {"server.pem": server.cert_pem, "server.key": server.key_pem,
                          "ca.pem": ca.cert_pem, "rogue.pem": rogue.cert_pem,
                          "rogue.key": rogue.key_pem}.items():
        (tmp_path / name).write_bytes(content)
    (tmp_path / "node-tokens").write_text("chat_service[out]: chat-token\n")
    (tmp_path / "admin-tokens").write_text("alice: alice-token\n")
    center = start_center(
        "--tls-cert", str(tmp_path / "server.pem"), "--tls-key", str(tmp_path / "server.key"),
        "--client-ca", str(tmp_path / "ca.pem"), "--node-tokens", str(tmp_path / "node-tokens"),
        "--admin-tokens", str(tmp_path / "admin-tokens"),
        # the health check itself carries no client certificate
        credentials=grpc.ssl_channel_credentials(root_certificates=ca.cert_pem))
    return MixedCenter(center, ca, tmp_path)


def test_one_tls_listener_takes_token_clients_and_certificate_clients(
        mixed_center: MixedCenter) -> None:
    """Issue 17, point 1: with --client-ca the Center used to require a certificate of
    everyone, and a token client failed with `Socket closed`. Now a certificate is asked
    for, not required, and each call is authenticated by what it carries."""
    center, tls = mixed_center.center, mixed_center.tls
    bob = tls(mixed_center.ca.issue("admin:bob"))
    song = tls(mixed_center.ca.issue("song_service", roles=("in",)))

    # administrators: one by token, one by certificate, on the same address
    assert apply(center.stub(tls()), policy_yaml(PolicyKeys()),
                 metadata=bearer("alice-token")).applied
    history = center.stub(bob).ListRevisions(center_pb2.ListRevisionsRequest(), timeout=5)
    assert [r.revision for r in history.revisions] == [1]
    # nodes: one by token, one by certificate
    chat_watch = center.watch(bearer("chat-token"), credentials=tls()).hello(
        "chat-1", OUT, "chat_service")
    assert parse(chat_watch.next_snapshot()).node_service == "chat_service"
    song_watch = center.watch(credentials=song).hello("song-1", IN, "song_service")
    assert parse(song_watch.next_snapshot()).node_service == "song_service"
    # each is held to its own credential's roles
    song_as_out = center.watch(credentials=song).hello("song-2", OUT, "song_service")
    assert song_as_out.final_code() == grpc.StatusCode.PERMISSION_DENIED
    chat_as_in = center.watch(bearer("chat-token"), credentials=tls()).hello(
        "chat-2", IN, "chat_service")
    assert chat_as_in.final_code() == grpc.StatusCode.PERMISSION_DENIED
    # with neither, the refusal says what is missing
    stranger = center.watch(credentials=tls()).hello("x-1", OUT, "chat_service")
    assert stranger.final_code() == grpc.StatusCode.UNAUTHENTICATED
    assert stranger.error is not None
    assert stranger.error.details() == ("no valid node credential: no bearer token and no "
                                        "client certificate")
    # the Center sees its clients' own addresses, not its TLS listener's
    nodes = center.stub(bob).ListNodes(center_pb2.ListNodesRequest(), timeout=5).nodes
    inner = _inner_port(center)
    assert {node.node_id for node in nodes} == {"chat-1", "song-1"}
    for node in nodes:
        assert node.peer.startswith("ipv4:127.0.0.1:")
        client_port = int(node.peer.rsplit(":", 1)[1])
        assert client_port not in (inner, int(center.address.rsplit(":", 1)[1]))


def _inner_port(center: CenterProcess) -> int:
    found = re.search(r"behind the TLS listener is on 127\.0\.0\.1:(\d+)", center.log())
    assert found, center.log()
    return int(found.group(1))


def test_the_grpc_port_behind_the_tls_listener_takes_no_call_but_through_it(
        mixed_center: MixedCenter) -> None:
    """The Center's gRPC server listens on a loopback port behind the TLS listener; a
    local process that dials it directly, with a valid token even, is refused: nothing
    there can borrow a certificate the listener vouched for."""
    center = mixed_center.center
    inner = f"127.0.0.1:{_inner_port(center)}"
    with grpc.insecure_channel(inner) as direct:
        stub = center_pb2_grpc.CenterStub(direct)
        with pytest.raises(grpc.RpcError) as refused:
            stub.ListRevisions(center_pb2.ListRevisionsRequest(), timeout=5,
                               metadata=bearer("alice-token"))
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "did not come through the Center's TLS listener" in refused.value.details()
    watcher = WatchClient(grpc.insecure_channel(inner), bearer("chat-token"))
    center.watchers.append(watcher)
    assert watcher.hello("chat-1", OUT, "chat_service").final_code() \
        == grpc.StatusCode.UNAUTHENTICATED


def test_a_client_the_center_refuses_is_told_why_in_one_line(
        mixed_center: MixedCenter, tmp_path: Path) -> None:
    """A certificate the Center does not accept ends the TLS handshake: the client says so
    in one line (it used to print gRPC's `Socket closed`), and the Center's log names the
    reason. A call with no credential at all is told what is missing."""
    center, files = mixed_center.center, mixed_center.files
    env = {key: value for key, value in os.environ.items()
           if key not in ("GRPC_VERBOSITY", "FASTPROXY_ADMIN_TOKEN")}

    def cli(*flags: str) -> list[str]:
        done = subprocess.run([sys.executable, "-m", "fastproxy.cli", "nodes", "--center",
                               center.address, "--tls-ca", str(files / "ca.pem"), *flags],
                              capture_output=True, text=True, timeout=30, env=env)
        assert done.returncode == 1 and done.stdout == "", done
        return done.stderr.splitlines()

    (line,) = cli("--tls-cert", str(files / "rogue.pem"), "--tls-key", str(files / "rogue.key"))
    assert line.startswith(f"fastproxy: cannot reach the Center at {center.address}: the "
                           "Center refused this client certificate in the TLS handshake: is "
                           "it signed by the Center's --client-ca"), line
    wait_until(lambda: "client certificate refused: unable to get local issuer certificate"
               in center.log(), 5, what="the Center to log the reason")
    assert re.search(r"TLS handshake from ipv4:127\.0\.0\.1:\d+ failed: client certificate "
                     "refused", center.log())
    (line,) = cli()
    assert line == (f"fastproxy: the Center at {center.address} refused the credential: "
                    "unauthenticated (no --token or client certificate; FASTPROXY_ADMIN_TOKEN "
                    "is not set): no valid credential: no bearer token and no client "
                    "certificate")

    # a node: one error line in its log, however often it retries
    proxies = Proxies(tmp_path)
    try:
        proxy = proxies.start("out", CALLER, free_address(), wait=False, center=center.address,
                              extra=("--center-tls-ca", str(files / "ca.pem"),
                                     "--center-tls-cert", str(files / "rogue.pem"),
                                     "--center-tls-key", str(files / "rogue.key")))
        wait_until(lambda: proxy.log().count("TLS handshake") and
                   center.log().count("client certificate refused") >= 3, 20,
                   what="the proxy to retry")
        assert proxy.log().count(
            f"center {center.address} refused this node's credential ({CALLER}, role out): "
            "the Center refused this client certificate in the TLS handshake") == 1, \
            proxy.log()
    finally:
        for started in proxies.started:
            started.kill()
