"""Command line of `python -m center_svc`, checked into one immutable configuration."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from center_svc.auth import TokenFileError, TokenFiles
from center_svc.etcd_client import EtcdCredentials
from center_svc.kek import KekError, KekRing, load_ring
from center_svc.store import DEFAULT_STORE_URL, sqlite_path_of
from fastproxy.hosting.commandline import (
    OneLineArgumentParser,
    fail,
    host_port,
    is_loopback,
    read_flag_file,
)
from fastproxy.telemetry.logs import add_logging_flags, add_metrics_flag

PROG = "center_svc"
ETCD_USER_ENV = "FASTPROXY_ETCD_USER"
ETCD_PASSWORD_ENV = "FASTPROXY_ETCD_PASSWORD"
DEFAULT_WATCH_MAX_AGE_S = 600.0


@dataclass(frozen=True, slots=True)
class CenterConfig:
    listen: str
    store: str
    policy_file: str | None
    tls_cert: bytes | None
    tls_key: bytes | None
    client_ca: bytes | None
    node_tokens: str | None  # paths; read (and checked) at start, then again on change
    admin_tokens: str | None
    kek: KekRing | None = field(repr=False)
    grace_s: float
    log_level: str
    log_format: str
    metrics_port: int | None
    policy_poll_s: float
    etcd_credentials: EtcdCredentials = field(default_factory=EtcdCredentials)
    registration_ttl_s: int = 15
    store_wait_s: float = 10.0
    watch_max_age_s: float | None = DEFAULT_WATCH_MAX_AGE_S
    # the files of --tls-cert and --tls-key (the listener that takes client certificates
    # loads them itself)
    tls_files: tuple[str, str] | None = None

    @property
    def development(self) -> bool:
        return not (self.tls_cert or self.client_ca or self.node_tokens or self.admin_tokens)


def build_parser() -> OneLineArgumentParser:
    parser = OneLineArgumentParser(
        prog=PROG,
        description="FastProxy Center: stores versioned policy and streams it to every node.",
        # no abbreviations: `--etcd-password SECRET` must be refused, not taken for
        # --etcd-password-file and echoed back in the error
        allow_abbrev=False,
    )
    parser.add_argument("--listen", type=host_port, default="127.0.0.1:7070",
                        help="HOST:PORT to serve on (default 127.0.0.1:7070)")
    parser.add_argument("--store", default=DEFAULT_STORE_URL,
                        help="sqlite:///relative.db, sqlite:////absolute.db, memory://, or "
                             "etcd://HOST:PORT[,HOST:PORT...]/PREFIX for replicas sharing "
                             f"an etcd cluster (default {DEFAULT_STORE_URL})")
    parser.add_argument("--policy", metavar="FILE",
                        help="apply this YAML policy at start and whenever it changes")
    parser.add_argument("--tls-cert", metavar="FILE", help="server certificate (PEM)")
    parser.add_argument("--tls-key", metavar="FILE", help="server private key (PEM)")
    parser.add_argument("--client-ca", metavar="FILE",
                        help="CA that signs node and admin client certificates (the common "
                             "name is the node's service, or admin:NAME); a client "
                             "certificate is then asked for, not required: tokens keep "
                             "working on the same listener")
    parser.add_argument("--node-tokens", metavar="FILE",
                        help="'service: token' lines (a node of the service, any role) or "
                             "'service[in,out,client,app]: token' (only those roles); "
                             "read again when it changes")
    parser.add_argument("--admin-tokens", metavar="FILE",
                        help="'name: token' lines: tokens allowed to change policy; "
                             "'name[read-secrets]: token' may also read its secrets; read "
                             "again when it changes")
    parser.add_argument("--kek", action="append", default=[], metavar="file:PATH|env:VAR",
                        help="key-encryption key (32 bytes, raw or base64) that encrypts "
                             "policy secrets in the store; required with credentials and a "
                             "store that keeps data. Given twice or more: the first seals, "
                             "every one opens (rotation)")
    etcd = parser.add_argument_group(
        "etcd store", "credentials for --store etcd://... (never on the command line in the "
        f"clear: the password comes from a file or ${ETCD_PASSWORD_ENV})")
    etcd.add_argument("--etcd-user", metavar="NAME",
                      help=f"etcd user (or ${ETCD_USER_ENV})")
    etcd.add_argument("--etcd-password-file", metavar="FILE",
                      help=f"file holding the etcd user's password (or ${ETCD_PASSWORD_ENV})")
    etcd.add_argument("--etcd-ca", metavar="FILE",
                      help="CA that signs the etcd members' certificates (PEM): TLS to etcd")
    etcd.add_argument("--etcd-cert", metavar="FILE", help="client certificate for etcd (PEM)")
    etcd.add_argument("--etcd-key", metavar="FILE", help="client private key for etcd (PEM)")
    etcd.add_argument("--etcd-server-name", metavar="NAME", default="",
                      help="name the etcd members' certificates carry, if not their host")
    etcd.add_argument("--registration-ttl", type=int, default=15, metavar="SECONDS",
                      help="etcd: how long the endpoints registered through a replica that "
                           "died stay routed to (default 15)")
    etcd.add_argument("--store-wait", type=float, default=10.0, metavar="SECONDS",
                      help="etcd: how long to wait at start for the cluster to answer "
                           "(default 10)")
    parser.add_argument("--watch-max-age", type=float, default=DEFAULT_WATCH_MAX_AGE_S,
                        metavar="SECONDS",
                        help="end each node's watch stream after about this long (less up to "
                             "25%% jitter), so that nodes spread again over the replicas; "
                             f"0: never (default {DEFAULT_WATCH_MAX_AGE_S:g})")
    parser.add_argument("--grace", type=float, default=5.0, metavar="SECONDS",
                        help="on SIGTERM/SIGINT, how long in-flight calls may finish (default 5)")
    add_logging_flags(parser)
    add_metrics_flag(parser)
    parser.add_argument("--policy-poll", type=float, default=1.0, metavar="SECONDS",
                        help=argparse.SUPPRESS)
    return parser


def _kek(refs: list[str]) -> KekRing | None:
    try:
        return load_ring(refs)
    except KekError as exc:
        fail(PROG, str(exc))


def keeps_data(store: str) -> bool:
    try:
        return sqlite_path_of(store) is not None
    except ValueError:
        return True  # any other backend keeps data (an unknown URL fails when opened)


def token_files(config: CenterConfig) -> TokenFiles:
    return TokenFiles(config.node_tokens, config.admin_tokens)


def _etcd_credentials(args: argparse.Namespace, env: Mapping[str, str]) -> EtcdCredentials:
    uses_etcd = str(args.store).startswith("etcd://")
    given = [flag for flag, value in (
        ("--etcd-user", args.etcd_user), ("--etcd-password-file", args.etcd_password_file),
        ("--etcd-ca", args.etcd_ca), ("--etcd-cert", args.etcd_cert),
        ("--etcd-key", args.etcd_key), ("--etcd-server-name", args.etcd_server_name))
        if value]
    if given and not uses_etcd:
        fail(PROG, f"{given[0]} needs --store etcd://...")
    if not uses_etcd:
        return EtcdCredentials()
    from center_svc.etcd_store import parse_etcd_url

    try:
        parse_etcd_url(args.store)
    except ValueError as exc:
        fail(PROG, f"--store: {exc}")
    if bool(args.etcd_cert) != bool(args.etcd_key):
        fail(PROG, "--etcd-cert and --etcd-key go together")
    if args.etcd_cert and not args.etcd_ca:
        fail(PROG, "--etcd-cert needs --etcd-ca")
    user = args.etcd_user or env.get(ETCD_USER_ENV, "")
    password = env.get(ETCD_PASSWORD_ENV, "")
    if args.etcd_password_file:
        raw = read_flag_file(PROG, args.etcd_password_file, "--etcd-password-file") or b""
        password = raw.decode("utf-8", errors="replace").strip()
    if bool(user) != bool(password):
        fail(PROG, f"an etcd user needs a password (--etcd-password-file or "
                   f"${ETCD_PASSWORD_ENV}), and a password a user")
    return EtcdCredentials(
        user=user, password=password,
        ca=read_flag_file(PROG, args.etcd_ca, "--etcd-ca"),
        cert=read_flag_file(PROG, args.etcd_cert, "--etcd-cert"),
        key=read_flag_file(PROG, args.etcd_key, "--etcd-key"),
        server_name=args.etcd_server_name)


def parse_config(argv: Sequence[str] | None = None,
                 env: Mapping[str, str] | None = None) -> CenterConfig:
    args = build_parser().parse_args(argv)
    if args.registration_ttl < 1:
        fail(PROG, "--registration-ttl must be at least 1 second")
    if args.watch_max_age < 0:
        fail(PROG, "--watch-max-age must be >= 0")
    etcd_credentials = _etcd_credentials(args, os.environ if env is None else env)
    if bool(args.tls_cert) != bool(args.tls_key):
        fail(PROG, "--tls-cert and --tls-key go together")
    if args.client_ca and not args.tls_cert:
        fail(PROG, "--client-ca needs --tls-cert and --tls-key")
    config = CenterConfig(
        listen=args.listen,
        store=args.store,
        policy_file=args.policy,
        tls_cert=read_flag_file(PROG, args.tls_cert, "--tls-cert"),
        tls_key=read_flag_file(PROG, args.tls_key, "--tls-key"),
        client_ca=read_flag_file(PROG, args.client_ca, "--client-ca"),
        node_tokens=args.node_tokens,
        admin_tokens=args.admin_tokens,
        kek=_kek(args.kek),
        grace_s=args.grace,
        log_level=args.log_level,
        log_format=args.log_format,
        metrics_port=args.metrics_port,
        policy_poll_s=args.policy_poll,
        etcd_credentials=etcd_credentials,
        registration_ttl_s=args.registration_ttl,
        store_wait_s=args.store_wait,
        watch_max_age_s=args.watch_max_age or None,
        tls_files=(args.tls_cert, args.tls_key) if args.tls_cert else None,
    )
    try:
        token_files(config).load()
    except TokenFileError as exc:
        fail(PROG, str(exc))
    if args.policy and not Path(args.policy).is_file():
        fail(PROG, f"--policy {args.policy}: no such file")
    loopback = is_loopback(config.listen)
    if config.development and not loopback:
        fail(PROG, f"refusing to listen on {config.listen} in development mode (no credential "
                   "options): use a loopback address, or --tls-cert/--tls-key with "
                   "--client-ca or --node-tokens")
    if not config.development and not config.tls_cert and not loopback:
        fail(PROG, f"refusing to serve secrets over plaintext on {config.listen}: "
                   "add --tls-cert and --tls-key")
    if not config.development and not (config.client_ca or config.node_tokens):
        fail(PROG, "no way to authenticate nodes: add --client-ca or --node-tokens")
    if not config.development and config.kek is None and keeps_data(config.store):
        fail(PROG, f"--store {config.store} would keep policy secrets unencrypted: add "
                   "--kek file:PATH or --kek env:VAR (32 bytes, raw or base64)")
    return config
