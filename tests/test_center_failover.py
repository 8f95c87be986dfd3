"""Center replicas under failure: three replicas on a three-member etcd, an in-proxy and an
out-proxy spread over them (`--center A,B,C`), calls flowing through the proxies.

- A replica killed with SIGKILL in the middle of a stream of applies, then an etcd member
  killed, then both restarted: no applied revision is lost, every node ends at the latest
  revision, no allowed call fails, and a change applied through any replica is enforced
  everywhere within 2 s.
- A replica cut off from etcd (its only member hangs, as a partitioned one does) refuses
  applies with a clear error (no split brain), and its node moves to a healthy replica.

One stack for the module; the song_service policy lists no static endpoint, so every call
finds the in-proxy through its registration (an etcd lease).
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from conftest import CenterProcess, free_port, launch_center
from support.dataplane import (
    CALLEE,
    CALLER,
    DataplanePolicy,
    Proxies,
    ProxyProcess,
    channel,
    free_address,
    poll,
    refused_with,
    succeeds,
)
from support.etcd import EtcdCluster, etcd_available, unique_prefix
from support.upstream_app import UNARY, UpstreamProcess

from fastproxy.v1 import center_pb2, center_pb2_grpc

IN_NODE = "song-in"
OUT_NODE = "chat-out"
TAKES_EFFECT_S = 2.0

pytestmark = pytest.mark.skipif(not etcd_available(), reason="etcd is not installed")


@dataclass
class ReplicaStack:
    directory: Path
    cluster: EtcdCluster
    prefix: str
    ports: list[int]
    centers: dict[int, CenterProcess] = field(default_factory=dict)
    starts: int = 0

    def address(self, index: int) -> str:
        return f"127.0.0.1:{self.ports[index]}"

    @property
    def all_addresses(self) -> str:
        return ",".join(self.address(i) for i in range(len(self.ports)))

    def start(self, index: int, members: list[int] | None = None) -> CenterProcess:
        self.starts += 1
        center = launch_center(("--registration-ttl", "5"),
                               self.directory / f"center-{index}-{self.starts}.log",
                               store=self.cluster.url(self.prefix, members),
                               port=self.ports[index])
        self.centers[index] = center
        return center

    def live(self) -> list[CenterProcess]:
        return [c for c in self.centers.values() if c.proc.poll() is None]

    def stub(self, index: int) -> center_pb2_grpc.CenterStub:
        return center_pb2_grpc.CenterStub(self.centers[index].channel())

    def nodes(self) -> dict[str, tuple[str, int]]:
        """node id -> (replica address, ACKed revision), over every live replica."""
        found: dict[str, tuple[str, int]] = {}
        for center in self.live():
            try:
                reply = center.stub().ListNodes(center_pb2.ListNodesRequest(), timeout=2)
            except grpc.RpcError:
                continue
            for node in reply.nodes:
                found[node.node_id] = (center.address, node.acked_revision)
        return found

    def apply(self, policy: DataplanePolicy, comment: str, via: int | None = None) -> int:
        """Applies through replica `via`, or through the first live replica that takes it;
        the revision."""
        order = [via] if via is not None else random.sample(list(self.centers),
                                                             len(self.centers))
        errors = []
        for index in order:
            center = self.centers[index]
            if center.proc.poll() is not None:
                continue
            try:
                reply = center.stub().ApplyPolicy(center_pb2.ApplyPolicyRequest(
                    yaml=policy.yaml_text(), comment=comment), timeout=10)
            except grpc.RpcError as exc:
                errors.append(f"{center.address}: {exc.code().name} {exc.details()}")
                continue
            assert reply.applied, (reply.errors, reply.message)
            revision: int = reply.revision.revision
            return revision
        raise ApplyFailed("; ".join(errors))

    def history(self) -> list[int]:
        reply = self.live()[0].stub().ListRevisions(center_pb2.ListRevisionsRequest(),
                                                    timeout=5)
        return [r.revision for r in reply.revisions]

    def wait_acked(self, revision: int, timeout: float) -> float:
        return poll(lambda: all(self.nodes().get(n, ("", 0))[1] >= revision
                                for n in (IN_NODE, OUT_NODE)),
                    timeout, f"both nodes to ACK revision {revision} ({self.nodes()})")


class ApplyFailed(Exception):
    pass


@dataclass
class Stack:
    replicas: ReplicaStack
    proxies: Proxies
    upstream: UpstreamProcess
    inproxy: ProxyProcess
    outproxy: ProxyProcess
    policy: DataplanePolicy


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    directory = tmp_path_factory.mktemp("failover")
    cluster = EtcdCluster(directory / "etcd", size=3)
    (directory / "etcd").mkdir()
    proxies = Proxies(directory)
    replicas = ReplicaStack(directory, cluster, unique_prefix("failover"),
                            [free_port() for _ in range(4)])
    try:
        cluster.start()
        for index in range(3):
            replicas.start(index)
        policy = DataplanePolicy()
        replicas.apply(policy, "initial", via=0)
        with UpstreamProcess(name="song") as upstream:
            centers = ",".join(replicas.address(i) for i in range(3))
            in_address = free_address()
            inproxy = proxies.start(
                "in", CALLEE, in_address, center=centers, upstream=upstream.address,
                extra=("--node-id", IN_NODE, "--cache-dir", str(directory / "in-cache")))
            outproxy = proxies.start(
                "out", CALLER, free_address(), center=centers,
                extra=("--node-id", OUT_NODE, "--cache-dir", str(directory / "out-cache")))
            poll(lambda: succeeds(outproxy.address), 15, "calls through the stack")
            yield Stack(replicas, proxies, upstream, inproxy, outproxy, policy)
            proxies.stop_all()
    finally:
        for center in replicas.live():
            center.close_channels()
            center.terminate()
        cluster.stop()


class Load:
    """Unary calls through the out-proxy in a loop, every failure kept."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.ok = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        with channel(self.address) as ch:
            method = ch.unary_unary(UNARY)
            while not self._stop.is_set():
                try:
                    assert method(b"steady", timeout=5) == b"steady"
                    self.ok += 1
                except (grpc.RpcError, AssertionError) as err:
                    self.failures.append(repr(err))
                time.sleep(0.005)


def test_a_killed_replica_and_a_killed_etcd_member_lose_no_revision_and_fail_no_call(
        stack: Stack) -> None:
    replicas = stack.replicas
    applied: list[int] = []
    refused: list[str] = []
    stop_applying = threading.Event()

    def applier() -> None:
        step = 0
        while not stop_applying.is_set():
            step += 1
            try:
                applied.append(replicas.apply(
                    stack.policy.with_(timeout_ms=3000 + step), f"step {step}"))
            except ApplyFailed as exc:  # no replica could take it just now: say so, go on
                refused.append(str(exc))
            time.sleep(0.05)

    with Load(stack.outproxy.address) as load:
        worker = threading.Thread(target=applier, daemon=True)
        worker.start()
        try:
            poll(lambda: len(applied) >= 5, 10, "applies before the failures")
            # kill -9 the replica the out-proxy is on, mid-stream of applies
            victim_address = replicas.nodes()[OUT_NODE][0]
            victim = next(i for i, c in replicas.centers.items()
                          if c.address == victim_address)
            replicas.centers[victim].kill()
            moved = poll(lambda: replicas.nodes().get(OUT_NODE, (victim_address,))[0]
                         not in ("", victim_address), 10, "the out-proxy to move")
            assert moved <= TAKES_EFFECT_S, moved
            count = len(applied)
            poll(lambda: len(applied) >= count + 5, 10, "applies after the replica died")
            # then an etcd member
            replicas.cluster.kill(1)
            count = len(applied)
            poll(lambda: len(applied) >= count + 5, 15, "applies with an etcd member down")
            # and both come back
            replicas.cluster.start_member(1)
            replicas.start(victim)
            count = len(applied)
            poll(lambda: len(applied) >= count + 5, 15, "applies after both came back")
        finally:
            stop_applying.set()
            worker.join(20)
        latest = max(applied)
        replicas.wait_acked(latest, 10)
        assert load.failures == [], load.failures[:5]
        assert load.ok > 50

    # no applied revision lost, none twice; every replica serves the latest
    history = replicas.history()
    assert history == list(range(latest, 0, -1))
    assert len(set(applied)) == len(applied)
    for center in replicas.live():
        info = center.stub().GetCenterInfo(center_pb2.GetCenterInfoRequest(), timeout=5)
        assert info.latest_revision == latest, center.address

    # a change through any replica is enforced everywhere within 2 s
    for via, (methods, wanted) in enumerate((
            (("/test.v1.Echo/Bidi",), "denied"), (("/test.v1.Echo/*",), "ok"))):
        started = time.monotonic()
        replicas.apply(stack.policy.with_(chat_methods=methods), f"change {via}", via=via)
        poll((lambda: refused_with(stack.outproxy.address, "denied")) if wanted == "denied"
             else (lambda: succeeds(stack.outproxy.address)), 5, wanted)
        assert time.monotonic() - started <= TAKES_EFFECT_S


def test_a_replica_cut_off_from_etcd_refuses_applies_and_its_node_moves(
        stack: Stack, tmp_path: Path) -> None:
    replicas = stack.replicas
    cut_off = replicas.start(3, members=[2])  # it knows only etcd member 2
    spare_port = free_port()
    # a second out-proxy whose only other Center is not up yet: it starts on the cut-off one
    node = stack.proxies.start(
        "out", CALLER, free_address(),
        center=f"{cut_off.address},127.0.0.1:{spare_port}",
        extra=("--node-id", "chat-out-2"))
    poll(lambda: replicas.nodes().get("chat-out-2", ("",))[0] == cut_off.address, 10,
         "the new out-proxy on the replica that will be cut off")
    healthy = launch_center((), tmp_path / "healthy.log",
                            store=replicas.cluster.url(replicas.prefix), port=spare_port)
    try:
        replicas.cluster.pause(2)
        try:
            poll(lambda: replicas_node("chat-out-2", healthy) is not None, 5,
                 "the node to move to the healthy replica")
            with pytest.raises(grpc.RpcError) as refused:
                cut_off.stub().ApplyPolicy(center_pb2.ApplyPolicyRequest(
                    yaml=stack.policy.with_(timeout_ms=4321).yaml_text()), timeout=10)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "cannot reach its store" in refused.value.details()
            # the rest of the cluster goes on: an apply through the healthy replica reaches
            # the node that moved
            revision = center_pb2_grpc.CenterStub(healthy.channel()).ApplyPolicy(
                center_pb2.ApplyPolicyRequest(yaml=stack.policy.with_(
                    timeout_ms=4322).yaml_text()), timeout=10).revision.revision
            poll(lambda: (replicas_node("chat-out-2", healthy) or 0) >= revision, 5,
                 "the moved node to ACK the new revision")
            assert succeeds(node.address)
        finally:
            replicas.cluster.resume(2)
        # back in touch, the replica catches up before serving again
        poll(lambda: cut_off.stub().GetCenterInfo(center_pb2.GetCenterInfoRequest(),
                                                  timeout=2).latest_revision >= revision,
             10, "the replica to catch up")
    finally:
        assert node.terminate() == 0
        healthy.close_channels()
        assert healthy.terminate() == 0
        cut_off.close_channels()
        assert cut_off.terminate() == 0
        replicas.centers.pop(3)


def replicas_node(node_id: str, center: CenterProcess) -> int | None:
    """The revision `node_id` ACKed at `center`, or None if it is not connected there."""
    reply = center.stub().ListNodes(center_pb2.ListNodesRequest(), timeout=2)
    return next((n.acked_revision for n in reply.nodes if n.node_id == node_id), None)
