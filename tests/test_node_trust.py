"""What a node accepts from a Center, and how it talks to one (issue 13, points 1 and 2).

Attacked through real `proxy_svc` processes fed by a Center the test controls
(`support.fake_center`): a snapshot made for another role, an older revision replayed (also
after a restart), and a node started against a Center off loopback without TLS or without a
pinned key. The same checks run in every host of a node (proxies, embedded server, SDK): they
live in `CenterWatcher` (`fastproxy.node.acceptance`, `check_center_connection`).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.dataplane import CALLER, DataplanePolicy, Proxies, ProxyProcess, free_address
from support.fake_center import FakeCenter, FakeStream, scoped

import fastproxy
from fastproxy.node.acceptance import SnapshotAcceptor
from fastproxy.node.credentials import CredentialError, check_center_connection
from fastproxy.policy.signing import SnapshotError
from fastproxy.sdk import SdkConfigError
from fastproxy.v1 import center_pb2
from fastproxy.v1 import policy_pb2 as pb

OFF_LOOPBACK = "192.0.2.10:7070"  # TEST-NET-1: never reached, the node refuses before


@pytest.fixture
def proxies(tmp_path: Path) -> Iterator[Proxies]:
    started = Proxies(tmp_path)
    yield started
    started.stop_all()


@pytest.fixture
def fake_center() -> Iterator[FakeCenter]:
    center = FakeCenter().start()
    yield center
    center.stop()


POLICY = DataplanePolicy().yaml_text()


def out_snapshot(center: FakeCenter, revision: int) -> pb.SignedSnapshot:
    return center.sign(scoped(POLICY, pb.ROLE_OUT, CALLER, revision))


def start_pinned_out_proxy(proxies: Proxies, center: FakeCenter, tmp_path: Path,
                           cache: Path | None = None) -> tuple[ProxyProcess, FakeStream]:
    extra = ["--center-public-key", str(center.write_public_key(tmp_path / "center.pub"))]
    if cache is not None:
        extra += ["--cache-dir", str(cache)]
    proxy = proxies.start("out", CALLER, free_address(), wait=False, center=center.address,
                          extra=extra)
    return proxy, center.wait_stream()


def acked(reply: center_pb2.WatchRequest, revision: int) -> bool:
    return reply.WhichOneof("kind") == "ack" and reply.ack.revision == revision


def nack_error(reply: center_pb2.WatchRequest) -> str:
    assert reply.WhichOneof("kind") == "nack", reply
    error: str = reply.nack.error
    return error


# -- point 1: snapshots a node accepts ----------------------------------------------------


def test_an_out_node_refuses_a_snapshot_made_for_an_in_node_of_its_service(
        proxies: Proxies, fake_center: FakeCenter, tmp_path: Path) -> None:
    proxy, stream = start_pinned_out_proxy(proxies, fake_center, tmp_path)
    stream.push(out_snapshot(fake_center, 1))
    assert acked(stream.next_reply(), 1)

    as_in = fake_center.sign(scoped(POLICY, pb.ROLE_IN, CALLER, 2))
    stream.push(as_in)
    assert "snapshot is for role in, not out" in nack_error(stream.next_reply())
    # the node keeps running as what it is, on revision 1
    stream.push(out_snapshot(fake_center, 3))
    assert acked(stream.next_reply(), 3)
    assert proxy.running()


def test_a_node_refuses_an_older_revision_than_it_holds_even_after_a_restart(
        proxies: Proxies, fake_center: FakeCenter, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    recorded = out_snapshot(fake_center, 3)  # what a man in the middle kept from earlier
    proxy, stream = start_pinned_out_proxy(proxies, fake_center, tmp_path, cache)
    stream.push(out_snapshot(fake_center, 5))
    assert acked(stream.next_reply(), 5)

    stream.push(recorded)
    assert "revision 3 is older than revision 5 held" in nack_error(stream.next_reply())
    stream.push(out_snapshot(fake_center, 6))  # e.g. an operator's rollback: a new revision
    assert acked(stream.next_reply(), 6)

    assert proxy.terminate() == 0
    _, stream = start_pinned_out_proxy(proxies, fake_center, tmp_path, cache)
    stream.push(recorded)
    assert "revision 3 is older than revision 6 held" in nack_error(stream.next_reply())
    stream.push(out_snapshot(fake_center, 6))  # the same revision again is fine
    assert acked(stream.next_reply(), 6)


def test_the_acceptor_checks_signature_service_role_and_revision() -> None:
    center = FakeCenter()
    acceptor = SnapshotAcceptor(pb.ROLE_CLIENT, CALLER, center.public_key)
    first = out_snapshot(center, 2)  # a client-node sees the out view
    acceptor.accepted(first, acceptor.check(first))
    for signed, reason in (
            (FakeCenter().sign(scoped(POLICY, pb.ROLE_OUT, CALLER, 3)), "pinned"),
            (center.sign(scoped(POLICY, pb.ROLE_OUT, "song_service", 3)), "service"),
            (center.sign(scoped(POLICY, pb.ROLE_APP, CALLER, 3)), "role app, not out"),
            (out_snapshot(center, 1), "older than revision 2")):
        with pytest.raises(SnapshotError, match=reason):
            acceptor.check(signed)
    assert acceptor.check(out_snapshot(center, 2)).revision == 2


def test_an_unpinned_node_on_loopback_counts_revisions_per_signing_key() -> None:
    """A development Center restarted on `memory://` has a new key and starts at 1 again."""
    old, new = FakeCenter(), FakeCenter()
    acceptor = SnapshotAcceptor(pb.ROLE_OUT, CALLER)
    held = out_snapshot(old, 7)
    acceptor.accepted(held, acceptor.check(held))
    assert acceptor.check(out_snapshot(new, 1)).revision == 1
    with pytest.raises(SnapshotError, match="older"):
        acceptor.check(out_snapshot(old, 6))


# -- points 1 and 2: a Center off loopback ------------------------------------------------


def run_proxy(*flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "proxy_svc", "--role", "out", "--service",
                           CALLER, "--listen", free_address(), *flags],
                          capture_output=True, text=True, timeout=60)


def test_a_node_refuses_to_start_with_plaintext_to_a_center_off_loopback() -> None:
    done = run_proxy("--center", OFF_LOOPBACK, "--token", "node-token")
    assert done.returncode == 2
    (line,) = done.stderr.splitlines()
    assert line.startswith("proxy_svc: error: refusing plaintext to the Center")
    assert "--tls-ca" in line
    assert "node-token" not in line


def test_a_node_refuses_to_start_without_a_pinned_key_for_a_center_off_loopback(
        tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("not read before the check fails\n")
    done = run_proxy("--center", f"center.example:7070,{OFF_LOOPBACK}", "--tls-ca", str(ca))
    assert done.returncode == 2
    (line,) = done.stderr.splitlines()
    assert "the Center at center.example:7070 is not on loopback" in line
    assert "--center-public-key" in line


def test_the_sdk_and_the_embedded_server_refuse_the_same(tmp_path: Path) -> None:
    with pytest.raises(SdkConfigError, match="refusing plaintext"):
        fastproxy.client_interceptors(service=CALLER, center=OFF_LOOPBACK, embedded=True)
    ca = tmp_path / "ca.pem"
    ca.write_text("a CA bundle\n")
    with pytest.raises(SdkConfigError, match="center_public_key"):
        fastproxy.aio_client_interceptors(service=CALLER, center=OFF_LOOPBACK,
                                          tls_ca=str(ca))
    import server_svc

    with pytest.raises(SdkConfigError, match="refusing plaintext"):
        server_svc.server_interceptors(service="song_service", center=OFF_LOOPBACK)


def test_loopback_centers_need_neither_tls_nor_a_pin() -> None:
    for center in ("127.0.0.1:7070", "[::1]:7070", "localhost:7070", "127.0.0.2:1,[::1]:2"):
        check_center_connection(center, uses_tls=False, pinned_key=None)
    check_center_connection(OFF_LOOPBACK, uses_tls=True, pinned_key=bytes(32))
    with pytest.raises(CredentialError, match="plaintext"):  # the CLI: TLS, no pin
        check_center_connection(OFF_LOOPBACK, uses_tls=False, pinned_key=None, node=False)
    check_center_connection(OFF_LOOPBACK, uses_tls=True, pinned_key=None, node=False)
