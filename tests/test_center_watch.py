"""WatchPolicy with real Center processes: snapshots, pushes, signatures, scoping, ACK/NACK,
reconnects and the in-proxy endpoint registry."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import grpc
from conftest import CenterProcess, StartCenter, wait_until
from support.center_policy import SONG_ENDPOINT, PolicyKeys, apply, parse, policy_yaml, service_in

from fastproxy.policy.signing import verify_snapshot
from fastproxy.v1 import center_pb2, policy_pb2

IN, OUT = policy_pb2.ROLE_IN, policy_pb2.ROLE_OUT


def center_key(center: CenterProcess) -> bytes:
    info = center.stub().GetCenterInfo(center_pb2.GetCenterInfoRequest(), timeout=5)
    key: bytes = info.public_key
    return key


def node_status(center: CenterProcess, node_id: str) -> center_pb2.NodeStatus | None:
    nodes = center.stub().ListNodes(center_pb2.ListNodesRequest(), timeout=5).nodes
    return next((n for n in nodes if n.node_id == node_id), None)


def test_first_snapshot_on_hello_push_on_change_and_nothing_for_an_untouched_node(
        start_center: StartCenter, tmp_path: Path) -> None:
    store = "sqlite:///" + str(tmp_path / "center.db")
    keys = PolicyKeys()
    center = start_center(store=store)
    stub = center.stub()
    pinned = center_key(center)
    assert len(pinned) == 32
    apply(stub, policy_yaml(keys))

    chat = center.watch().hello("chat-1", OUT, "chat_service")
    first = verify_snapshot(chat.next_snapshot(), pinned)
    assert first.revision == 1 and first.node_service == "chat_service"
    assert service_in(first, "song_service").timeout_ms == 2000

    # weather and radar are none of chat's business: revision 2 must not reach it
    assert apply(stub, policy_yaml(keys, weather_timeout_ms=1500)).revision.revision == 2
    chat.expect_silence(1.0)

    assert apply(stub, policy_yaml(keys, weather_timeout_ms=1500,
                                   song_timeout_ms=2500)).revision.revision == 3
    pushed = verify_snapshot(chat.next_snapshot(), pinned)
    assert pushed.revision == 3
    assert service_in(pushed, "song_service").timeout_ms == 2500
    center.close_channels()
    assert center.terminate() == 0

    # the signing key lives in the store: same key after a restart, snapshots still verify
    center = start_center(store=store)
    assert center_key(center) == pinned
    again = center.watch().hello("chat-1", OUT, "chat_service")
    assert verify_snapshot(again.next_snapshot(), pinned).revision == 3


def test_a_node_of_an_unrelated_service_receives_an_empty_snapshot_and_no_secret(
        start_center: StartCenter) -> None:
    keys = PolicyKeys()
    center = start_center()
    apply(center.stub(), policy_yaml(keys))
    for role in (IN, OUT, policy_pb2.ROLE_CLIENT):
        lonely = center.watch().hello(f"lonely-{role}", role, "lonely_service")
        raw, response = lonely.next_response()
        snapshot = parse(response.snapshot)
        assert list(snapshot.keys) == [] and list(snapshot.services) == []
        for name, secret in keys.secrets().items():
            assert secret not in raw, f"{name} sent to a lonely_service node"


def test_an_out_node_gets_the_callees_encryption_key_but_not_its_private_identity_seed(
        start_center: StartCenter) -> None:
    keys = PolicyKeys()
    center = start_center()
    apply(center.stub(), policy_yaml(keys))
    raw, response = center.watch().hello("chat-1", OUT, "chat_service").next_response()
    assert keys.song_enc in raw
    assert keys.chat_id in raw  # its own identity, to sign with
    for secret in (keys.song_id, keys.weather_id, keys.weather_enc, keys.radar_id):
        assert secret not in raw
    sent = {k.name: k for k in parse(response.snapshot).keys}
    assert sent["song-id"].public_key == PolicyKeys.public_of(keys.song_id)
    assert sent["song-id"].secret == b""

    raw_in, _ = center.watch().hello("song-1", IN, "song_service").next_response()
    assert keys.song_id in raw_in and keys.song_enc in raw_in
    for secret in (keys.weather_id, keys.weather_enc, keys.radar_id):
        assert secret not in raw_in


def test_ack_and_nack_are_recorded_and_listed_by_list_nodes_and_the_cli(
        start_center: StartCenter) -> None:
    keys = PolicyKeys()
    center = start_center()
    stub = center.stub()
    apply(stub, policy_yaml(keys))
    chat = center.watch().hello("chat-1", OUT, "chat_service")
    first = chat.next_snapshot()
    chat.ack_snapshot(first)
    wait_until(lambda: (s := node_status(center, "chat-1")) is not None
               and s.acked_revision == 1, 5, what="ACK of revision 1 listed")
    status = node_status(center, "chat-1")
    assert status is not None
    assert status.acked_hash == first.content_hash and status.sent_revision == 1
    assert status.role == OUT and status.service == "chat_service"
    assert status.peer and status.connected_since_unix > time.time() - 60

    apply(stub, policy_yaml(keys, song_timeout_ms=999))
    second = chat.next_snapshot()
    chat.nack(2, second.content_hash, "cannot compile: test says no")
    wait_until(lambda: (s := node_status(center, "chat-1")) is not None
               and s.nacked_revision == 2, 5, what="NACK of revision 2 listed")

    cli = Path(sys.executable).parent / "fastproxy"
    result = subprocess.run([str(cli), "nodes", "--center", center.address, "--json"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    listed = json.loads(result.stdout)
    assert listed["latest_revision"] == 2
    (row,) = [n for n in listed["nodes"] if n["node_id"] == "chat-1"]
    assert row["acked_revision"] == 1 and row["acked_hash"] == first.content_hash
    assert row["nacked_revision"] == 2 and row["nack_error"] == "cannot compile: test says no"
    assert row["sent_revision"] == 2


def test_a_node_reconnecting_with_the_current_revision_and_hash_is_sent_nothing(
        start_center: StartCenter) -> None:
    keys = PolicyKeys()
    center = start_center()
    apply(center.stub(), policy_yaml(keys))
    first = center.watch().hello("chat-1", OUT, "chat_service")
    held = first.next_snapshot()
    first.close()
    assert first.final_code() == grpc.StatusCode.OK

    again = center.watch().hello("chat-1", OUT, "chat_service", known_revision=1,
                                 known_hash=held.content_hash)
    again.expect_silence(1.0)
    status = node_status(center, "chat-1")
    assert status is not None and status.acked_revision == 1
    assert status.acked_hash == held.content_hash

    stale = center.watch().hello("chat-2", OUT, "chat_service", known_revision=1,
                                 known_hash="0" * 64)
    assert parse(stale.next_snapshot()).revision == 1


def endpoints_of_song(signed: policy_pb2.SignedSnapshot) -> list[str]:
    return list(service_in(parse(signed), "song_service").endpoints)


def test_registered_in_proxies_join_the_callers_routes_and_leave_when_lease_or_stream_ends(
        start_center: StartCenter) -> None:
    keys = PolicyKeys()
    center = start_center()
    apply(center.stub(), policy_yaml(keys))
    chat = center.watch().hello("chat-1", OUT, "chat_service")
    assert endpoints_of_song(chat.next_snapshot()) == [SONG_ENDPOINT]

    song = center.watch().hello("song-1", IN, "song_service")
    song.next_snapshot()
    song.register("127.0.0.1:9200", lease_seconds=1)
    assert endpoints_of_song(chat.next_snapshot()) == [SONG_ENDPOINT, "127.0.0.1:9200"]

    # renewed in time: it stays, and renewals push nothing
    renew_until = time.monotonic() + 1.6
    while time.monotonic() < renew_until:
        song.register("127.0.0.1:9200", lease_seconds=1)
        chat.expect_silence(0.3)

    # not renewed: it leaves within the lease plus the Center's expiry tick
    stopped = time.monotonic()
    assert endpoints_of_song(chat.next_snapshot(timeout=4)) == [SONG_ENDPOINT]
    assert time.monotonic() - stopped < 3.0

    song.register("127.0.0.1:9200", lease_seconds=30)
    assert endpoints_of_song(chat.next_snapshot()) == [SONG_ENDPOINT, "127.0.0.1:9200"]
    song.close()
    closed = time.monotonic()
    assert endpoints_of_song(chat.next_snapshot()) == [SONG_ENDPOINT]
    assert time.monotonic() - closed < 1.0


def test_an_in_proxy_stream_cancelled_by_the_node_leaves_the_routes_at_once(
        start_center: StartCenter) -> None:
    center = start_center()
    apply(center.stub(), policy_yaml(PolicyKeys()))
    chat = center.watch().hello("chat-1", OUT, "chat_service")
    chat.next_snapshot()
    song = center.watch().hello("song-1", IN, "song_service")
    song.register("127.0.0.1:9300", lease_seconds=30)
    assert endpoints_of_song(chat.next_snapshot()) == [SONG_ENDPOINT, "127.0.0.1:9300"]
    song.cancel()
    assert endpoints_of_song(chat.next_snapshot(timeout=2)) == [SONG_ENDPOINT]


def test_nodes_and_registrations_from_before_the_first_policy_are_served_once_it_arrives(
        start_center: StartCenter) -> None:
    center = start_center()
    song = center.watch().hello("song-1", IN, "song_service")
    song.register("127.0.0.1:9400", lease_seconds=30)
    chat = center.watch().hello("chat-1", OUT, "chat_service")
    wait_until(lambda: len(center.stub().ListNodes(center_pb2.ListNodesRequest(),
                                                   timeout=5).nodes) == 2, 5,
               what="both nodes listed")
    chat.expect_silence(0.3)  # no policy yet: nothing to send
    apply(center.stub(), policy_yaml(PolicyKeys()))
    first = chat.next_snapshot()
    assert parse(first).revision == 1
    assert endpoints_of_song(first) == [SONG_ENDPOINT, "127.0.0.1:9400"]
    assert parse(song.next_snapshot()).revision == 1


def test_a_stream_that_does_not_open_with_a_valid_hello_is_refused(
        start_center: StartCenter) -> None:
    center = start_center()
    apply(center.stub(), policy_yaml(PolicyKeys()))
    for node_id, role, service in (("", OUT, "chat_service"), ("n-1", OUT, ""),
                                   ("n-1", policy_pb2.ROLE_UNSPECIFIED, "chat_service")):
        refused = center.watch().hello(node_id, role, service)
        assert refused.final_code() == grpc.StatusCode.INVALID_ARGUMENT
        assert refused.received == []
