"""The flags every data-plane node takes (`python -m proxy_svc`, `python -m server_svc`):
where its policy comes from, who it is at the Center, its credentials and limits. One
parser, so both commands have every node flag and check them alike."""

from __future__ import annotations

import argparse
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path

from fastproxy.hosting.commandline import (
    OneLineArgumentParser,
    fail,
    host_port,
    host_ports,
    read_flag_file,
)
from fastproxy.node.credentials import (
    CenterCredentials,
    ConnectionFlags,
    CredentialError,
    check_center_connection,
)
from fastproxy.pipeline.handshake import CLOCK_AHEAD_S, MAX_SESSIONS
from fastproxy.pipeline.stages import DEFAULT_MAX_MESSAGE_BYTES
from fastproxy.policy.signing import parse_center_public_key
from fastproxy.telemetry.logs import add_logging_flags, add_metrics_flag


@dataclass(frozen=True, slots=True)
class NodeFlags:
    """A node's checked flags. `service` is None only for a server without embedded mode."""

    service: str | None
    listen: str
    center: str | None
    policy_file: str | None
    node_id: str
    cache_dir: str | None
    advertise: str
    center_credentials: CenterCredentials = field(repr=False)
    center_public_key: bytes | None
    max_message_bytes: int
    grace_s: float
    log_level: str
    log_format: str
    metrics_port: int | None
    policy_poll_s: float
    clock_skew_s: float = CLOCK_AHEAD_S
    max_sessions: int = MAX_SESSIONS


def add_node_flags(parser: OneLineArgumentParser, *, service_help: str,
                   service_required: bool, tls_help: dict[str, str]) -> None:
    """`tls_help`: the help of the older flags --tls-ca, --tls-cert and --tls-key, whose
    meaning the host gives (the Center only, or also a proxy's own TLS)."""
    parser.add_argument("--service", required=service_required, help=service_help)
    parser.add_argument("--listen", required=True, type=host_port, help="HOST:PORT to serve on")
    source = parser.add_mutually_exclusive_group(required=service_required)
    source.add_argument("--center", type=host_ports, metavar="HOST:PORT[,HOST:PORT...]",
                        help="the Center's HOST:PORT; replicas of one Center as several, "
                             "comma-separated, or as a DNS name with several addresses (the "
                             "node moves to another when its replica goes away)")
    source.add_argument("--policy", metavar="FILE",
                        help="run without a Center from this YAML policy (reloaded on change)")
    parser.add_argument("--node-id", help="this node's id at the Center "
                                          "(default SERVICE-ROLE-HOST-PID)")
    parser.add_argument("--cache-dir", metavar="DIR",
                        help="keep the last good snapshot here; used while the Center is down")
    parser.add_argument("--advertise", type=host_port,
                        help="the address registered at the Center for the service "
                             "(default --listen)")
    parser.add_argument("--token", default=os.environ.get("FASTPROXY_TOKEN", ""),
                        help="bearer token for the Center (default $FASTPROXY_TOKEN)")
    parser.add_argument("--center-public-key", metavar="FILE",
                        help="pin the Center's Ed25519 public key (32 raw bytes or base64): "
                             "snapshots signed by any other key are refused")
    center_tls = parser.add_argument_group(
        "TLS to the Center", "how this node checks the Center and proves who it is there "
        "(with a certificate whose common name is the service; or --token)")
    center_tls.add_argument("--center-tls-ca", metavar="FILE",
                            help="CA that signed the Center's certificate (PEM): TLS to the "
                                 "Center")
    center_tls.add_argument("--center-tls-cert", metavar="FILE",
                            help="this node's client certificate for the Center (PEM)")
    center_tls.add_argument("--center-tls-key", metavar="FILE",
                            help="the key of --center-tls-cert (PEM)")
    center_tls.add_argument("--tls-ca", metavar="FILE", help=tls_help["--tls-ca"])
    center_tls.add_argument("--tls-cert", metavar="FILE", help=tls_help["--tls-cert"])
    center_tls.add_argument("--tls-key", metavar="FILE", help=tls_help["--tls-key"])
    parser.add_argument("--max-message-bytes", type=int, default=DEFAULT_MAX_MESSAGE_BYTES,
                        help="largest message in either direction (default 64 MiB)")
    parser.add_argument("--clock-skew", type=float, default=CLOCK_AHEAD_S, metavar="SECONDS",
                        help="how far ahead of this node's clock a caller's handshake or "
                             f"call may be stamped (default {CLOCK_AHEAD_S:g}); either may "
                             "be 30 s old")
    parser.add_argument("--max-sessions", type=int, default=MAX_SESSIONS, metavar="N",
                        help="sessions with callers this node keeps (default "
                             f"{MAX_SESSIONS:,}); when full, the least recently used one of "
                             "the caller holding the most is forgotten")
    parser.add_argument("--grace", type=float, default=10.0, metavar="SECONDS",
                        help="on SIGTERM/SIGINT, how long in-flight calls may finish")
    add_logging_flags(parser)
    add_metrics_flag(parser)
    parser.add_argument("--policy-poll", type=float, default=1.0, help=argparse.SUPPRESS)


def _check(prog: str, args: argparse.Namespace) -> None:
    if args.service is not None and not args.service.strip():
        fail(prog, "--service must not be empty")
    if args.policy and not Path(args.policy).is_file():
        fail(prog, f"--policy {args.policy}: no such file")
    if args.cache_dir and not args.center:
        fail(prog, "--cache-dir keeps snapshots from a Center: it needs --center")
    if args.center_public_key and not args.center:
        fail(prog, "--center-public-key pins a Center's key: it needs --center")
    if args.max_message_bytes < 1024:
        fail(prog, "--max-message-bytes must be at least 1024")
    if not args.grace >= 0:
        fail(prog, "--grace must be zero or more seconds")
    if not 0 <= args.clock_skew <= 30:
        fail(prog, "--clock-skew must be between 0 and 30 seconds")
    if args.max_sessions < 1:
        fail(prog, "--max-sessions must be at least 1")
    if args.metrics_port is not None and not 0 < args.metrics_port < 65536:
        fail(prog, "--metrics-port must be between 1 and 65535")


def _public_key(prog: str, path: str | None) -> bytes | None:
    raw = read_flag_file(prog, path, "--center-public-key")
    if raw is None:
        return None
    key = parse_center_public_key(raw)
    if key is None:
        fail(prog, f"--center-public-key {path}: not an Ed25519 public key "
                   "(32 raw bytes or base64)")
    return key


CENTER_TLS_FLAGS = (("--center-tls-ca", "--tls-ca"), ("--center-tls-cert", "--tls-cert"),
                    ("--center-tls-key", "--tls-key"))


def center_tls_files(prog: str, args: argparse.Namespace) -> tuple[str | None, ...]:
    """The CA, certificate and key files for the Center: the --center-tls-* flags, or the
    older --tls-* ones (one or the other for each)."""
    files, _ = _center_tls(prog, args)
    return files


def _center_tls(prog: str, args: argparse.Namespace
                ) -> tuple[tuple[str | None, ...], tuple[str, str, str]]:
    files: list[str | None] = []
    names: list[str] = []
    for new, old in CENTER_TLS_FLAGS:
        given_new, given_old = (getattr(args, flag[2:].replace("-", "_")) for flag in (new, old))
        if given_new and given_old:
            fail(prog, f"{old} and {new} both name the Center's; give one")
        files.append(given_new or given_old)
        names.append(old if given_old else new)
    return tuple(files), (names[0], names[1], names[2])


def node_flags(prog: str, args: argparse.Namespace, role_name: str) -> NodeFlags:
    """Checks the shared flags (one clear line and exit 2 on a bad one) and reads their
    files. `role_name` goes into the default node id."""
    _check(prog, args)
    (tls_ca, tls_cert, tls_key), names = _center_tls(prog, args)
    try:
        credentials = CenterCredentials.from_files(
            token=args.token, tls_ca=tls_ca, tls_cert=tls_cert, tls_key=tls_key, flags=names)
    except CredentialError as exc:
        fail(prog, str(exc))
    center_public_key = _public_key(prog, args.center_public_key)
    if args.center:
        try:
            check_center_connection(args.center, uses_tls=credentials.uses_tls,
                                    pinned_key=center_public_key,
                                    names=ConnectionFlags(tls="--center-tls-ca FILE, or "
                                                              "--tls-ca"))
        except CredentialError as exc:
            fail(prog, str(exc))
    return NodeFlags(
        service=args.service,
        listen=args.listen,
        center=args.center,
        policy_file=args.policy,
        node_id=args.node_id
        or f"{args.service}-{role_name}-{socket.gethostname()}-{os.getpid()}",
        cache_dir=args.cache_dir,
        advertise=args.advertise or args.listen,
        center_credentials=credentials,
        center_public_key=center_public_key,
        max_message_bytes=args.max_message_bytes,
        grace_s=args.grace,
        log_level=args.log_level,
        log_format=args.log_format,
        metrics_port=args.metrics_port,
        policy_poll_s=args.policy_poll,
        clock_skew_s=args.clock_skew,
        max_sessions=args.max_sessions,
    )
