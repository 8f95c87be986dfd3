"""A Center the test controls: it serves `WatchPolicy` to real nodes and sends them whatever
snapshot the test pushes, signed with a key the test holds (a Center impostor, or a man in the
middle replaying what a real Center once signed).

    center = FakeCenter().start()
    ... start a node with --center center.address --center-public-key <center.public_key>
    stream = center.wait_stream()                  # the node's hello arrived
    stream.push(center.sign(snapshot))             # or a recorded SignedSnapshot
    reply = stream.next_reply()                    # the node's ACK or NACK
"""

from __future__ import annotations

import base64
import queue
import threading
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fastproxy.policy import load_policy
from fastproxy.policy.scope import scope_snapshot
from fastproxy.policy.signing import public_bytes, sign_snapshot
from fastproxy.v1 import center_pb2, center_pb2_grpc
from fastproxy.v1 import policy_pb2 as pb

_END = object()


class FakeStream:
    """One node's WatchPolicy stream."""

    def __init__(self, hello: center_pb2.NodeHello) -> None:
        self.hello = hello
        self.outbox: queue.Queue[object] = queue.Queue()
        self.replies: queue.Queue[center_pb2.WatchRequest] = queue.Queue()
        self.ended = threading.Event()

    def push(self, signed: pb.SignedSnapshot) -> None:
        self.outbox.put(center_pb2.WatchResponse(snapshot=signed))

    def end(self) -> None:
        """Ends the stream with OK (as a Center that stops or sheds the node does)."""
        self.outbox.put(_END)

    def next_reply(self, timeout: float = 10.0) -> center_pb2.WatchRequest:
        """The node's next ACK or NACK (lease renewals skipped)."""
        while True:
            try:
                reply = self.replies.get(timeout=timeout)
            except queue.Empty:
                pytest.fail(f"the node sent no ACK or NACK within {timeout} s")
            if reply.WhichOneof("kind") in ("ack", "nack"):
                return reply


class FakeCenter:
    def __init__(self, key: Ed25519PrivateKey | None = None) -> None:
        self.key = key or Ed25519PrivateKey.generate()
        self.streams: queue.Queue[FakeStream] = queue.Queue()
        self._server: grpc.Server | None = None
        self.address = ""

    @property
    def public_key(self) -> bytes:
        return public_bytes(self.key)

    def write_public_key(self, path: Path) -> Path:
        """The key as `--center-public-key` takes it (base64 text)."""
        path.write_text(base64.b64encode(self.public_key).decode() + "\n")
        return path

    def sign(self, snapshot: pb.PolicySnapshot) -> pb.SignedSnapshot:
        return sign_snapshot(snapshot, self.key)

    def start(self) -> FakeCenter:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        center_pb2_grpc.add_CenterServicer_to_server(_Servicer(self), server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        self._server, self.address = server, f"127.0.0.1:{port}"
        return self

    def wait_stream(self, timeout: float = 20.0) -> FakeStream:
        """The next stream a node opened (its hello received)."""
        try:
            return self.streams.get(timeout=timeout)
        except queue.Empty:
            pytest.fail(f"no node opened a WatchPolicy stream within {timeout} s")

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(grace=None)


class _Servicer(center_pb2_grpc.CenterServicer):  # type: ignore[misc]
    def __init__(self, center: FakeCenter) -> None:
        self.center = center

    def WatchPolicy(self, requests: Iterator[center_pb2.WatchRequest],
                    context: grpc.ServicerContext) -> Iterator[center_pb2.WatchResponse]:
        first = next(requests)
        stream = FakeStream(first.hello)
        context.add_callback(lambda: stream.outbox.put(_END))

        def read() -> None:
            try:
                for request in requests:
                    stream.replies.put(request)
            except grpc.RpcError:
                pass
            finally:
                stream.ended.set()

        threading.Thread(target=read, daemon=True).start()
        self.center.streams.put(stream)
        while (item := stream.outbox.get()) is not _END:
            assert isinstance(item, center_pb2.WatchResponse)
            yield item


def scoped(yaml_text: str, role: int, service: str, revision: int) -> pb.PolicySnapshot:
    """The snapshot a Center would make of `yaml_text` for a node of (role, service)."""
    snapshot = scope_snapshot(load_policy(yaml_text), role, service)  # type: ignore[arg-type]
    snapshot.revision = revision
    return snapshot
