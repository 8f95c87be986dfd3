"""Command line of `python -m server_svc`, checked into one immutable configuration."""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from fastproxy.hosting.commandline import OneLineArgumentParser, fail, host_port
from fastproxy.node.credentials import CenterCredentials, CredentialError
from fastproxy.pipeline.stages import DEFAULT_MAX_MESSAGE_BYTES
from fastproxy.telemetry.logs import add_logging_flags, add_metrics_flag

PROG = "server_svc"


@dataclass(frozen=True, slots=True)
class ServerConfig:
    listen: str
    service: str | None  # set: embedded mode (sealed calls only, as `service`'s in-node)
    center: str | None
    policy_file: str | None
    node_id: str
    advertise: str
    cache_dir: str | None
    center_credentials: CenterCredentials = field(repr=False)
    max_message_bytes: int
    grace_s: float
    log_level: str
    log_format: str
    metrics_port: int | None

    @property
    def embedded(self) -> bool:
        return self.service is not None


def build_parser() -> OneLineArgumentParser:
    parser = OneLineArgumentParser(
        prog=PROG,
        description="FastProxy demo server: demo.v1.Echo and demo.v1.Catalog, with "
                    "grpc.health.v1 and server reflection. Plaintext by default (to sit "
                    "behind an in-proxy); with --service and --center or --policy it opens "
                    "and checks sealed calls itself (embedded mode) and registers at the "
                    "Center as an endpoint of --service.",
    )
    parser.add_argument("--listen", required=True, type=host_port, help="HOST:PORT to serve on")
    parser.add_argument("--service",
                        help="embedded mode: the service this server is (needs --center or "
                             "--policy)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--center", type=host_port, help="the Center's HOST:PORT")
    source.add_argument("--policy", metavar="FILE",
                        help="run without a Center from this YAML policy (reloaded on change)")
    parser.add_argument("--node-id", help="this node's id at the Center "
                                          "(default SERVICE-server-HOST-PID)")
    parser.add_argument("--advertise", type=host_port,
                        help="the address registered at the Center (default --listen)")
    parser.add_argument("--cache-dir", metavar="DIR",
                        help="keep the last good snapshot here; used while the Center is down")
    parser.add_argument("--token", default=os.environ.get("FASTPROXY_TOKEN", ""),
                        help="bearer token for the Center (default $FASTPROXY_TOKEN)")
    parser.add_argument("--tls-ca", metavar="FILE", help="CA that verifies the Center (PEM)")
    parser.add_argument("--tls-cert", metavar="FILE",
                        help="client certificate towards the Center (PEM)")
    parser.add_argument("--tls-key", metavar="FILE", help="the key of --tls-cert (PEM)")
    parser.add_argument("--max-message-bytes", type=int, default=DEFAULT_MAX_MESSAGE_BYTES,
                        help="largest message in either direction (default 64 MiB)")
    parser.add_argument("--grace", type=float, default=10.0, metavar="SECONDS",
                        help="on SIGTERM/SIGINT, how long in-flight calls may finish")
    add_logging_flags(parser)
    add_metrics_flag(parser)
    return parser


def parse_config(argv: Sequence[str] | None = None) -> ServerConfig:
    args = build_parser().parse_args(argv)
    has_source = bool(args.center or args.policy)
    if args.service and not has_source:
        fail(PROG, "--service needs --center HOST:PORT or --policy FILE (embedded mode)")
    if has_source and not args.service:
        fail(PROG, "--center/--policy need --service NAME (the service this server is)")
    if args.service is not None and not args.service.strip():
        fail(PROG, "--service must not be empty")
    if args.policy and not Path(args.policy).is_file():
        fail(PROG, f"--policy {args.policy}: no such file")
    if args.cache_dir and not args.center:
        fail(PROG, "--cache-dir keeps snapshots from a Center: it needs --center")
    for flag in ("node_id", "advertise", "token", "tls_ca", "tls_cert", "tls_key"):
        if getattr(args, flag) and not args.center and flag != "token":
            fail(PROG, f"--{flag.replace('_', '-')} is for a Center: it needs --center")
    if args.center and args.listen.endswith(":0") and not args.advertise:
        fail(PROG, "--listen with port 0 and --center needs --advertise (the address "
                   "registered at the Center)")
    if args.max_message_bytes < 1024:
        fail(PROG, "--max-message-bytes must be at least 1024")
    if not args.grace >= 0:
        fail(PROG, "--grace must be zero or more seconds")
    try:
        credentials = CenterCredentials.from_files(
            token=args.token, tls_ca=args.tls_ca, tls_cert=args.tls_cert, tls_key=args.tls_key)
    except CredentialError as exc:
        fail(PROG, str(exc))
    return ServerConfig(
        listen=args.listen,
        service=args.service,
        center=args.center,
        policy_file=args.policy,
        node_id=args.node_id or f"{args.service}-server-{socket.gethostname()}-{os.getpid()}",
        advertise=args.advertise or args.listen,
        cache_dir=args.cache_dir,
        center_credentials=credentials,
        max_message_bytes=args.max_message_bytes,
        grace_s=args.grace,
        log_level=args.log_level,
        log_format=args.log_format,
        metrics_port=args.metrics_port,
    )


__all__ = ["PROG", "ServerConfig", "build_parser", "parse_config"]
