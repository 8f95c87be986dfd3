"""Audit lines inside an app: an app that sets up logging the plainest way
(`logging.basicConfig()`, whose format shows only level, logger and message) still reads who
called whom, what, and why, for refusals of the SDK and of an embedded server. Run in a
process of its own, as an app is, through the public API only."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from support.dataplane import free_address
from support.sdk_stack import CALLEE, CALLER, sdk_policy_yaml

pytestmark = pytest.mark.timeout(60)

APP = textwrap.dedent("""
    import logging, sys
    from concurrent import futures
    import grpc, fastproxy, server_svc

    logging.basicConfig()
    policy, address = sys.argv[1], sys.argv[2]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2),
                         interceptors=server_svc.server_interceptors(service="song_service",
                                                                     policy_file=policy))
    server.add_insecure_port(address)
    server.start()
    with fastproxy.client_interceptors(service="chat_service", embedded=True,
                                       policy_file=policy) as interceptors, \\
            grpc.insecure_channel(address) as plain:
        for channel, method in ((grpc.intercept_channel(plain, *interceptors),
                                 "/other.v1.Nowhere/Call"),  # the SDK refuses: no_route
                                (plain, "/demo.v1.Echo/Unary")):  # the server: unsealed
            try:
                channel.unary_unary(method)(b"x", timeout=5)
            except grpc.RpcError as refused:
                print(refused.code().name)
    server.stop(0)
""")


def test_audit_lines_name_the_parties_and_the_reason_under_basic_config(
        tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    address = free_address()
    policy.write_text(sdk_policy_yaml(address))
    app = subprocess.run([sys.executable, "-c", APP, str(policy), address],
                         capture_output=True, text=True, timeout=50)
    assert app.returncode == 0, app.stderr
    assert app.stdout.split() == ["UNIMPLEMENTED", "UNAUTHENTICATED"]
    audit = [line for line in app.stderr.splitlines() if ":fastproxy.audit:" in line]
    assert audit == [
        f"WARNING:fastproxy.audit:call refused: {CALLER} -> ? /other.v1.Nowhere/Call: "
        "no_route (proxy client, revision 1)",
        f"WARNING:fastproxy.audit:call refused: ? -> {CALLEE} /demo.v1.Echo/Unary: "
        "unauthenticated (proxy in, revision 1)",
    ], app.stderr
