"""Command line of `python -m proxy_svc`, checked into one immutable configuration.

A proxy uses TLS in three places, each configured apart: towards the Center (its
credential there: `--center-tls-*`, or `--token`), on its listener (an out-proxy's, where
apps call: `--listen-tls-*`, plaintext by default so that a plain app beside it keeps
working), and between the proxies (`--peer-tls-*`: an out-proxy presents its certificate
to the in-proxies and checks theirs; an in-proxy serves its certificate and requires one
from its callers). The older `--tls-cert`/`--tls-key`/`--tls-ca` still do all three at
once, as they always did.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from fastproxy.hosting.commandline import (
    OneLineArgumentParser,
    fail,
    host_port,
    is_loopback,
    read_flag_file,
)
from fastproxy.hosting.node_flags import NodeFlags, add_node_flags, node_flags
from fastproxy.hosting.refusal import HostRole
from fastproxy.v1 import policy_pb2 as pb
from proxy_svc.kinds import kinds_of_descriptor_set

PROG = "proxy_svc"
ROLES: dict[str, HostRole] = {"in": HostRole.IN, "out": HostRole.OUT}
_ROLE_PB: dict[HostRole, int] = {HostRole.IN: pb.ROLE_IN, HostRole.OUT: pb.ROLE_OUT}


@dataclass(frozen=True, slots=True)
class ServerTls:
    """TLS on the listener; `client_ca` set: a client certificate it signed is required."""

    cert: bytes = field(repr=False)
    key: bytes = field(repr=False)
    client_ca: bytes | None = field(repr=False)


@dataclass(frozen=True, slots=True)
class ClientTls:
    """The out-proxy's TLS to in-proxies: verified by `ca`, presenting `cert`."""

    ca: bytes | None = field(repr=False)
    cert: bytes = field(repr=False)
    key: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class ProxyConfig:
    role: HostRole
    node: NodeFlags
    upstream: str | None
    listener_tls: ServerTls | None
    peer_tls: ClientTls | None  # out-proxy only
    workers: int
    tunnel: bool = True
    allow_unauthenticated_apps: bool = False
    # in-proxy: method path -> is unary, from --descriptor-set
    known_kinds: tuple[tuple[str, bool], ...] = ()

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
                   tls_help={
                       "--tls-ca": "older all-in-one form: CA that verifies the Center and, "
                                   "with --tls-cert, the peer proxies and the listener's "
                                   "clients",
                       "--tls-cert": "older all-in-one form: this node's certificate towards "
                                     "the Center, on its listener (requiring client "
                                     "certificates signed by --tls-ca) and, out-proxy, to "
                                     "in-proxies; the separate --center-tls-*, --listen-tls-* "
                                     "and --peer-tls-* flags set each apart",
                       "--tls-key": "the key of --tls-cert"})
    listener = parser.add_argument_group(
        "the out-proxy's listener", "where apps call; plaintext by default, for an app on "
        "the same host (any gRPC channel, no library)")
    listener.add_argument("--listen-tls-cert", metavar="FILE",
                          help="TLS on the listener with this certificate (PEM)")
    listener.add_argument("--listen-tls-key", metavar="FILE",
                          help="the key of --listen-tls-cert (PEM)")
    listener.add_argument("--listen-client-ca", metavar="FILE",
                          help="require each app's client certificate, signed by this CA")
    listener.add_argument("--allow-unauthenticated-apps", action="store_true",
                          help="listen off loopback without client certificates: whoever "
                               "reaches the out-proxy calls as --service (refused otherwise)")
    peers = parser.add_argument_group(
        "TLS between the proxies", "mutual TLS on the hop between an out-proxy and an "
        "in-proxy (beneath FastProxy's own sealing of every message)")
    peers.add_argument("--peer-tls-cert", metavar="FILE",
                       help="this proxy's certificate: presented to in-proxies (out-proxy), "
                            "served to callers (in-proxy)")
    peers.add_argument("--peer-tls-key", metavar="FILE", help="the key of --peer-tls-cert")
    peers.add_argument("--peer-tls-ca", metavar="FILE",
                       help="CA that signs the other proxies' certificates")
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
    parser.add_argument("--descriptor-set", metavar="FILE",
                        help="in-proxy: the upstream's services as a FileDescriptorSet "
                             "(protoc --descriptor_set_out): their methods' kinds are known "
                             "from the start, so unary calls take the fast path and the "
                             "tunnel on an upstream without server reflection")
    return parser


def _known_kinds(args: argparse.Namespace) -> tuple[tuple[str, bool], ...]:
    if args.descriptor_set is None:
        return ()
    if args.role != "in":
        fail(PROG, "--descriptor-set is for --role in (the in-proxy tells its out-proxies)")
    try:
        data = Path(args.descriptor_set).read_bytes()
    except OSError as exc:
        fail(PROG, f"--descriptor-set {args.descriptor_set}: {exc.strerror or exc}")
    try:
        return tuple(sorted(kinds_of_descriptor_set(data).items()))
    except ValueError as exc:
        fail(PROG, f"--descriptor-set {args.descriptor_set}: {exc}")


LISTEN_TLS = ("listen_tls_cert", "listen_tls_key", "listen_client_ca")
PEER_TLS = ("peer_tls_cert", "peer_tls_key", "peer_tls_ca")


def _flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


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
    _check_tls(args)


def _check_tls(args: argparse.Namespace) -> None:
    listen = [dest for dest in LISTEN_TLS if getattr(args, dest)]
    peer = [dest for dest in PEER_TLS if getattr(args, dest)]
    if args.tls_cert and (listen or peer or args.center_tls_cert):
        fail(PROG, f"--tls-cert sets the Center's, the listener's and the peers' TLS at once "
                   f"(the older form): with {_flag((listen or peer or ['center_tls_cert'])[0])}"
                   " give each its own flags instead")
    if args.role == "in" and listen:
        fail(PROG, f"{_flag(listen[0])} is for an out-proxy: an in-proxy's listener is where "
                   "out-proxies call, secured with --peer-tls-cert, --peer-tls-key and "
                   "--peer-tls-ca")
    if args.role == "in" and args.allow_unauthenticated_apps:
        fail(PROG, "--allow-unauthenticated-apps is for an out-proxy (--role out)")
    if listen and not (args.listen_tls_cert and args.listen_tls_key):
        fail(PROG, "--listen-tls-cert and --listen-tls-key go together"
                   + ("" if args.listen_tls_cert or args.listen_tls_key
                      else " (--listen-client-ca needs them)"))
    if peer and len(peer) != len(PEER_TLS):
        fail(PROG, "--peer-tls-cert, --peer-tls-key and --peer-tls-ca go together (mutual "
                   "TLS between the proxies)")


def _listener_tls(args: argparse.Namespace) -> ServerTls | None:
    if args.tls_cert:  # the older all-in-one form
        return ServerTls(_read(args.tls_cert, "--tls-cert"), _read(args.tls_key, "--tls-key"),
                         read_flag_file(PROG, args.tls_ca, "--tls-ca"))
    if args.peer_tls_cert and args.role == "in":
        return ServerTls(_read(args.peer_tls_cert, "--peer-tls-cert"),
                         _read(args.peer_tls_key, "--peer-tls-key"),
                         _read(args.peer_tls_ca, "--peer-tls-ca"))
    if args.listen_tls_cert:
        return ServerTls(_read(args.listen_tls_cert, "--listen-tls-cert"),
                         _read(args.listen_tls_key, "--listen-tls-key"),
                         read_flag_file(PROG, args.listen_client_ca, "--listen-client-ca"))
    return None


def _peer_tls(args: argparse.Namespace) -> ClientTls | None:
    if args.role != "out":
        return None
    if args.tls_cert:  # the older all-in-one form
        return ClientTls(read_flag_file(PROG, args.tls_ca, "--tls-ca"),
                         _read(args.tls_cert, "--tls-cert"), _read(args.tls_key, "--tls-key"))
    if args.peer_tls_cert:
        return ClientTls(_read(args.peer_tls_ca, "--peer-tls-ca"),
                         _read(args.peer_tls_cert, "--peer-tls-cert"),
                         _read(args.peer_tls_key, "--peer-tls-key"))
    return None


def _read(path: str, flag: str) -> bytes:
    data = read_flag_file(PROG, path, flag)
    assert data is not None
    return data


def _check_app_authentication(args: argparse.Namespace, listener: ServerTls | None) -> None:
    """An out-proxy signs every call it forwards as its service: off loopback, whoever
    reaches it would call as that service unless apps must prove who they are."""
    if args.role != "out" or is_loopback(args.listen) or args.allow_unauthenticated_apps:
        return
    if listener is not None and listener.client_ca is not None:
        return
    fail(PROG, f"refusing to listen on {args.listen} without client authentication: this "
               f"out-proxy calls as {args.service}, so anyone who reaches it would too. "
               "Listen on loopback (beside the app), require client certificates "
               "(--listen-tls-cert, --listen-tls-key, --listen-client-ca), or accept it with "
               "--allow-unauthenticated-apps (when the network admits only the app)")


def parse_config(argv: Sequence[str] | None = None) -> ProxyConfig:
    args = build_parser().parse_args(argv)
    _check(args)
    node = node_flags(PROG, args, args.role)
    listener = _listener_tls(args)
    _check_app_authentication(args, listener)
    return ProxyConfig(
        role=ROLES[args.role],
        node=node,
        upstream=args.upstream,
        listener_tls=listener,
        peer_tls=_peer_tls(args),
        workers=args.workers,
        tunnel=args.tunnel == "on",
        allow_unauthenticated_apps=args.allow_unauthenticated_apps,
        known_kinds=_known_kinds(args),
    )
