"""Center replicas on one etcd: real Center processes sharing a store (one etcd member on
loopback for the module, a key prefix per test), driven through WatchPolicy and the admin RPCs.

What one replica changes reaches the nodes of every replica; concurrent applies through two
replicas neither lose nor duplicate a revision; history, audit and the signing key are the same
whichever replica answers; registrations live as etcd leases; watch streams end at their
maximum age; a replica behind a node never sends it an older revision.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest
from conftest import CenterProcess, StartCenter, free_port, wait_until
from support.center_policy import PolicyKeys, apply, parse, policy_yaml, service_in
from support.dataplane import make_pki
from support.etcd import EtcdCluster, EtcdTls, unique_prefix

from fastproxy.policy.signing import verify_snapshot
from fastproxy.v1 import center_pb2, policy_pb2

IN, OUT = policy_pb2.ROLE_IN, policy_pb2.ROLE_OUT
REACHES_S = 2.0


def replicas(start_center: StartCenter, cluster: EtcdCluster, count: int,
             *flags: str) -> list[CenterProcess]:
    store = cluster.url(unique_prefix("replicas"))
    return [start_center(*flags, store=store) for _ in range(count)]


def public_key(center: CenterProcess) -> bytes:
    key: bytes = center.stub().GetCenterInfo(center_pb2.GetCenterInfoRequest(),
                                              timeout=5).public_key
    return key


def test_an_apply_through_one_replica_reaches_the_nodes_of_the_other(
        start_center: StartCenter, etcd_cluster: EtcdCluster) -> None:
    x, y = replicas(start_center, etcd_cluster, 2)
    keys = PolicyKeys()
    assert apply(x.stub(), policy_yaml(keys)).applied
    pinned = public_key(x)
    assert public_key(y) == pinned  # one signing key: a node pins it once

    chat = y.watch().hello("chat-1", OUT, "chat_service")
    assert verify_snapshot(chat.next_snapshot(), pinned).revision == 1
    started = time.monotonic()
    assert apply(x.stub(), policy_yaml(keys, song_timeout_ms=2500)).revision.revision == 2
    pushed = verify_snapshot(chat.next_snapshot(timeout=REACHES_S), pinned)
    assert time.monotonic() - started < REACHES_S
    assert pushed.revision == 2 and service_in(pushed, "song_service").timeout_ms == 2500

    # and back the other way: a rollback through y reaches a node of x
    song = x.watch().hello("song-1", IN, "song_service")
    assert verify_snapshot(song.next_snapshot(), pinned).revision == 2
    rolled = y.stub().RollbackPolicy(center_pb2.RollbackPolicyRequest(revision=1), timeout=10)
    assert rolled.applied and rolled.revision.revision == 3
    assert verify_snapshot(song.next_snapshot(timeout=REACHES_S), pinned).revision == 3


def test_concurrent_applies_through_two_replicas_lose_and_duplicate_nothing(
        start_center: StartCenter, etcd_cluster: EtcdCluster) -> None:
    x, y = replicas(start_center, etcd_cluster, 2)
    keys = PolicyKeys()
    applied: list[int] = []
    errors: list[str] = []
    lock = threading.Lock()

    def applier(center: CenterProcess, base: int) -> None:
        stub = center.stub()
        for i in range(8):
            try:
                reply = apply(stub, policy_yaml(keys, song_timeout_ms=base + i))
            except grpc.RpcError as exc:
                errors.append(repr(exc))
                continue
            with lock:
                applied.append(reply.revision.revision)

    threads = [threading.Thread(target=applier, args=(c, b))
               for c, b in ((x, 1000), (y, 2000), (x, 3000), (y, 4000))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    assert sorted(applied) == list(range(1, 33))
    history = [r.revision for r in x.stub().ListRevisions(
        center_pb2.ListRevisionsRequest(), timeout=5).revisions]
    assert history == list(range(32, 0, -1))
    assert y.stub().ListRevisions(center_pb2.ListRevisionsRequest(), timeout=5) == \
        x.stub().ListRevisions(center_pb2.ListRevisionsRequest(), timeout=5)
    assert y.stub().ListAuditEvents(center_pb2.ListAuditEventsRequest(), timeout=5) == \
        x.stub().ListAuditEvents(center_pb2.ListAuditEventsRequest(), timeout=5)
    wait_until(lambda: all(c.stub().GetCenterInfo(center_pb2.GetCenterInfoRequest(), timeout=5)
                           .latest_revision == 32 for c in (x, y)), REACHES_S,
               what="both replicas to serve revision 32")


def test_an_in_proxy_registered_through_one_replica_is_routed_to_from_the_other_until_its_lease_lapses(  # noqa: E501
        start_center: StartCenter, etcd_cluster: EtcdCluster) -> None:
    x, y = replicas(start_center, etcd_cluster, 2, "--registration-ttl", "1")
    keys = PolicyKeys()
    apply(x.stub(), policy_yaml(keys))
    song = x.watch().hello("song-in-1", IN, "song_service")
    song.next_snapshot()
    song.register("127.0.0.1:9555", lease_seconds=30)

    chat = y.watch().hello("chat-1", OUT, "chat_service")

    def endpoints() -> list[str]:
        return list(service_in(parse(chat.next_snapshot()), "song_service").endpoints)

    seen = endpoints()
    deadline = time.monotonic() + REACHES_S
    while "127.0.0.1:9555" not in seen:
        assert time.monotonic() < deadline, seen
        seen = endpoints()

    # the in-proxy and the replica it registered through both die: the endpoint leaves the
    # routes once x's lease lapses (1 s here), with nobody left to say so
    x.kill()
    gone = time.monotonic()
    while "127.0.0.1:9555" in seen:
        seen = endpoints()
    assert time.monotonic() - gone < 4.0


def test_a_node_leaving_a_replica_unregisters_there_and_not_where_it_went(
        start_center: StartCenter, etcd_cluster: EtcdCluster) -> None:
    x, y = replicas(start_center, etcd_cluster, 2)
    apply(x.stub(), policy_yaml(PolicyKeys()))
    first = x.watch().hello("song-in-1", IN, "song_service")
    first.next_snapshot()
    first.register("127.0.0.1:9556", lease_seconds=30)
    chat = y.watch().hello("chat-1", OUT, "chat_service")
    wait_until(lambda: "127.0.0.1:9556" in service_in(
        parse(chat.next_snapshot()), "song_service").endpoints, 5, what="the registration")
    moved = y.watch().hello("song-in-1", IN, "song_service")  # the node moved to y ...
    moved.next_snapshot()
    moved.register("127.0.0.1:9556", lease_seconds=30)
    time.sleep(0.3)
    first.cancel()  # ... and its stream to x ends
    chat.expect_silence(1.0)  # the endpoint stays routed
    moved.cancel()
    gone = service_in(parse(chat.next_snapshot(timeout=REACHES_S)), "song_service")
    assert "127.0.0.1:9556" not in gone.endpoints


def test_watch_streams_end_at_their_maximum_age_so_nodes_spread_again(
        start_center: StartCenter, etcd_cluster: EtcdCluster) -> None:
    (center,) = replicas(start_center, etcd_cluster, 1, "--watch-max-age", "1")
    apply(center.stub(), policy_yaml(PolicyKeys()))
    chat = center.watch().hello("chat-1", OUT, "chat_service")
    chat.next_snapshot()
    started = time.monotonic()
    assert chat.final_code(timeout=3.0) == grpc.StatusCode.UNAVAILABLE
    assert 0.7 <= time.monotonic() - started <= 1.5
    assert chat.error is not None and "maximum age" in chat.error.details()


def test_a_replica_behind_a_node_waits_instead_of_sending_an_older_revision(
        start_center: StartCenter, etcd_cluster: EtcdCluster) -> None:
    (center,) = replicas(start_center, etcd_cluster, 1)
    keys = PolicyKeys()
    apply(center.stub(), policy_yaml(keys))
    # a node that already holds revision 3 (from a replica that was ahead)
    chat = center.watch().hello("chat-1", OUT, "chat_service", known_revision=3,
                                known_hash="f" * 64)
    chat.expect_silence(0.5)
    apply(center.stub(), policy_yaml(keys, song_timeout_ms=2100))
    chat.expect_silence(0.5)
    apply(center.stub(), policy_yaml(keys, song_timeout_ms=2200))
    assert parse(chat.next_snapshot()).revision == 3


def test_a_replica_without_etcd_at_start_fails_with_one_clear_line() -> None:
    port = free_port()
    done = subprocess.run(
        [sys.executable, "-m", "center_svc", "--listen", f"127.0.0.1:{free_port()}",
         "--store", f"etcd://127.0.0.1:{port}/fp", "--store-wait", "0.5"],
        capture_output=True, text=True, timeout=30)
    assert done.returncode != 0
    assert f"cannot open policy store etcd://127.0.0.1:{port}/fp" in done.stderr


@pytest.mark.parametrize(("flags", "message"), [
    (("--store", "etcd://root:pw@127.0.0.1:2379/fp"), "credentials do not go in the URL"),
    (("--store", "etcd://127.0.0.1:2379/fp", "--etcd-user", "root"), "needs a password"),
    (("--store", "memory://", "--etcd-ca", "/etc/hostname"), "--etcd-ca needs --store etcd"),
    (("--store", "etcd://127.0.0.1:2379/fp", "--etcd-password", "pw"),
     "unrecognized arguments"),
])
def test_etcd_flags_are_checked_and_no_flag_takes_a_password(
        flags: tuple[str, ...], message: str) -> None:
    done = subprocess.run([sys.executable, "-m", "center_svc", *flags],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode != 0
    assert message in done.stderr


def test_a_replica_reaches_etcd_over_tls_as_an_etcd_user_with_the_password_off_its_command_line(
        start_center: StartCenter, tmp_path: Path) -> None:
    pki = make_pki(tmp_path, ["etcd", "center"])
    (tmp_path / "etcd").mkdir()
    cluster = EtcdCluster(tmp_path / "etcd", tls=EtcdTls(
        pki.cert("etcd"), pki.key("etcd"), pki.ca, client_certificates=True))
    password = "s3cret-" + unique_prefix("pw")
    (tmp_path / "etcd-password").write_text(password + "\n")
    tls = ("--etcd-ca", str(pki.ca), "--etcd-cert", str(pki.cert("center")),
           "--etcd-key", str(pki.key("center")))
    store = cluster.url(unique_prefix())
    try:
        cluster.start()
        cluster.enable_auth(password)
        center = start_center(*tls, "--etcd-user", "root", "--etcd-password-file",
                              str(tmp_path / "etcd-password"), store=store)
        assert apply(center.stub(), policy_yaml(PolicyKeys())).applied
        assert password not in Path(f"/proc/{center.proc.pid}/cmdline").read_text()
        assert password not in center.log()

        def refused(*flags: str, env: dict[str, str] | None = None) -> str:
            done = subprocess.run(
                [sys.executable, "-m", "center_svc", "--listen", f"127.0.0.1:{free_port()}",
                 "--store", store, "--store-wait", "1", *flags],
                capture_output=True, text=True, timeout=30, env={**os.environ, **(env or {})})
            assert done.returncode != 0
            return done.stderr

        assert "authentication failed" in refused(
            *tls, "--etcd-user", "root", env={"FASTPROXY_ETCD_PASSWORD": "wrong"})
        assert "cannot reach etcd" in refused(
            "--etcd-user", "root", env={"FASTPROXY_ETCD_PASSWORD": password})  # no TLS
    finally:
        cluster.stop()
