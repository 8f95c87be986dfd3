"""Command line of `python -m proxy_svc`, checked into one immutable configuration."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass, field

from fastproxy.hosting.commandline import OneLineArgumentParser, fail, host_port
from fastproxy.hosting.node_flags import NodeFlags, add_node_flags, node_flags
from fastproxy.hosting.refusal import HostRole
from fastproxy.v1 import policy_pb2 as pb

PROG = "proxy_svc"
ROLES: dict[str, HostRole] = {"in": HostRole.IN, "out": HostRole.OUT}
_ROLE_PB: dict[HostRole, int] = {HostRole.IN: pb.ROLE_IN, HostRole.OUT: pb.ROLE_OUT}


@dataclass(frozen=True, slots=True)
class ProxyConfig:
    role: HostRole
    node: NodeFlags
    upstream: str | None
    tls_cert: bytes | None = field(repr=False)
    tls_key: bytes | None = field(repr=False)
    tls_ca: bytes | None = field(repr=False)
    workers: int
    tunnel: bool = True

    @property
    def role_pb(self) -> int:
        return _ROLE_PB[self.role]

    @property
    def service(self) -> str:
        return self.node.service or ""


def build_parser() -> OneLineArgumentParser:
    parser = OneLineArgumentParser(
        prog=PROG,
        description="FastProxy proxy: the in-proxy guards a service, the out-proxy is a "
                    "calling service's egress; every message between them is sealed.",
    )
    parser.add_argument("--role", required=True, choices=sorted(ROLES),
                        help="in: guard --service in front of --upstream; out: egress of "
                             "--service, routing each call by its gRPC service name")
    add_node_flags(parser, service_required=True,
                   service_help="the service this node acts for",
                   tls_help="this node's certificate (PEM): TLS on the listener, client "
                            "certificate towards the Center and (out-proxy) mutual TLS to "
                            "in-proxies; with --tls-ca the listener requires client "
                            "certificates it signed")
    parser.add_argument("--upstream", type=host_port,
                        help="in-proxy: the plaintext gRPC server of the service")
    parser.add_argument("--workers", type=int, default=1,
                        help="processes sharing the port (SO_REUSEPORT); rate limits and "
                             "sessions are then per process (a session is opened on the "
                             "connection its calls use, so it reaches the right one)")
    parser.add_argument("--tunnel", choices=("on", "off"), default="on",
                        help="out-proxy: carry unary calls (and single-request calls of "
                             "methods of unknown kind) to each in-proxy over one long-lived "
                             "stream (default on); in-proxy: accept such streams")
    return parser


def _check(args: argparse.Namespace) -> None:
    if args.role == "in" and not args.upstream:
        fail(PROG, "--role in needs --upstream HOST:PORT (the service it guards)")
    if args.role == "out" and args.upstream:
        fail(PROG, "--upstream is for --role in; an out-proxy routes by the policy")
    if args.workers < 1:
        fail(PROG, "--workers must be at least 1")
    if args.metrics_port is not None and args.workers > 1:
        fail(PROG, "--metrics-port needs --workers 1 (each worker would need its own port)")
    in_with_center = args.center and args.role == "in" and not args.advertise
    if args.listen.endswith(":0") and (args.workers > 1 or in_with_center):
        fail(PROG, "--listen with port 0 needs --workers 1 and, for an in-proxy with a "
                   "Center, --advertise")


def parse_config(argv: Sequence[str] | None = None) -> ProxyConfig:
    args = build_parser().parse_args(argv)
    _check(args)
    node = node_flags(PROG, args, args.role)
    credentials = node.center_credentials
    return ProxyConfig(
        role=ROLES[args.role],
        node=node,
        upstream=args.upstream,
        tls_cert=credentials.tls_cert,
        tls_key=credentials.tls_key,
        tls_ca=credentials.tls_ca,
        workers=args.workers,
        tunnel=args.tunnel == "on",
    )
