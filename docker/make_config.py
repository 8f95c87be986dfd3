"""Writes the configuration docker/compose.yaml and docker/compose-replicas.yaml mount: the
sample policy (the one `fastproxy demo` runs) with its secrets in key files, certificates
(made by the code of `fastproxy certs gen`, one CA per trust domain: the Center and its
clients, the proxies' mutual TLS, etcd), node and admin tokens, and the key-encryption key
the Center seals secrets in its store with.

    python docker/make_config.py docker/config

Run once before `docker compose up`; it refuses to overwrite an existing folder. Nothing it
writes is committed: every deployment makes its own keys. The certificates are those of

    fastproxy certs gen docker/config/tls --center center,center-a,center-b,localhost,127.0.0.1 \
        --proxy song_service@in-proxy,localhost,127.0.0.1 --proxy chat_service \
        --etcd etcd1 --etcd etcd2 --etcd etcd3 --etcd-client center
"""

from __future__ import annotations

import argparse
import base64
import secrets
import sys
from pathlib import Path

from fastproxy.cli.certs import CertRequest, make_certificates
from fastproxy.demo.sample_policy import KEY_TEMPLATES, new_secret, sample_policy

MOUNT = "/etc/fastproxy"  # where compose.yaml mounts the folder
CENTER_REPLICAS = ("center-a", "center-b")  # compose-replicas.yaml's Centers
ETCD_MEMBERS = ("etcd1", "etcd2", "etcd3")  # and its etcd cluster
CERTIFICATES = CertRequest(
    center=("center", *CENTER_REPLICAS, "localhost", "127.0.0.1"),
    # the in-proxy is dialled as in-proxy:9101 (its --advertise); its health check and the
    # loopback test dial 127.0.0.1
    proxies=("song_service@in-proxy,localhost,127.0.0.1", "chat_service"),
    etcd_members=ETCD_MEMBERS,
    etcd_clients=("center",),
)


def _write(path: Path, data: bytes, mode: int = 0o600) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    path.chmod(mode)


def make_config(out: Path, mount: str = MOUNT) -> None:
    """Writes the folder `out`, which the processes will see at `mount`."""
    refs = {name: f"file:{mount}/keys/{name}.key" for name in KEY_TEMPLATES}
    _write(out / "policy.yaml", sample_policy(refs).encode(), 0o644)
    for name in KEY_TEMPLATES:
        _write(out / f"keys/{name}.key", base64.b64encode(new_secret(name)) + b"\n")

    make_certificates(out / "tls", CERTIFICATES)

    tokens = {name: secrets.token_urlsafe(24)
              for name in ("song_service", "chat_service", "admin")}
    # each token bound to the role its node watches as (a stolen one is worth no other)
    _write(out / "node-tokens", (f"song_service[in]: {tokens['song_service']}\n"
                                 f"chat_service[out]: {tokens['chat_service']}\n").encode())
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
