"""The data plane under a Center: policy changes take effect without a restart, keys rotate
with no failed call, the in-proxy's registration is the only endpoint of its service, and the
proxies ride out a Center that dies (cache on disk, reconnect, ACK).

One stack for the module: a Center (SQLite store), the test upstream, the in-proxy of
song_service and the out-proxy of chat_service, both with `--center` and `--cache-dir`.
The policy lists NO static endpoint for song_service: every call finds the in-proxy through
its registration at the Center. Tests that stop a process bring the stack back themselves.
"""

from __future__ import annotations

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
    CenterAdmin,
    DataplanePolicy,
    Proxies,
    ProxyProcess,
    channel,
    free_address,
    new_call,
    open_session,
    poll,
    reason_of,
    refused_with,
    reply_of,
    succeeds,
    unary,
)
from support.upstream_app import UNARY, UpstreamProcess

from fastproxy.pipeline.node_policy import NodePolicy
from fastproxy.policy import load_policy
from fastproxy.policy.scope import scope_snapshot
from fastproxy.v1 import policy_pb2 as pb

IN_NODE = "song-in"
OUT_NODE = "chat-out"
TAKES_EFFECT_S = 2.0


@dataclass
class CenterStack:
    directory: Path
    upstream: UpstreamProcess
    proxies: Proxies
    center_port: int
    store: str
    policy: DataplanePolicy
    in_address: str = field(default_factory=free_address)
    center: CenterProcess | None = None
    inproxy: ProxyProcess | None = None
    outproxy: ProxyProcess | None = None
    centers: int = 0

    @property
    def center_address(self) -> str:
        return f"127.0.0.1:{self.center_port}"

    @property
    def admin(self) -> CenterAdmin:
        return CenterAdmin(self.center_address)

    @property
    def out_address(self) -> str:
        assert self.outproxy is not None
        return self.outproxy.address

    def start_center(self) -> None:
        self.centers += 1
        self.center = launch_center((), self.directory / f"center-{self.centers}.log",
                                    store=self.store, port=self.center_port)

    def start_inproxy(self) -> None:
        self.inproxy = self.proxies.start(
            "in", CALLEE, self.in_address, center=self.center_address,
            upstream=self.upstream.address,
            extra=("--node-id", IN_NODE, "--cache-dir", str(self.directory / "in-cache")))

    def start_outproxy(self, address: str | None = None) -> None:
        self.outproxy = self.proxies.start(
            "out", CALLER, address or free_address(), center=self.center_address,
            extra=("--node-id", OUT_NODE, "--cache-dir", str(self.directory / "out-cache")))

    def apply(self, policy: DataplanePolicy, comment: str = "",
              nodes: tuple[str, ...] = (IN_NODE, OUT_NODE)) -> tuple[int, float]:
        """Applies `policy`; returns its revision and how long `nodes` took to ACK it (the
        Center sends a node a new revision only when its part of the policy changed)."""
        revision = self.admin.apply(policy, comment)
        self.policy = policy
        return revision, self.admin.wait_acked(nodes, revision)

    def ensure_center_up(self) -> None:
        if self.center is None or self.center.proc.poll() is not None:
            self.start_center()

    def ensure_serving(self) -> None:
        """The stack as the tests expect it: Center up, both proxies up, calls work."""
        self.ensure_center_up()
        if self.inproxy is None or not self.inproxy.running():
            self.start_inproxy()
        if self.outproxy is None or not self.outproxy.running():
            self.start_outproxy()
        poll(lambda: succeeds(self.out_address), 15, "calls through the stack")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CenterStack]:
    directory = tmp_path_factory.mktemp("center")
    with UpstreamProcess(name="song") as upstream:
        proxies = Proxies(directory)
        stack = CenterStack(directory, upstream, proxies, free_port(),
                            f"sqlite:///{directory / 'center.db'}", DataplanePolicy())
        try:
            stack.start_center()
            stack.admin.apply(stack.policy, "initial")
            stack.start_inproxy()
            stack.start_outproxy()
            yield stack
        finally:
            proxies.stop_all()
            if stack.center is not None and stack.center.proc.poll() is None:
                assert stack.center.terminate() == 0


@pytest.fixture
def serving(stack: CenterStack) -> CenterStack:
    stack.ensure_serving()
    return stack


def out_node(policy: DataplanePolicy) -> NodePolicy:
    return NodePolicy.from_snapshot(
        scope_snapshot(load_policy(policy.yaml_text()), pb.ROLE_OUT, CALLER))


def crafted_call_works(in_address: str, policy: DataplanePolicy) -> str:
    """A call sealed here with chat_service's view of `policy`, straight to the in-proxy:
    "ok" or the reason it was refused."""
    node = out_node(policy.with_(song_endpoints=(in_address,)))
    with channel(in_address) as ch:
        try:
            call = new_call(node, in_address, session=open_session(node, in_address, ch=ch))
            reply, rpc = ch.unary_unary(UNARY).with_call(call.seal_request(b"k", final=True),
                                                         metadata=call.metadata, timeout=5)
        except grpc.RpcError as err:
            return str(reason_of(err))
    assert reply_of(call, reply, rpc) == b"k"
    return "ok"


def cached_endpoints(cache_dir: Path) -> list[str]:
    """song_service's endpoints in the out-proxy's cached snapshot."""
    path = cache_dir / f"{CALLER}.out.snapshot"
    if not path.exists():
        return []
    signed = pb.SignedSnapshot.FromString(path.read_bytes())
    snapshot = pb.PolicySnapshot.FromString(signed.snapshot)
    return next((list(s.endpoints) for s in snapshot.services if s.name == CALLEE), [])


# --- registry -------------------------------------------------------------------------


def test_calls_find_the_in_proxy_through_its_registration(serving: CenterStack) -> None:
    assert serving.policy.song_endpoints == ()
    registered = {n.node_id: list(n.registered_addresses) for n in serving.admin.nodes().nodes}
    assert registered[IN_NODE] == [serving.in_address]
    assert unary(serving.out_address, b"via registry") == b"via registry"


def test_calls_are_unavailable_once_the_in_proxy_stops(serving: CenterStack) -> None:
    assert serving.inproxy is not None
    assert serving.inproxy.terminate() == 0
    poll(lambda: refused_with(serving.out_address, "unavailable"), 5,
         "out-proxy calls to fail with unavailable")


# --- policy changes -------------------------------------------------------------------


def test_allow_to_deny_takes_effect_within_two_seconds(serving: CenterStack) -> None:
    original = serving.policy
    start = time.monotonic()
    serving.admin.apply(original.with_(chat_methods=("/test.v1.Echo/Bidi",)), "deny unary")
    serving.policy = original.with_(chat_methods=("/test.v1.Echo/Bidi",))
    took = poll(lambda: refused_with(serving.out_address, "denied"), 5, "denied")
    assert time.monotonic() - start <= TAKES_EFFECT_S, took
    serving.apply(original, "allow again", nodes=(IN_NODE,))
    poll(lambda: succeeds(serving.out_address), TAKES_EFFECT_S, "calls allowed again")


def test_a_removed_rule_is_denied_by_the_callers_own_out_proxy_within_two_seconds(
        serving: CenterStack) -> None:
    """No rule names chat_service any more: its out-proxy (sent song_service's name only)
    answers `denied`, never `no_route`."""
    original = serving.policy
    start = time.monotonic()
    serving.admin.apply(original.with_(chat_rule=False), "no rule for chat_service")
    serving.policy = original.with_(chat_rule=False)
    poll(lambda: refused_with(serving.out_address, "denied"), 5, "denied")
    assert time.monotonic() - start <= TAKES_EFFECT_S
    with pytest.raises(grpc.RpcError) as denied:
        unary(serving.out_address)
    trailers = dict(denied.value.trailing_metadata() or ())
    assert (trailers.get("fastproxy-proxy"), trailers.get("fastproxy-rule")) == ("out", "none")
    serving.apply(original, "allow again")
    poll(lambda: succeeds(serving.out_address), TAKES_EFFECT_S, "calls allowed again")


def test_a_new_key_takes_effect_within_two_seconds(serving: CenterStack) -> None:
    old = serving.policy
    new = old.with_(enc_key="song-enc-v2" if old.enc_key == "song-enc-v1" else "song-enc-v1",
                    enc_accept=())
    start = time.monotonic()
    serving.admin.apply(new, "new encryption key")
    serving.policy = new
    poll(lambda: crafted_call_works(serving.in_address, new) == "ok", 5,
         "the in-proxy to take the new key")
    poll(lambda: succeeds(serving.out_address), 5, "calls through the proxies")
    assert time.monotonic() - start <= TAKES_EFFECT_S
    assert crafted_call_works(serving.in_address, old) == "unauthenticated"


def test_key_rotation_under_steady_load_fails_no_call(serving: CenterStack) -> None:
    old_key = serving.policy.enc_key
    new_key = "song-enc-v2" if old_key == "song-enc-v1" else "song-enc-v1"
    stop = threading.Event()
    failures: list[str] = []
    ok = [0]

    def load() -> None:
        with channel(serving.out_address) as ch:
            method = ch.unary_unary(UNARY)
            while not stop.is_set():
                try:
                    assert method(b"steady", timeout=5) == b"steady"
                    ok[0] += 1
                except (grpc.RpcError, AssertionError) as err:
                    failures.append(repr(err))

    worker = threading.Thread(target=load, daemon=True)
    worker.start()
    try:
        base = serving.policy
        steps = (base.with_(enc_key=old_key, enc_accept=(new_key,)),
                 base.with_(enc_key=new_key, enc_accept=(old_key,)),
                 base.with_(enc_key=new_key, enc_accept=()))
        for step in steps:
            before = ok[0]
            serving.apply(step, f"rotation to {new_key}")
            poll(lambda before=before: ok[0] >= before + 5, 5, "calls after the apply")
    finally:
        stop.set()
        worker.join(10)
    assert failures == []
    assert ok[0] >= 15
    assert crafted_call_works(serving.in_address, base.with_(enc_key=old_key)) \
        == "unauthenticated"


# --- the Center goes away, and comes back ---------------------------------------------


def test_calls_keep_working_while_the_center_is_killed(serving: CenterStack) -> None:
    assert serving.center is not None
    serving.center.kill()
    for _ in range(10):
        assert unary(serving.out_address, b"no center") == b"no center"
        time.sleep(0.05)


def test_a_proxy_restarted_while_the_center_is_down_serves_from_its_cache(
        serving: CenterStack) -> None:
    assert serving.center is not None and serving.outproxy is not None
    # A Center that has just restarted knows no registration until the in-proxy re-registers
    # (see test_calls_keep_working_while_the_center_restarts): wait for a cached snapshot
    # that lists the in-proxy.
    poll(lambda: cached_endpoints(serving.directory / "out-cache") == [serving.in_address],
         15, "the out-proxy's cache to list the in-proxy")
    serving.center.kill()
    address = serving.outproxy.address
    assert serving.outproxy.terminate() == 0
    serving.start_outproxy(address)
    assert unary(serving.out_address, b"from cache") == b"from cache"
    assert "serving cached revision" in serving.outproxy.log()


def test_the_proxies_reconnect_and_ack_the_newest_revision_when_the_center_is_back(
        serving: CenterStack) -> None:
    assert serving.center is not None
    serving.center.kill()
    serving.start_center()  # same port, same SQLite store
    latest = serving.admin.nodes().latest_revision
    assert latest > 0
    serving.admin.wait_acked((IN_NODE, OUT_NODE), latest, timeout=15)
    revision, took = serving.apply(serving.policy.with_(timeout_ms=2500), "after restart")
    assert revision == latest + 1
    assert took <= TAKES_EFFECT_S


def test_a_second_center_outage_is_bridged_as_fast_as_the_first(serving: CenterStack) -> None:
    """The watch stream backs off from the start after each outage, not from where the
    previous outage left it (which, after a few seconds down, is several seconds)."""
    assert serving.center is not None
    latest = serving.admin.nodes().latest_revision
    serving.center.kill()
    serving.start_center()
    back = time.monotonic()
    serving.admin.wait_acked((IN_NODE, OUT_NODE), latest, timeout=15)
    assert time.monotonic() - back <= 4.0


def test_calls_keep_working_while_the_center_restarts(serving: CenterStack) -> None:
    assert serving.center is not None
    serving.center.kill()
    serving.start_center()
    failures = []
    end = time.monotonic() + 3.0
    while time.monotonic() < end:
        try:
            unary(serving.out_address, b"restart")
        except grpc.RpcError as err:
            failures.append(reason_of(err))
        time.sleep(0.01)
    assert failures == []
