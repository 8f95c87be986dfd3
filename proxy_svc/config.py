"""Command line of `python -m proxy_svc`, checked into one immutable configuration."""

from __future__ import annotations

import argparse
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from fastproxy.hosting.commandline import OneLineArgumentParser, fail, host_port, read_flag_file
from fastproxy.node.credentials import CenterCredentials, CredentialError
from fastproxy.pipeline.stages import DEFAULT_MAX_MESSAGE_BYTES
from fastproxy.policy.signing import parse_center_public_key
from fastproxy.telemetry.logs import add_logging_flags, add_metrics_flag
from fastproxy.v1 import policy_pb2 as pb

PROG = "proxy_svc"
ROLES: dict[str, int] = {"in": pb.ROLE_IN, "out": pb.ROLE_OUT}


@dataclass(frozen=True, slots=True)
class ProxyConfig:
    role: str
    service: str
    listen: str
    center: str | None
    policy_file: str | None
    upstream: str | None
    node_id: str
    cache_dir: str | None
    advertise: str
    center_credentials: CenterCredentials = field(repr=False)
    center_public_key: bytes | None
    tls_cert: bytes | None = field(repr=False)
    tls_key: bytes | None = field(repr=False)
    tls_ca: bytes | None = field(repr=False)
    max_message_bytes: int
    grace_s: float
    workers: int
    log_level: str
    policy_poll_s: float
    log_format: str = "text"
    metrics_port: int | None = None
    tunnel: bool = True

    @property
    def role_pb(self) -> int:
        return ROLES[self.role]


def build_parser() -> OneLineArgumentParser:
    parser = OneLineArgumentParser(
        prog=PROG,
        description="FastProxy proxy: the in-proxy guards a service, the out-proxy is a "
                    "calling service's egress; every message between them is sealed.",
    )
    parser.add_argument("--role", required=True, choices=sorted(ROLES),
                        help="in: guard --service in front of --upstream; out: egress of "
                             "--service, routing each call by its gRPC service name")
    parser.add_argument("--service", required=True, help="the service this node acts for")
    parser.add_argument("--listen", required=True, type=host_port, help="HOST:PORT to serve on")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--center", type=host_port, help="the Center's HOST:PORT")
    source.add_argument("--policy", metavar="FILE",
                        help="run without a Center from this YAML policy (reloaded on change)")
    parser.add_argument("--upstream", type=host_port,
                        help="in-proxy: the plaintext gRPC server of the service")
    parser.add_argument("--node-id", help="this node's id at the Center "
                                          "(default SERVICE-ROLE-HOST-PID)")
    parser.add_argument("--cache-dir", metavar="DIR",
                        help="keep the last good snapshot here; used while the Center is down")
    parser.add_argument("--advertise", type=host_port,
                        help="in-proxy: the address registered at the Center (default --listen)")
    parser.add_argument("--token", default=os.environ.get("FASTPROXY_TOKEN", ""),
                        help="bearer token for the Center (default $FASTPROXY_TOKEN)")
    parser.add_argument("--center-public-key", metavar="FILE",
                        help="pin the Center's Ed25519 public key (32 raw bytes or base64): "
                             "snapshots signed by any other key are refused")
    parser.add_argument("--tls-cert", metavar="FILE",
                        help="this node's certificate (PEM): TLS on the listener, client "
                             "certificate towards the Center and (out-proxy) mutual TLS "
                             "to in-proxies")
    parser.add_argument("--tls-key", metavar="FILE", help="the key of --tls-cert (PEM)")
    parser.add_argument("--tls-ca", metavar="FILE",
                        help="CA that verifies the Center and peer proxies (with "
                             "--tls-cert, the listener requires client certificates it signed)")
    parser.add_argument("--max-message-bytes", type=int, default=DEFAULT_MAX_MESSAGE_BYTES,
                        help="largest message in either direction (default 64 MiB)")
    parser.add_argument("--grace", type=float, default=10.0, metavar="SECONDS",
                        help="on SIGTERM/SIGINT, how long in-flight calls may finish")
    parser.add_argument("--workers", type=int, default=1,
                        help="processes sharing the port (SO_REUSEPORT); rate limits are "
                             "then per process")
    parser.add_argument("--tunnel", choices=("on", "off"), default="on",
                        help="out-proxy: carry calls to known-unary methods to each in-proxy "
                             "over one long-lived stream (default on); in-proxy: accept such "
                             "streams")
    add_logging_flags(parser)
    add_metrics_flag(parser)
    parser.add_argument("--policy-poll", type=float, default=1.0, help=argparse.SUPPRESS)
    return parser


def _public_key(path: str | None) -> bytes | None:
    raw = read_flag_file(PROG, path, "--center-public-key")
    if raw is None:
        return None
    key = parse_center_public_key(raw)
    if key is None:
        fail(PROG, f"--center-public-key {path}: not an Ed25519 public key "
                   "(32 raw bytes or base64)")
    return key


def parse_config(argv: Sequence[str] | None = None) -> ProxyConfig:
    args = build_parser().parse_args(argv)
    if args.role == "in" and not args.upstream:
        fail(PROG, "--role in needs --upstream HOST:PORT (the service it guards)")
    if args.role == "out" and args.upstream:
        fail(PROG, "--upstream is for --role in; an out-proxy routes by the policy")
    if args.cache_dir and not args.center:
        fail(PROG, "--cache-dir keeps snapshots from a Center: it needs --center")
    if args.policy and not Path(args.policy).is_file():
        fail(PROG, f"--policy {args.policy}: no such file")
    if args.max_message_bytes < 1024:
        fail(PROG, "--max-message-bytes must be at least 1024")
    if args.workers < 1:
        fail(PROG, "--workers must be at least 1")
    if args.metrics_port is not None and not 0 < args.metrics_port < 65536:
        fail(PROG, "--metrics-port must be between 1 and 65535")
    if args.metrics_port is not None and args.workers > 1:
        fail(PROG, "--metrics-port needs --workers 1 (each worker would need its own port)")
    if args.listen.endswith(":0") and (args.workers > 1 or (args.center and args.role == "in"
                                                            and not args.advertise)):
        fail(PROG, "--listen with port 0 needs --workers 1 and, for an in-proxy with a "
                   "Center, --advertise")
    try:
        credentials = CenterCredentials.from_files(
            token=args.token, tls_ca=args.tls_ca, tls_cert=args.tls_cert, tls_key=args.tls_key)
    except CredentialError as exc:
        fail(PROG, str(exc))
    return ProxyConfig(
        role=args.role,
        service=args.service,
        listen=args.listen,
        center=args.center,
        policy_file=args.policy,
        upstream=args.upstream,
        node_id=args.node_id or f"{args.service}-{args.role}-{socket.gethostname()}-{os.getpid()}",
        cache_dir=args.cache_dir,
        advertise=args.advertise or args.listen,
        center_credentials=credentials,
        center_public_key=_public_key(args.center_public_key),
        tls_cert=credentials.tls_cert,
        tls_key=credentials.tls_key,
        tls_ca=credentials.tls_ca,
        max_message_bytes=args.max_message_bytes,
        grace_s=args.grace,
        workers=args.workers,
        log_level=args.log_level,
        policy_poll_s=args.policy_poll,
        log_format=args.log_format,
        metrics_port=args.metrics_port,
        tunnel=args.tunnel == "on",
    )
