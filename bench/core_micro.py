"""Micro-benchmark of the sans-IO core: microseconds per seal and per open of one message.

Usage: python bench/core_micro.py [--size BYTES] [--iterations N]
Runs the real snapshot path (YAML -> scope -> NodePolicy) with AES-256-GCM + HMAC-SHA256.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import os
import time

import yaml

from fastproxy.pipeline.node_policy import NodePolicy, NodeState
from fastproxy.policy import load_policy
from fastproxy.policy.scope import scope_snapshot
from fastproxy.v1 import policy_pb2 as pb

METHOD = "/demo.v1.Echo/Say"
NOW = 1_750_000_000.0


def _material(name: str) -> str:
    return "base64:" + base64.b64encode(hashlib.sha256(name.encode()).digest()).decode()


def _policies(encryption: str, identity: str) -> tuple[NodePolicy, NodePolicy]:
    field = "private" if identity == "ed25519" else "secret"
    document = {
        "version": 1,
        "keys": {
            "enc": {"type": encryption, "secret": _material("enc")},
            "song-id": {"type": identity, field: _material("song-id")},
            "chat-id": {"type": identity, field: _material("chat-id")},
        },
        "services": {
            "song_service": {
                "grpc_services": ["demo.v1.Echo"], "endpoints": ["127.0.0.1:9101"],
                "identity": {"key": "song-id"}, "encrypt": {"key": "enc"},
                "allow": [{"caller": "chat_service", "methods": ["*"]}],
            },
            "chat_service": {"identity": {"key": "chat-id"}},
        },
    }
    policy = load_policy(yaml.safe_dump(document))
    return (NodePolicy.from_snapshot(scope_snapshot(policy, pb.ROLE_OUT, "chat_service")),
            NodePolicy.from_snapshot(scope_snapshot(policy, pb.ROLE_IN, "song_service")))


def _per_op_us(seconds: float, iterations: int) -> float:
    return seconds / iterations * 1e6


def run(size: int, iterations: int, encryption: str, identity: str) -> None:
    caller, callee = _policies(encryption, identity)
    message = os.urandom(size)
    outbound = caller.outbound(METHOD, NOW)
    inbound = callee.inbound(METHOD, outbound.request_metadata(), NOW, NodeState())

    start = time.perf_counter()
    sealed = [outbound.seal_request(message) for _ in range(iterations)]
    seal_s = time.perf_counter() - start

    start = time.perf_counter()
    for item in sealed:
        inbound.open_request(item, NOW)
    open_s = time.perf_counter() - start

    state = NodeState(replay_cache_size=iterations + 1)
    start = time.perf_counter()
    for i in range(iterations):
        now = NOW + i * 1e-6
        call = caller.outbound(METHOD, now)
        callee.inbound(METHOD, call.request_metadata(), now, state)
    setup_s = time.perf_counter() - start

    print(f"{encryption}+{identity}, {size} B payload, {iterations} iterations:")
    print(f"  seal  {_per_op_us(seal_s, iterations):8.1f} us/message")
    print(f"  open  {_per_op_us(open_s, iterations):8.1f} us/message")
    print(f"  call setup (outbound + inbound admission) {_per_op_us(setup_s, iterations):8.1f}"
          " us/call")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--iterations", type=int, default=20_000)
    args = parser.parse_args()
    run(args.size, args.iterations, "aes-256-gcm", "hmac-sha256")
    run(args.size, args.iterations // 10, "chacha20-poly1305", "ed25519")


if __name__ == "__main__":
    main()
