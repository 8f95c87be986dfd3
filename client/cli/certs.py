"""`fastproxy certs gen DIR ...`: a working set of certificates for every part of FastProxy
(docs/certificates.md), and the code `docker/make_config.py` makes its own with.

Each trust domain has a CA of its own, so that a certificate made for one purpose is worth
nothing for another (a proxy's certificate is no credential at the Center, a node's none
at etcd):

- `center-ca.pem` signs the Center's server certificate (`center.pem`) and the client
  certificates of nodes and administrators (`node-*.pem`, `admin-*.pem`); nodes and the CLI
  verify the Center with it (`--center-tls-ca`, `--tls-ca`), the Center its clients
  (`--client-ca`).
- `peer-ca.pem` signs the proxies' certificates (`proxy-*.pem`) for mutual TLS between
  them (`--peer-tls-ca`).
- `app-ca.pem` signs an out-proxy's listener certificate (`listener-*.pem`) and apps' client
  certificates (`app-*.pem`; the out-proxy's `--listen-client-ca`).
- `etcd-ca.pem` signs the etcd members' certificates (`etcd-*.pem`) and the Centers' client
  certificates at etcd (`etcd-client-*.pem`; etcd's `--trusted-ca-file`, the Centers'
  `--etcd-ca`).

A CA whose files are already in DIR is used again (so more certificates can be made
later); no other file is overwritten. Keys are EC P-256, written 0600.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

ROLE_URI_PREFIX = "urn:fastproxy:role:"  # read by center_svc/auth.py
NODE_ROLES = ("in", "out", "client", "app")
ADMIN_ROLES = ("read-secrets",)
LOOPBACK_HOSTS = ("localhost", "127.0.0.1")
DEFAULT_DAYS = 365
_NAME = re.compile(r"^[A-Za-z0-9_.:-]+$")


class CertError(ValueError):
    """A request that cannot be made: a bad name, or a file that already exists."""


@dataclass(frozen=True, slots=True)
class Domain:
    """A trust domain: its CA's file stem and what the CA is called inside it."""

    stem: str
    common_name: str


CENTER = Domain("center-ca", "FastProxy Center CA")
PEER = Domain("peer-ca", "FastProxy proxies CA")
APP = Domain("app-ca", "FastProxy apps CA")
ETCD = Domain("etcd-ca", "FastProxy etcd CA")


@dataclass(frozen=True, slots=True)
class Leaf:
    """One certificate to make: files `stem.pem` and `stem-key.pem`."""

    domain: Domain
    stem: str
    common_name: str
    what: str  # for the summary line
    hosts: tuple[str, ...] = ()  # DNS names and IP addresses (subject alternative names)
    uris: tuple[str, ...] = ()
    server: bool = False
    client: bool = False


@dataclass(frozen=True, slots=True)
class CertRequest:
    """What to make; each string as on the command line (see `build_leaves`)."""

    center: tuple[str, ...] | None = None  # the Center's host names and addresses
    nodes: tuple[str, ...] = ()  # SERVICE or SERVICE[ROLE,...]
    admins: tuple[str, ...] = ()  # NAME or NAME[read-secrets]
    proxies: tuple[str, ...] = ()  # SERVICE or SERVICE@HOST,HOST
    listeners: tuple[str, ...] = ()  # SERVICE or SERVICE@HOST,HOST
    apps: tuple[str, ...] = ()  # NAME
    etcd_members: tuple[str, ...] = ()  # MEMBER or MEMBER@HOST,HOST
    etcd_clients: tuple[str, ...] = ()  # NAME
    days: int = DEFAULT_DAYS


@dataclass(frozen=True, slots=True)
class Written:
    path: Path
    what: str
    made_ca: bool = False


def _name(value: str, what: str) -> str:
    if not _NAME.match(value):
        raise CertError(f"{what} {value!r}: use letters, digits and _ . : -")
    return value


def _with_roles(spec: str, allowed: Sequence[str], what: str) -> tuple[str, tuple[str, ...]]:
    """`NAME` or `NAME[ROLE,ROLE]`, as in the Center's token files."""
    name, bracket, rest = spec.partition("[")
    if not bracket:
        return _name(name.strip(), what), ()
    if not rest.endswith("]"):
        raise CertError(f"{what} {spec!r}: expected NAME[ROLE,ROLE]")
    roles = tuple(role.strip() for role in rest[:-1].split(","))
    unknown = [role for role in roles if role not in allowed]
    if unknown or not roles:
        raise CertError(f"{what} {spec!r}: unknown role {unknown[0] if unknown else ''!r} "
                        f"(roles: {', '.join(allowed)})")
    return _name(name.strip(), what), roles


def _with_hosts(spec: str, what: str, default: tuple[str, ...]) -> tuple[str, tuple[str, ...]]:
    """`NAME` or `NAME@HOST,HOST` (the names and addresses it is dialled at)."""
    name, at, hosts = spec.partition("@")
    found = tuple(host.strip() for host in hosts.split(",") if host.strip()) if at else default
    if at and not found:
        raise CertError(f"{what} {spec!r}: no host after @")
    for host in found:
        _name(host, f"{what} {name} host")
    return _name(name.strip(), what), found


def build_leaves(request: CertRequest) -> list[Leaf]:
    """The certificates `request` asks for; raises CertError on a bad name or role."""
    leaves: list[Leaf] = []
    if request.center is not None:
        hosts = tuple(_name(host, "--center host") for host in request.center)
        leaves.append(Leaf(CENTER, "center", "center", "the Center's server certificate",
                           hosts or LOOPBACK_HOSTS, server=True))
    for spec in request.nodes:
        service, roles = _with_roles(spec, NODE_ROLES, "--node")
        if service.startswith("admin:"):
            raise CertError(f"--node {spec!r}: a common name admin:NAME is an administrator's "
                            "(--admin NAME)")
        leaves.append(Leaf(CENTER, "-".join(("node", service, *roles)), service,
                           f"node of {service} at the Center, "
                           f"{'roles ' + ', '.join(roles) if roles else 'every role'}",
                           uris=tuple(ROLE_URI_PREFIX + role for role in roles), client=True))
    for spec in request.admins:
        name, roles = _with_roles(spec, ADMIN_ROLES, "--admin")
        leaves.append(Leaf(CENTER, f"admin-{name}", f"admin:{name}",
                           f"administrator {name}{' (read-secrets)' if roles else ''}",
                           uris=tuple(ROLE_URI_PREFIX + role for role in roles), client=True))
    for spec in request.proxies:
        service, hosts = _with_hosts(spec, "--proxy", LOOPBACK_HOSTS)
        leaves.append(Leaf(PEER, f"proxy-{service}", service,
                           f"{service}'s proxies, mutual TLS between proxies", hosts,
                           server=True, client=True))
    for spec in request.listeners:
        service, hosts = _with_hosts(spec, "--listener", LOOPBACK_HOSTS)
        leaves.append(Leaf(APP, f"listener-{service}", service,
                           f"{service}'s out-proxy listener, for apps", hosts, server=True))
    for spec in request.apps:
        name = _name(spec, "--app")
        leaves.append(Leaf(APP, f"app-{name}", name, f"app {name}, at its out-proxy",
                           client=True))
    for spec in request.etcd_members:
        member, hosts = _with_hosts(spec, "--etcd", (spec.partition("@")[0], *LOOPBACK_HOSTS))
        leaves.append(Leaf(ETCD, f"etcd-{member}", member, f"etcd member {member}", hosts,
                           server=True, client=True))
    for spec in request.etcd_clients:
        name = _name(spec, "--etcd-client")
        leaves.append(Leaf(ETCD, f"etcd-client-{name}", name, f"{name} as etcd's client",
                           client=True))
    stems = [leaf.stem for leaf in leaves]
    for stem in stems:
        if stems.count(stem) > 1:
            raise CertError(f"{stem}.pem is asked for twice")
    return leaves


@dataclass
class _Authority:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate
    made: bool = False


@dataclass
class _Plan:
    folder: Path
    days: int
    authorities: dict[str, _Authority] = field(default_factory=dict)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _validity(days: int) -> tuple[datetime.datetime, datetime.datetime]:
    now = datetime.datetime.now(datetime.UTC)
    return now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=days)


def _subject_names(hosts: Iterable[str], uris: Iterable[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    names += [x509.UniformResourceIdentifier(uri) for uri in uris]
    return names


def _new_authority(domain: Domain, days: int) -> _Authority:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, domain.common_name)])
    start, end = _validity(days)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False,
                                         decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .sign(key, hashes.SHA256()))
    return _Authority(key, cert, made=True)


def _load_authority(folder: Path, domain: Domain) -> _Authority | None:
    cert_path, key_path = folder / f"{domain.stem}.pem", folder / f"{domain.stem}-key.pem"
    if not cert_path.exists() and not key_path.exists():
        return None
    if not (cert_path.exists() and key_path.exists()):
        raise CertError(f"{folder}: {cert_path.name} and {key_path.name} go together (one is "
                        "missing)")
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        raise CertError(f"{cert_path}: cannot be used as a CA ({exc})") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CertError(f"{key_path}: not an EC key")
    return _Authority(key, cert)


def _issue(authority: _Authority, leaf: Leaf, days: int
           ) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    start, end = _validity(days)
    usages = ([ExtendedKeyUsageOID.SERVER_AUTH] if leaf.server else []) + (
        [ExtendedKeyUsageOID.CLIENT_AUTH] if leaf.client else [])
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME,
                                                           leaf.common_name)]))
               .issuer_name(authority.cert.subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(start).not_valid_after(end)
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                            key_encipherment=False, data_encipherment=False,
                                            key_agreement=False, key_cert_sign=False,
                                            crl_sign=False, encipher_only=False,
                                            decipher_only=False), critical=True)
               .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                   authority.key.public_key()), critical=False))
    names = _subject_names(leaf.hosts, leaf.uris)
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return key, builder.sign(authority.key, hashes.SHA256())


def _write(path: Path, data: bytes, mode: int) -> None:
    """Creates `path` with `mode` from the start (a key is never readable by others, not
    even for a moment), refusing to replace a file that appeared meanwhile."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(descriptor, "wb") as out:
        out.write(data)
    os.chmod(path, mode)  # whatever the umask


def make_certificates(folder: Path, request: CertRequest) -> list[Written]:
    """Makes what `request` asks for in `folder` (created if need be), with a CA per trust
    domain (reused when its files are there). Checks everything before writing anything:
    raises CertError on a bad request or a file that exists."""
    if request.days < 1:
        raise CertError("--days must be at least 1")
    leaves = build_leaves(request)
    if not leaves:
        raise CertError("nothing to make: name at least one of --center, --node, --admin, "
                        "--proxy, --listener, --app, --etcd, --etcd-client")
    for leaf in leaves:
        for path in (folder / f"{leaf.stem}.pem", folder / f"{leaf.stem}-key.pem"):
            if path.exists():
                raise CertError(f"{path} exists: remove it to make a new one")
    plan = _Plan(folder, request.days)
    for domain in {leaf.domain.stem: leaf.domain for leaf in leaves}.values():
        found = _load_authority(folder, domain) if folder.exists() else None
        plan.authorities[domain.stem] = found or _new_authority(domain, request.days)
    folder.mkdir(parents=True, exist_ok=True)
    written: list[Written] = []
    for stem, authority in plan.authorities.items():
        if authority.made:
            _write(folder / f"{stem}-key.pem", _pem_key(authority.key), 0o600)
            _write(folder / f"{stem}.pem",
                   authority.cert.public_bytes(serialization.Encoding.PEM), 0o644)
            written.append(Written(folder / f"{stem}.pem", "CA", made_ca=True))
    for leaf in leaves:
        key, cert = _issue(plan.authorities[leaf.domain.stem], leaf, request.days)
        _write(folder / f"{leaf.stem}-key.pem", _pem_key(key), 0o600)
        _write(folder / f"{leaf.stem}.pem", cert.public_bytes(serialization.Encoding.PEM),
               0o644)
        names = ", ".join((*leaf.hosts, *leaf.uris))
        written.append(Written(folder / f"{leaf.stem}.pem",
                               f"{leaf.what}: CN {leaf.common_name}"
                               f"{'; SAN ' + names if names else ''}; "
                               f"signed by {leaf.domain.stem}.pem"))
    return written


# --- the command ----------------------------------------------------------------------------


def _hosts(value: str) -> tuple[str, ...]:
    return tuple(host.strip() for host in value.split(",") if host.strip())


def add_certs_command(subparsers: Any, add_command: Any, add_command_group: Any) -> None:
    certs = add_command_group(subparsers, "certs", "make TLS certificates")
    gen = add_command(
        certs, "gen", run_certs_gen,
        "make a CA per trust domain and the certificates each part needs "
        "(docs/certificates.md)", talks_to_center=False)
    gen.add_argument("folder", type=Path, metavar="DIR",
                     help="where to write (created if need be); a CA already there is reused")
    gen.add_argument("--center", type=_hosts, nargs="?", const=LOOPBACK_HOSTS,
                     metavar="HOST,HOST",
                     help="the Center's server certificate (center.pem) for these names and "
                          "addresses (default localhost,127.0.0.1)")
    gen.add_argument("--node", action="append", default=[], metavar="SERVICE[ROLES]",
                     help="a node's client certificate for the Center (node-SERVICE.pem): CN "
                          "SERVICE; roles as URI SANs, e.g. 'chat_service[out]' (none: every "
                          "role). Repeatable")
    gen.add_argument("--admin", action="append", default=[], metavar="NAME[read-secrets]",
                     help="an administrator's client certificate (admin-NAME.pem): CN "
                          "admin:NAME. Repeatable")
    gen.add_argument("--proxy", action="append", default=[], metavar="SERVICE[@HOST,HOST]",
                     help="a proxy's certificate for mutual TLS between proxies "
                          "(proxy-SERVICE.pem); HOSTs: the names an in-proxy is dialled at "
                          "(default localhost,127.0.0.1). Repeatable")
    gen.add_argument("--listener", action="append", default=[],
                     metavar="SERVICE[@HOST,HOST]",
                     help="an out-proxy's listener certificate, for apps to verify "
                          "(listener-SERVICE.pem). Repeatable")
    gen.add_argument("--app", action="append", default=[], metavar="NAME",
                     help="an app's client certificate for its out-proxy (app-NAME.pem). "
                          "Repeatable")
    gen.add_argument("--etcd", action="append", default=[], metavar="MEMBER[@HOST,HOST]",
                     help="an etcd member's certificate (etcd-MEMBER.pem; default hosts: "
                          "MEMBER,localhost,127.0.0.1). Repeatable")
    gen.add_argument("--etcd-client", action="append", default=[], metavar="NAME",
                     help="a Center's client certificate at etcd (etcd-client-NAME.pem). "
                          "Repeatable")
    gen.add_argument("--days", type=int, default=DEFAULT_DAYS,
                     help=f"validity in days (default {DEFAULT_DAYS})")


def run_certs_gen(args: argparse.Namespace) -> int:
    from fastproxy.cli.commands import CliError

    request = CertRequest(
        center=args.center, nodes=tuple(args.node), admins=tuple(args.admin),
        proxies=tuple(args.proxy), listeners=tuple(args.listener), apps=tuple(args.app),
        etcd_members=tuple(args.etcd), etcd_clients=tuple(args.etcd_client), days=args.days)
    try:
        written = make_certificates(args.folder, request)
    except CertError as exc:
        raise CliError(str(exc)) from None
    except OSError as exc:
        raise CliError(f"{args.folder}: cannot write ({exc.strerror or exc})") from None
    for item in written:
        key = item.path.with_name(item.path.stem + "-key.pem")
        print(f"{item.path}  {'new CA (key ' + key.name + ')' if item.made_ca else item.what}")
    return 0
