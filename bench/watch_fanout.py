"""Center fan-out benchmark: time from an apply until N connected watchers hold the new revision,
and the Center's memory while they are connected.

    python bench/watch_fanout.py [--watchers 1000] [--rounds 3] [--json out.json]
    python bench/watch_fanout.py --replicas 3 [--watchers 1000] ...

Starts a real Center (`python -m center_svc --store memory://`) on a free loopback port, opens
N WatchPolicy streams from this process (spread over several channels and four services, both
in- and out-roles), applies a policy change that touches every node, and measures until the
last watcher has received and ACKed it. Reports the median and spread over the rounds.

With `--replicas R` it starts one etcd member on loopback (`etcd` from the PATH, a temporary
data folder) and R Center replicas sharing it (`--store etcd://...`), opens N watchers on
each replica (R x N in all), applies through the first replica and measures until every
watcher of every replica holds the new revision; each replica's memory is reported.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack
from pathlib import Path

import grpc

from fastproxy.v1 import center_pb2, center_pb2_grpc
from fastproxy.v1 import policy_pb2 as pb

SERVICES = ("svc_a", "svc_b", "svc_c", "svc_d")


def _random_secret() -> str:
    return base64.b64encode(os.urandom(32)).decode()


def policy_yaml(timeout_ms: int) -> str:
    keys = "\n".join(
        f"  {s}-id: {{type: hmac-sha256, secret: \"base64:{_random_secret()}\"}}"
        for s in SERVICES)
    services = "\n".join(
        f"  {s}:\n    identity: {{key: {s}-id}}\n    grpc_services: [bench.{s}.Svc]\n"
        f"    endpoints: [\"127.0.0.1:9{i}00\"]\n    timeout_ms: {timeout_ms}\n"
        f"    allow: [{{caller: \"*\", methods: [\"*\"]}}]"
        for i, s in enumerate(SERVICES))
    return f"version: 1\nkeys:\n{keys}\nservices:\n{services}\n"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rss_kib(pid: int) -> tuple[int, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        fields[name] = value.strip()
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


class Watcher:
    def __init__(self, index: int, stub: center_pb2_grpc.CenterStub) -> None:
        self.index = index
        self.stub = stub
        self.revision = 0
        self.changed = asyncio.Event()
        self.outbox: asyncio.Queue[center_pb2.WatchRequest] = asyncio.Queue()

    async def requests(self):  # type: ignore[no-untyped-def]
        while True:
            yield await self.outbox.get()

    async def run(self) -> None:
        role = pb.ROLE_IN if self.index % 2 else pb.ROLE_OUT
        service = SERVICES[self.index % len(SERVICES)]
        self.outbox.put_nowait(center_pb2.WatchRequest(hello=center_pb2.NodeHello(
            node_id=f"bench-{self.index}", role=role, service=service)))
        async for response in self.stub.WatchPolicy(self.requests()):
            snapshot = pb.PolicySnapshot()
            snapshot.ParseFromString(response.snapshot.snapshot)
            self.revision = snapshot.revision
            self.outbox.put_nowait(center_pb2.WatchRequest(ack=center_pb2.Ack(
                revision=snapshot.revision, content_hash=response.snapshot.content_hash)))
            self.changed.set()


async def wait_all(watchers: list[Watcher], revision: int, timeout: float) -> float:
    start = time.perf_counter()
    deadline = start + timeout
    while any(w.revision < revision for w in watchers):
        if time.perf_counter() > deadline:
            behind = sum(w.revision < revision for w in watchers)
            raise TimeoutError(f"{behind} watchers still behind revision {revision}")
        await asyncio.sleep(0.002)
    return time.perf_counter() - start


def start_etcd(directory: Path) -> tuple[subprocess.Popen[bytes], str]:
    """One etcd member on free loopback ports; (process, HOST:PORT for clients)."""
    etcd = shutil.which("etcd")
    if etcd is None:
        raise SystemExit("--replicas needs etcd on the PATH (apt-get install etcd-server)")
    client, peer = free_port(), free_port()
    proc = subprocess.Popen(
        [etcd, "--name", "bench", "--data-dir", str(directory / "etcd"),
         "--listen-client-urls", f"http://127.0.0.1:{client}",
         "--advertise-client-urls", f"http://127.0.0.1:{client}",
         "--listen-peer-urls", f"http://127.0.0.1:{peer}",
         "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
         "--initial-cluster", f"bench=http://127.0.0.1:{peer}",
         "--logger", "zap", "--log-level", "error"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return proc, f"127.0.0.1:{client}"


async def wait_serving(stub: center_pb2_grpc.CenterStub) -> None:
    for _ in range(200):
        try:
            await stub.GetCenterInfo(center_pb2.GetCenterInfoRequest(), timeout=1)
            return
        except grpc.aio.AioRpcError:
            await asyncio.sleep(0.1)
    raise SystemExit("a Center did not start")


def start_centers(args: argparse.Namespace, stack: ExitStack) -> list[subprocess.Popen[bytes]]:
    store = "memory://"
    if args.replicas > 1:
        directory = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        etcd, endpoint = start_etcd(directory)
        stack.callback(lambda: (etcd.kill(), etcd.wait(10)))
        store = f"etcd://{endpoint}/bench-{uuid.uuid4().hex[:8]}"
    centers = []
    for _ in range(args.replicas):
        address = f"127.0.0.1:{free_port()}"
        center = subprocess.Popen(
            [sys.executable, "-m", "center_svc", "--listen", address, "--store", store,
             "--log-level", "warning", "--store-wait", "30"])
        center.address = address  # type: ignore[attr-defined]
        stack.callback(lambda center=center: (center.terminate(), center.wait(10)))
        centers.append(center)
    return centers


async def bench(args: argparse.Namespace) -> dict[str, object]:
    with ExitStack() as stack:
        centers = start_centers(args, stack)
        channels = [[grpc.aio.insecure_channel(c.address)  # type: ignore[attr-defined]
                     for _ in range(args.channels)] for c in centers]
        try:
            return await measure(args, centers, channels)
        finally:
            for replica_channels in channels:
                for channel in replica_channels:
                    await channel.close()


async def measure(args: argparse.Namespace, centers: list[subprocess.Popen[bytes]],
                  channels: list[list[grpc.aio.Channel]]) -> dict[str, object]:
    admin = center_pb2_grpc.CenterStub(channels[0][0])
    for replica_channels in channels:
        await wait_serving(center_pb2_grpc.CenterStub(replica_channels[0]))
    first = await admin.ApplyPolicy(center_pb2.ApplyPolicyRequest(yaml=policy_yaml(1000)))
    assert first.applied, first.errors
    rss_before = [rss_kib(c.pid)[0] for c in centers]
    watchers = []
    for replica, replica_channels in enumerate(channels):
        for i in range(args.watchers):
            index = replica * args.watchers + i
            watchers.append(Watcher(index, center_pb2_grpc.CenterStub(
                replica_channels[i % len(replica_channels)])))
    tasks = [asyncio.create_task(w.run()) for w in watchers]
    connect = await wait_all(watchers, first.revision.revision, 180)
    rss_connected = [rss_kib(c.pid)[0] for c in centers]
    timings = []
    for round_index in range(args.rounds):
        start = time.perf_counter()
        applied = await admin.ApplyPolicy(center_pb2.ApplyPolicyRequest(
            yaml=policy_yaml(2000 + round_index)))
        assert applied.applied, applied.errors
        await wait_all(watchers, applied.revision.revision, 60)
        timings.append(time.perf_counter() - start)
        await asyncio.sleep(0.5)
    rss_end = [rss_kib(c.pid) for c in centers]
    for task in tasks:
        task.cancel()

    def mib(values: list[int]) -> float | list[float]:
        rounded = [round(v / 1024, 1) for v in values]
        return rounded[0] if len(rounded) == 1 else rounded

    return {
        "replicas": args.replicas,
        "store": "memory://" if args.replicas == 1 else "etcd (one member, loopback)",
        "watchers_per_replica": args.watchers,
        "watchers": len(watchers),
        "channels": args.channels,
        "rounds": args.rounds,
        "initial_connect_s": round(connect, 3),
        "apply_to_all_s": [round(t, 3) for t in timings],
        "apply_to_all_median_s": round(statistics.median(timings), 3),
        "center_rss_idle_mib": mib(rss_before),
        "center_rss_connected_mib": mib(rss_connected),
        "center_rss_end_mib": mib([now for now, _ in rss_end]),
        "center_rss_peak_mib": mib([peak for _, peak in rss_end]),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python "
                   f"{platform.python_version()}, grpcio {grpc.__version__}",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--watchers", type=int, default=1000,
                        help="watchers per Center replica")
    parser.add_argument("--replicas", type=int, default=1,
                        help="Center replicas; more than one share an etcd started here")
    parser.add_argument("--channels", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    result = asyncio.run(bench(args))
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
