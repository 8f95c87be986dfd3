"""`fastproxy certs gen`: a CA per trust domain, and certificates carrying the names each
part of FastProxy reads (docs/certificates.md). That they work is shown with real processes
in tests/test_proxy_tls.py and tests/test_docker_compose.py."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fastproxy.cli import main

SERVER, CLIENT = ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def common_name(cert: x509.Certificate) -> str:
    return str(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


def alt_names(cert: x509.Certificate) -> set[str]:
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    return {str(value) for kind in (x509.DNSName, x509.IPAddress, x509.UniformResourceIdentifier)
            for value in names.get_values_for_type(kind)}  # type: ignore[attr-defined]


def usages(cert: x509.Certificate) -> set[x509.ObjectIdentifier]:
    return set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


def test_certs_gen_makes_a_ca_per_trust_domain_and_the_names_each_part_reads(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "tls"
    assert main(["certs", "gen", str(folder), "--center", "center,10.0.0.5",
                 "--node", "chat_service[out,client]", "--node", "song_service",
                 "--admin", "alice[read-secrets]", "--proxy", "song_service@in-proxy",
                 "--listener", "chat_service", "--app", "chat_app", "--etcd", "etcd1",
                 "--etcd-client", "center"]) == 0
    printed = capsys.readouterr().out
    expected = {
        # file: (CA, common name, subject alternative names, usages)
        "center": ("center-ca", "center", {"center", "10.0.0.5"}, {SERVER}),
        "node-chat_service-out-client": ("center-ca", "chat_service",
                                         {"urn:fastproxy:role:out", "urn:fastproxy:role:client"},
                                         {CLIENT}),
        "node-song_service": ("center-ca", "song_service", set(), {CLIENT}),
        "admin-alice": ("center-ca", "admin:alice", {"urn:fastproxy:role:read-secrets"},
                        {CLIENT}),
        "proxy-song_service": ("peer-ca", "song_service", {"in-proxy"}, {SERVER, CLIENT}),
        "listener-chat_service": ("app-ca", "chat_service", {"localhost", "127.0.0.1"},
                                  {SERVER}),
        "app-chat_app": ("app-ca", "chat_app", set(), {CLIENT}),
        "etcd-etcd1": ("etcd-ca", "etcd1", {"etcd1", "localhost", "127.0.0.1"},
                       {SERVER, CLIENT}),
        "etcd-client-center": ("etcd-ca", "center", set(), {CLIENT}),
    }
    for stem, (ca_stem, cn, names, wanted) in expected.items():
        cert, ca = load(folder / f"{stem}.pem"), load(folder / f"{ca_stem}.pem")
        cert.verify_directly_issued_by(ca)  # raises if another CA signed it
        assert (common_name(cert), alt_names(cert), usages(cert)) == (cn, names, wanted), stem
        assert stat.S_IMODE((folder / f"{stem}-key.pem").stat().st_mode) == 0o600
        assert f"{folder / stem}.pem" in printed
    # four domains, four CAs: what one signs means nothing to another
    cas = {stem: load(folder / f"{stem}.pem") for stem in ("center-ca", "peer-ca", "app-ca",
                                                           "etcd-ca")}
    assert len({ca.public_key().public_bytes(*_spki()) for ca in cas.values()}) == 4
    for stem, ca in cas.items():
        assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        assert stat.S_IMODE((folder / f"{stem}-key.pem").stat().st_mode) == 0o600


def _spki() -> tuple[object, object]:
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    return Encoding.DER, PublicFormat.SubjectPublicKeyInfo


def test_certs_gen_reuses_a_ca_it_finds_and_overwrites_nothing(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "tls"
    assert main(["certs", "gen", str(folder), "--node", "chat_service"]) == 0
    ca_before = (folder / "center-ca.pem").read_bytes()
    assert main(["certs", "gen", str(folder), "--node", "song_service"]) == 0
    assert (folder / "center-ca.pem").read_bytes() == ca_before
    load(folder / "node-song_service.pem").verify_directly_issued_by(
        load(folder / "center-ca.pem"))
    capsys.readouterr()
    node_before = (folder / "node-chat_service.pem").read_bytes()
    assert main(["certs", "gen", str(folder), "--admin", "bob", "--node", "chat_service"]) == 1
    assert capsys.readouterr().err.splitlines() == [
        f"fastproxy: {folder / 'node-chat_service.pem'} exists: remove it to make a new one"]
    assert (folder / "node-chat_service.pem").read_bytes() == node_before
    assert not (folder / "admin-bob.pem").exists()  # checked before anything is written


@pytest.mark.parametrize(("flags", "error"), [
    (("--node", "chat_service[inn]"),
     "--node 'chat_service[inn]': unknown role 'inn' (roles: in, out, client, app)"),
    (("--node", "admin:eve"),
     "--node 'admin:eve': a common name admin:NAME is an administrator's (--admin NAME)"),
    (("--admin", "bob[in]"), "--admin 'bob[in]': unknown role 'in' (roles: read-secrets)"),
    (("--proxy", "song service"), "--proxy 'song service': use letters, digits and _ . : -"),
    (("--proxy", "song_service@"), "--proxy 'song_service@': no host after @"),
    (("--node", "a", "--node", "a"), "node-a.pem is asked for twice"),
    ((), "nothing to make: name at least one of --center, --node, --admin, --proxy, "
         "--listener, --app, --etcd, --etcd-client"),
    (("--node", "a", "--days", "0"), "--days must be at least 1"),
])
def test_certs_gen_refuses_a_bad_request_in_one_line(
        flags: tuple[str, ...], error: str, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["certs", "gen", str(tmp_path / "tls"), *flags]) == 1
    assert capsys.readouterr().err.splitlines() == [f"fastproxy: {error}"]
    assert not (tmp_path / "tls").exists()
