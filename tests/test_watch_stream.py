"""The `WatchPolicy` stream as a node drives it, on either transport (fastproxy.node.
watch_stream): grpc.aio on the host's own loop (the proxies), or sync gRPC read by a thread
(the SDK and the embedded server, whose watcher runs on a background loop beside the app's).
Both take snapshots and ACK them, NACK a bad one and keep the last good, reconnect saying
the revision they hold, and end the stream when the watch stops. Against a Center the test
controls (support.fake_center)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
from support.dataplane import CALLER, DataplanePolicy
from support.fake_center import FakeCenter, scoped

from fastproxy.node.holder import PolicyHolder
from fastproxy.node.source import PolicyThread, open_policy_source
from fastproxy.node.watch import NodeIdentity
from fastproxy.pipeline.node_policy import NodePolicy
from fastproxy.v1 import policy_pb2 as pb

POLICY = DataplanePolicy().yaml_text()


@pytest.fixture
def fake_center() -> Iterator[FakeCenter]:
    center = FakeCenter().start()
    yield center
    center.stop()


def watch_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name == "fastproxy-watch" and t.is_alive()}


@pytest.mark.parametrize("threaded", [False, True], ids=["grpc.aio", "sync-thread"])
def test_a_watch_acks_nacks_reconnects_and_ends_its_stream_when_stopped(
        fake_center: FakeCenter, threaded: bool) -> None:
    others = watch_threads()  # (other tests' watches, if any are still ending)
    holder: PolicyHolder[NodePolicy] = PolicyHolder()
    source = open_policy_source(NodeIdentity("caller-1", pb.ROLE_OUT, CALLER),
                                NodePolicy.from_snapshot, holder, center=fake_center.address,
                                pinned_key=fake_center.public_key, threaded=threaded)
    watch = PolicyThread(source, name="test-watch").start()
    try:
        stream = fake_center.wait_stream()
        assert (stream.hello.service, stream.hello.role) == (CALLER, pb.ROLE_OUT)
        stream.push(fake_center.sign(scoped(POLICY, pb.ROLE_OUT, CALLER, 1)))
        reply = stream.next_reply()
        assert reply.WhichOneof("kind") == "ack" and reply.ack.revision == 1
        assert watch.wait_loaded(5) and holder.revision == 1

        stream.push(fake_center.sign(scoped(POLICY, pb.ROLE_IN, CALLER, 2)))  # not for it
        assert stream.next_reply().WhichOneof("kind") == "nack"
        assert holder.revision == 1  # the last good policy stays

        stream.end()  # the Center ends the stream: the node comes back, saying what it holds
        again = fake_center.wait_stream()
        assert again.hello.known_revision == 1
        again.push(fake_center.sign(scoped(POLICY, pb.ROLE_OUT, CALLER, 3)))
        assert again.next_reply().ack.revision == 3
        assert holder.revision == 3
        assert len(watch_threads() - others) == (1 if threaded else 0)
    finally:
        watch.stop()
    assert again.ended.wait(5)  # stopping the watch ends its stream at the Center
    deadline = time.monotonic() + 5
    while watch_threads() - others and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not watch_threads() - others  # and the thread that read it
