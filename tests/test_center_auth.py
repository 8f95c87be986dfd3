"""Who may talk to the Center: node and admin tokens, TLS client certificates."""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from conftest import CenterProcess, StartCenter
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from support.center_policy import PolicyKeys, apply, parse, policy_yaml

from fastproxy.v1 import center_pb2, policy_pb2

OUT = policy_pb2.ROLE_OUT


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

    def issue(self, common_name: str, *, server: bool = False) -> Issued:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        builder = _builder(subject, self.name, key.public_key()).add_extension(
            x509.BasicConstraints(ca=False, path_length=None), critical=True)
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

    assert rpc_code(latest_revision, center, credentials=rogue_chat) \
        == grpc.StatusCode.UNAVAILABLE  # the handshake fails: no RPC at all
    rogue_watch = center.watch(credentials=rogue_chat).hello("chat-9", OUT, "chat_service")
    assert rogue_watch.final_code() == grpc.StatusCode.UNAVAILABLE
    assert rogue_watch.received == []
    assert latest_revision(center, credentials=admin) == 1
