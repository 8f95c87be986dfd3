"""`fastproxy health ADDRESS`: asks a FastProxy process (or any gRPC server) for its
grpc.health.v1 status; exit 0 when SERVING. Meant for container health checks."""

from __future__ import annotations

import argparse
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from fastproxy.cli.commands import CliError
from fastproxy.hosting.commandline import host_port
from fastproxy.node.credentials import CenterCredentials, CredentialError

NOT_SERVING_EXIT = 1


def add_health_command(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "health", help="check a process's grpc.health.v1 status (exit 0 when SERVING)",
        description="Check a process's grpc.health.v1 status; exit 0 when SERVING.")
    parser.add_argument("address", type=host_port, metavar="HOST:PORT")
    parser.add_argument("--service", default="", help="the health service name (default: "
                                                      "the whole server)")
    parser.add_argument("--tls-ca", metavar="FILE", help="CA that verifies the server (TLS)")
    parser.add_argument("--tls-cert", metavar="FILE", help="client certificate (PEM)")
    parser.add_argument("--tls-key", metavar="FILE", help="client key (PEM)")
    parser.add_argument("--tls-server-name", default="", metavar="NAME",
                        help="name expected in the server's certificate")
    parser.add_argument("--timeout", type=float, default=3.0, metavar="SECONDS")
    parser.set_defaults(run=run_health)


def run_health(args: argparse.Namespace) -> int:
    try:
        credentials = CenterCredentials.from_files(
            tls_ca=args.tls_ca, tls_cert=args.tls_cert, tls_key=args.tls_key,
            tls_server_name=args.tls_server_name)
    except CredentialError as exc:
        raise CliError(str(exc)) from None
    with credentials.channel(args.address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            answer = stub.Check(health_pb2.HealthCheckRequest(service=args.service),
                                timeout=args.timeout)
        except grpc.RpcError as exc:
            code = exc.code().name if isinstance(exc, grpc.Call) else "UNKNOWN"
            raise CliError(f"{args.address}: {code}") from None
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)
    print(f"{args.address}: {status}")
    return 0 if answer.status == health_pb2.HealthCheckResponse.SERVING else NOT_SERVING_EXIT
