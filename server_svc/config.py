"""Command line of `python -m server_svc`, checked into one immutable configuration."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass

from fastproxy.hosting.commandline import OneLineArgumentParser, fail
from fastproxy.hosting.node_flags import NodeFlags, add_node_flags, node_flags

PROG = "server_svc"


@dataclass(frozen=True, slots=True)
class ServerConfig:
    node: NodeFlags

    @property
    def service(self) -> str | None:
        """Set: embedded mode (sealed calls only, as `service`'s in-node)."""
        return self.node.service

    @property
    def embedded(self) -> bool:
        return self.node.service is not None


def build_parser() -> OneLineArgumentParser:
    parser = OneLineArgumentParser(
        prog=PROG,
        description="FastProxy demo server: demo.v1.Echo and demo.v1.Catalog, with "
                    "grpc.health.v1 and server reflection. Plaintext by default (to sit "
                    "behind an in-proxy); with --service and --center or --policy it opens "
                    "and checks sealed calls itself (embedded mode) and registers at the "
                    "Center as an endpoint of --service.",
    )
    add_node_flags(parser, service_required=False,
                   service_help="embedded mode: the service this server is (needs --center "
                                "or --policy)",
                   tls_help={"--tls-ca": "older name of --center-tls-ca",
                             "--tls-cert": "older name of --center-tls-cert",
                             "--tls-key": "older name of --center-tls-key"})
    return parser


def _check(args: argparse.Namespace) -> None:
    has_source = bool(args.center or args.policy)
    if args.service and not has_source:
        fail(PROG, "--service needs --center HOST:PORT or --policy FILE (embedded mode)")
    if has_source and not args.service:
        fail(PROG, "--center/--policy need --service NAME (the service this server is)")
    for flag in ("node_id", "advertise", "tls_ca", "tls_cert", "tls_key", "center_tls_ca",
                 "center_tls_cert", "center_tls_key"):
        if getattr(args, flag) and not args.center:
            fail(PROG, f"--{flag.replace('_', '-')} is for a Center: it needs --center")
    if args.center and args.listen.endswith(":0") and not args.advertise:
        fail(PROG, "--listen with port 0 and --center needs --advertise (the address "
                   "registered at the Center)")


def parse_config(argv: Sequence[str] | None = None) -> ServerConfig:
    args = build_parser().parse_args(argv)
    _check(args)
    return ServerConfig(node_flags(PROG, args, "server"))


__all__ = ["PROG", "ServerConfig", "build_parser", "parse_config"]
