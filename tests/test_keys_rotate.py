"""`fastproxy keys rotate` under load: a Center (keys set by admin applies), song_service's
in-proxy, chat_service's out-proxy and an embedded chat_service SDK, all watching the Center;
load through the out-proxy (unary and bidi) and through the SDK the whole time. Rotating the
callee's encryption key, then the caller's identity key, fails no call, and at the end the
old keys are in no node's snapshot. A rotation stopped between steps is resumed."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from conftest import CenterProcess, launch_center
from support.dataplane import (
    CALLEE,
    CALLER,
    CenterAdmin,
    DataplanePolicy,
    Proxies,
    channel,
    free_address,
    poll,
)
from support.upstream_app import BIDI, UNARY, UpstreamProcess

import fastproxy
from fastproxy.v1 import center_pb2, center_pb2_grpc
from fastproxy.v1 import policy_pb2 as pb

FASTPROXY = str(Path(sys.executable).with_name("fastproxy"))


@dataclass
class Stack:
    center: CenterProcess
    in_cache: Path
    out_cache: Path
    out_address: str
    in_address: str


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    directory = tmp_path_factory.mktemp("rotate")
    center = launch_center((), directory / "center.log",
                           store=f"sqlite:///{directory / 'center.db'}")
    try:
        in_address = free_address()
        CenterAdmin(center.address).apply(DataplanePolicy(song_endpoints=(in_address,)))
        with UpstreamProcess(name="song") as upstream:
            proxies = Proxies(directory)
            try:
                in_cache, out_cache = directory / "in-cache", directory / "out-cache"
                proxies.start("in", CALLEE, in_address, center=center.address,
                              upstream=upstream.address, wait=False,
                              extra=("--cache-dir", str(in_cache)))
                out = proxies.start("out", CALLER, free_address(), center=center.address,
                                    wait=False, extra=("--cache-dir", str(out_cache)))
                for proxy in proxies.started:
                    proxy.wait_status(1)
                yield Stack(center, in_cache, out_cache, out.address, in_address)
            finally:
                proxies.stop_all()
    finally:
        assert center.terminate() == 0


def rotate(stack: Stack, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([FASTPROXY, "keys", "rotate", *argv, "--center",
                           stack.center.address, "--wait", "20"],
                          capture_output=True, text=True, timeout=90)


def key_names(cache: Path, service: str, role: str) -> set[str]:
    signed = pb.SignedSnapshot.FromString((cache / f"{service}.{role}.snapshot").read_bytes())
    return {key.name for key in pb.PolicySnapshot.FromString(signed.snapshot).keys}


def stored_policy(stack: Stack) -> str:
    with grpc.insecure_channel(stack.center.address) as ch:
        return str(center_pb2_grpc.CenterStub(ch).GetPolicy(
            center_pb2.GetPolicyRequest(), timeout=5).yaml)


class Load:
    """Calls through the out-proxy (unary and bidi) and through an embedded SDK, each in its
    own thread, until stopped; every failure kept."""

    def __init__(self, stack: Stack) -> None:
        self.failures: list[str] = []
        self.calls = 0
        self._stop = threading.Event()
        self._sdk = fastproxy.client_interceptors(service=CALLER, center=stack.center.address,
                                                  embedded=True)
        assert self._sdk.wait_for_policy(10)
        self._threads = [
            threading.Thread(target=self._through, args=(stack.out_address, ()), daemon=True),
            threading.Thread(target=self._through, args=(stack.in_address, self._sdk),
                             daemon=True),
        ]

    def _through(self, address: str, interceptors: tuple[grpc.UnaryUnaryClientInterceptor,
                                                         ...]) -> None:
        with channel(address) as plain:
            ch = grpc.intercept_channel(plain, *interceptors) if interceptors else plain
            unary, bidi = ch.unary_unary(UNARY), ch.stream_stream(BIDI)
            while not self._stop.is_set():
                try:
                    assert unary(b"steady", timeout=5) == b"steady"
                    assert list(bidi(iter([b"a", b"b"]), timeout=5)) == [b"a", b"b"]
                    self.calls += 2
                except (grpc.RpcError, AssertionError) as err:
                    self.failures.append(f"{address}: {err!r}")
                time.sleep(0.005)

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(10)
        self._sdk.close()


def test_rotating_the_encryption_and_identity_keys_under_load_fails_no_call(
        stack: Stack) -> None:
    with Load(stack) as load:
        poll(lambda: load.calls >= 20, 10, "load flowing")
        enc = rotate(stack, "song-enc-v1")
        assert enc.returncode == 0, enc.stdout + enc.stderr
        before = load.calls
        poll(lambda: load.calls >= before + 20, 10, "load after the first rotation")
        ident = rotate(stack, "chat-id")
        assert ident.returncode == 0, ident.stdout + ident.stderr
        before = load.calls
        poll(lambda: load.calls >= before + 20, 10, "load after the second rotation")
    assert load.failures == []
    out = enc.stdout
    assert "rotating song-enc-v1 -> song-enc-v2" in out
    for step in ("step 1/3: song-enc-v2 added beside song-enc-v1",
                 "step 2/3: song-enc-v2 in use, song-enc-v1 still accepted",
                 "step 3/3: song-enc-v1 retired: song-enc-v2 replaced it",
                 "nodes current: 3/3", "done: song-enc-v1 is in no node's snapshot"):
        assert step in out, out
    # the old keys are in no node's snapshot (the proxies' caches hold what they run)
    policy = stored_policy(stack)
    assert "song-enc-v1" not in policy and "chat-id:" not in policy
    assert "song-enc-v2" in policy and "chat-id-v2" in policy
    in_keys = key_names(stack.in_cache, CALLEE, "in")
    out_keys = key_names(stack.out_cache, CALLER, "out")
    assert {"song-enc-v2", "chat-id-v2"} <= in_keys and {"song-enc-v2", "chat-id-v2"} <= out_keys
    assert not ({"song-enc-v1", "chat-id"} & (in_keys | out_keys))


def test_a_rotation_is_not_started_twice_and_resumes_where_it_stopped(stack: Stack) -> None:
    # step 1 alone, as a rotation interrupted after it would leave it
    with grpc.insecure_channel(stack.center.address) as ch:
        step = center_pb2_grpc.CenterStub(ch).RotateKey(
            center_pb2.RotateKeyRequest(key="song-id", advance=True), timeout=10)
    assert step.phase == "added" and step.successor == "song-id-v2"
    again = rotate(stack, "song-id")
    assert again.returncode == 1
    assert "a rotation of song-id is under way (step 1/3 applied" in again.stderr
    assert "--resume" in again.stderr
    resumed = rotate(stack, "song-id", "--resume")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "resuming: song-id-v2 added beside song-id" in resumed.stdout
    assert "step 2/3" in resumed.stdout and "step 3/3" in resumed.stdout
    assert "step 1/3" not in resumed.stdout
    finished = rotate(stack, "song-id")
    assert (finished.returncode, finished.stdout.strip()) == (
        0, "nothing to do: song-id retired: song-id-v2 replaced it")
    unknown = rotate(stack, "no-such-key")
    assert unknown.returncode == 1 and "no key 'no-such-key'" in unknown.stderr
    wrong_kind = rotate(stack, "song-enc-v2", "--type", "ed25519")
    assert wrong_kind.returncode == 1 and "must be an encryption key too" in wrong_kind.stderr


def test_a_node_that_does_not_ack_stops_the_rotation_between_steps_and_resume_goes_on(
        stack: Stack) -> None:
    """A node of chat_service that takes snapshots and never ACKs them: step 1 is applied,
    the wait runs out naming the node, nothing more is changed; once it ACKs, `--resume`
    goes on from step 2."""
    laggard = stack.center.watch().hello("laggard-1", pb.ROLE_OUT, CALLER)
    try:
        laggard.ack_snapshot(laggard.next_snapshot())
        stopped = subprocess.run(
            [FASTPROXY, "keys", "rotate", "song-enc-v2", "--center", stack.center.address,
             "--wait", "1"], capture_output=True, text=True, timeout=60)
        assert stopped.returncode == 1, stopped.stdout + stopped.stderr
        assert "step 1/3: song-enc-v3 added beside song-enc-v2" in stopped.stdout
        assert "laggard-1 (chat_service)" in stopped.stderr
        assert "nothing more was changed" in stopped.stderr and "--resume" in stopped.stderr
        assert "song-enc-v2" in stored_policy(stack)  # still in use: step 2 never ran
        stop = threading.Event()

        def catch_up() -> None:  # from now on it ACKs what it is sent
            while not stop.is_set():
                try:
                    laggard.ack_snapshot(laggard.next_snapshot(timeout=0.2))
                except pytest.fail.Exception:  # nothing sent within the timeout
                    continue
        acker = threading.Thread(target=catch_up, daemon=True)
        acker.start()
        resumed = rotate(stack, "song-enc-v2", "--resume")
        stop.set()
        acker.join(5)
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr
        assert "step 2/3" in resumed.stdout and "step 3/3" in resumed.stdout
        assert "song-enc-v2" not in stored_policy(stack)
    finally:
        laggard.close()
