"""Writes the configuration docker/compose.yaml and docker/compose-replicas.yaml mount: the
sample policy (the one `fastproxy demo` runs) with its secrets in key files, a CA with
certificates for the Center (and its replicas), for the etcd members and for the Centers as
etcd's clients, node and admin tokens, and the key-encryption key the Center seals secrets in
its store with.

    python docker/make_config.py docker/config

Run once before `docker compose up`; it refuses to overwrite an existing folder. Nothing it
writes is committed: every deployment makes its own keys.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import ipaddress
import secrets
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fastproxy.demo.sample_policy import KEY_TEMPLATES, new_secret, sample_policy

MOUNT = "/etc/fastproxy"  # where compose.yaml mounts the folder
CENTER_REPLICAS = ("center-a", "center-b")  # compose-replicas.yaml's Centers
ETCD_MEMBERS = ("etcd1", "etcd2", "etcd3")  # and its etcd cluster


def _write(path: Path, data: bytes, mode: int = 0o600) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    path.chmod(mode)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _certificate(common_name: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Name,
                 signer: ec.EllipticCurvePrivateKey, *, ca: bool,
                 dns: tuple[str, ...] = (), ips: tuple[str, ...] = ()) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
               .issuer_name(issuer)
               .public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=365))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    names: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
    names += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(signer, hashes.SHA256())


def make_config(out: Path, mount: str = MOUNT) -> None:
    """Writes the folder `out`, which the processes will see at `mount`."""
    refs = {name: f"file:{mount}/keys/{name}.key" for name in KEY_TEMPLATES}
    _write(out / "policy.yaml", sample_policy(refs).encode(), 0o644)
    for name in KEY_TEMPLATES:
        _write(out / f"keys/{name}.key", base64.b64encode(new_secret(name)) + b"\n")

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fastproxy-demo-ca")])
    ca = _certificate("fastproxy-demo-ca", ca_key, ca_name, ca_key, ca=True)
    center_key = ec.generate_private_key(ec.SECP256R1())
    center = _certificate("center", center_key, ca_name, ca_key, ca=False,
                          dns=("center", *CENTER_REPLICAS, "localhost"), ips=("127.0.0.1",))
    _write(out / "tls/ca.pem", ca.public_bytes(serialization.Encoding.PEM), 0o644)
    _write(out / "tls/center.pem", center.public_bytes(serialization.Encoding.PEM), 0o644)
    _write(out / "tls/center-key.pem", _pem_key(center_key))
    # etcd: each member's certificate serves clients and its peers; the Centers prove
    # themselves to etcd with a client certificate of their own (etcd's --client-cert-auth)
    for name, common_name, dns in (
            *((member, member, (member, "localhost")) for member in ETCD_MEMBERS),
            ("center-etcd-client", "fastproxy-center", ())):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _certificate(common_name, key, ca_name, ca_key, ca=False, dns=dns,
                            ips=("127.0.0.1",) if dns else ())
        _write(out / f"tls/{name}.pem", cert.public_bytes(serialization.Encoding.PEM), 0o644)
        _write(out / f"tls/{name}-key.pem", _pem_key(key))

    tokens = {name: secrets.token_urlsafe(24)
              for name in ("song_service", "chat_service", "admin")}
    _write(out / "node-tokens", (f"song_service: {tokens['song_service']}\n"
                                 f"chat_service: {tokens['chat_service']}\n").encode())
    _write(out / "admin-tokens", f"admin: {tokens['admin']}\n".encode())
    for env_name, token in (("song.env", tokens["song_service"]),
                            ("chat.env", tokens["chat_service"])):
        _write(out / env_name, f"FASTPROXY_TOKEN={token}\n".encode())
    _write(out / "admin.env", f"FASTPROXY_ADMIN_TOKEN={tokens['admin']}\n".encode())
    _write(out / "kek", base64.b64encode(secrets.token_bytes(32)) + b"\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    args = parser.parse_args()
    if args.folder.exists() and any(args.folder.iterdir()):
        print(f"make_config: error: {args.folder} exists and is not empty", file=sys.stderr)
        return 2
    make_config(args.folder)
    print(f"wrote {args.folder}: policy.yaml, keys/, tls/, node-tokens, admin-tokens, kek, "
          "*.env")
    return 0


if __name__ == "__main__":
    sys.exit(main())
