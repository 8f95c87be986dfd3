"""The Center's metrics: the apply-to-last-ACK rule as plain calls, then a real Center's
Prometheus endpoint scraped over HTTP while a raw Watch client connects, ACKs and NACKs."""

from __future__ import annotations

import asyncio
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import CenterProcess, StartCenter, free_port, wait_until
from prometheus_client.parser import text_string_to_metric_families
from support.center_policy import PolicyKeys, apply, policy_yaml
from support.metric_docs import DOCS, documented_metrics, undocumented

from center_svc.metrics import MAX_TRACKED_ROLLOUTS, RolloutTracker
from center_svc.nodes import NodeSession
from fastproxy.v1 import center_pb2, policy_pb2

OUT = policy_pb2.ROLE_OUT


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def node(name: str) -> NodeSession:
    return NodeSession(name, OUT, "chat_service", "ipv4:127.0.0.1:1", 0.0,
                       changed=asyncio.Event())


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def tracker(clock: FakeClock) -> RolloutTracker:
    return RolloutTracker(clock)


# -- apply to last ACK, as plain calls -------------------------------------------------------


def test_the_sample_is_the_time_from_the_apply_to_the_last_ack(
        tracker: RolloutTracker, clock: FakeClock) -> None:
    a, b = node("a"), node("b")
    tracker.started(5, [a, b])
    clock.now += 0.5
    assert tracker.acked(a, 5) == []
    clock.now += 1.0
    assert tracker.acked(b, 5) == [1.5]
    assert tracker.pending == []


def test_an_ack_of_a_later_revision_counts_for_earlier_ones(
        tracker: RolloutTracker, clock: FakeClock) -> None:
    a = node("a")
    tracker.started(5, [a])
    clock.now += 1.0
    tracker.started(6, [a])
    clock.now += 1.0
    assert tracker.acked(a, 6) == [2.0, 1.0]


def test_an_ack_of_an_older_revision_does_not_count(tracker: RolloutTracker) -> None:
    a = node("a")
    tracker.started(5, [a])
    assert tracker.acked(a, 4) == []
    assert tracker.pending == [5]


def test_nodes_that_nack_or_disconnect_are_not_waited_for(
        tracker: RolloutTracker, clock: FakeClock) -> None:
    a, b, c = node("a"), node("b"), node("c")
    tracker.started(5, [a, b, c])
    clock.now += 1.0
    assert tracker.acked(a, 5) == []
    clock.now += 1.0
    assert tracker.nacked(b, 5) == []
    clock.now += 1.0
    assert tracker.disconnected(c) == [1.0]  # ends at a's ACK, the last one


def test_a_revision_no_node_acked_gives_no_sample(tracker: RolloutTracker) -> None:
    a = node("a")
    tracker.started(5, [a])
    assert tracker.nacked(a, 5) == []
    assert tracker.pending == []


def test_a_revision_that_changed_no_view_is_not_tracked(tracker: RolloutTracker) -> None:
    tracker.started(5, [])
    assert tracker.pending == []


def test_only_the_newest_rollouts_are_waited_on(tracker: RolloutTracker) -> None:
    stuck = node("stuck")
    for revision in range(1, MAX_TRACKED_ROLLOUTS + 3):
        tracker.started(revision, [stuck])
    assert tracker.pending == list(range(3, MAX_TRACKED_ROLLOUTS + 3))


# -- a real Center's Prometheus endpoint ------------------------------------------------------


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(port: int) -> Samples:
    """Every sample on the endpoint, by name and labels (the otel_scope_* labels dropped)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = tuple(sorted((k, v) for k, v in sample.labels.items()
                                  if not k.startswith("otel_scope")))
            samples[(sample.name, labels)] = sample.value
    return samples


def value(port: int, name: str, **labels: str) -> float:
    return scrape(port).get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture
def metrics_center(start_center: StartCenter) -> Iterator[tuple[CenterProcess, int]]:
    port = free_port()
    yield start_center("--metrics-port", str(port)), port


def test_connected_nodes_rise_and_fall_with_watch_streams(
        metrics_center: tuple[CenterProcess, int]) -> None:
    center, port = metrics_center
    assert value(port, "fastproxy_center_connected_nodes", role="out") == 0
    watcher = center.watch().hello("out-1", OUT, "chat_service")
    wait_until(lambda: value(port, "fastproxy_center_connected_nodes", role="out") == 1,
               timeout=5, what="connected_nodes{role=out} == 1")
    assert value(port, "fastproxy_center_connected_nodes", role="in") == 0
    watcher.close()
    wait_until(lambda: value(port, "fastproxy_center_connected_nodes", role="out") == 0,
               timeout=5, what="connected_nodes{role=out} back to 0")


def test_acks_nacks_and_apply_to_last_ack_are_counted(
        metrics_center: tuple[CenterProcess, int]) -> None:
    center, port = metrics_center
    keys = PolicyKeys()
    stub = center.stub()
    assert apply(stub, policy_yaml(keys)).applied
    watcher = center.watch().hello("out-1", OUT, "chat_service")
    watcher.ack_snapshot(watcher.next_snapshot())
    wait_until(lambda: value(port, "fastproxy_center_nodes_at_revision", revision="1") == 1,
               timeout=5, what="nodes_at_revision{revision=1} == 1")
    histogram = "fastproxy_center_apply_to_last_ack_seconds_count"
    assert value(port, histogram) == 0  # applied before the node connected: not a rollout

    # a change chat_service sees: the timeout of song_service, which it calls
    assert apply(stub, policy_yaml(keys, song_timeout_ms=500)).applied
    second = watcher.next_snapshot()
    watcher.ack_snapshot(second)
    wait_until(lambda: value(port, histogram) == 1, timeout=5,
               what="one apply-to-last-ACK sample")
    scraped = scrape(port)
    assert scraped[("fastproxy_center_apply_to_last_ack_seconds_sum", ())] > 0
    assert value(port, "fastproxy_center_nodes_at_revision", revision="2") == 1
    assert value(port, "fastproxy_center_nodes_at_revision", revision="1") == 0
    assert value(port, "fastproxy_center_applies_total", action="apply",
                 outcome="applied") == 2

    assert value(port, "fastproxy_center_nacks_total", service="chat_service") == 0
    watcher.nack(2, second.content_hash, "cannot load key song-id")
    wait_until(lambda: value(port, "fastproxy_center_nacks_total",
                             service="chat_service") == 1,
               timeout=5, what="nacks_total{service=chat_service} == 1")


def test_refused_applies_are_counted(metrics_center: tuple[CenterProcess, int]) -> None:
    center, port = metrics_center
    refused = apply(center.stub(), policy_yaml(PolicyKeys()) + "colour: blue\n")
    assert not refused.applied and refused.errors
    assert value(port, "fastproxy_center_refusals_total", action="refused_apply") == 1


def test_a_node_the_latest_revision_did_not_change_is_current_at_its_older_revision(
        metrics_center: tuple[CenterProcess, int]) -> None:
    """`fastproxy nodes` and the metric say whether each node runs the latest content for
    it: radar_service's node stays at revision 1 after a change it is not concerned by, and
    is current; chat_service's node is behind until it ACKs revision 2."""
    center, port = metrics_center
    keys = PolicyKeys()
    stub = center.stub()
    assert apply(stub, policy_yaml(keys)).applied
    chat = center.watch().hello("chat-1", OUT, "chat_service")
    radar = center.watch().hello("radar-1", OUT, "radar_service")
    for watcher in (chat, radar):
        watcher.ack_snapshot(watcher.next_snapshot())

    def states() -> dict[str, tuple[int, bool]]:
        nodes = stub.ListNodes(center_pb2.ListNodesRequest(), timeout=5).nodes
        return {n.node_id: (n.acked_revision, n.current) for n in nodes}

    wait_until(lambda: states() == {"chat-1": (1, True), "radar-1": (1, True)}, timeout=5,
               what="both nodes current at revision 1")
    assert value(port, "fastproxy_center_nodes_current", state="current") == 2
    assert apply(stub, policy_yaml(keys, song_timeout_ms=500)).applied  # chat's view only
    second = chat.next_snapshot()
    wait_until(lambda: states() == {"chat-1": (1, False), "radar-1": (1, True)}, timeout=5,
               what="chat behind, radar current at revision 1")
    assert value(port, "fastproxy_center_nodes_current", state="behind") == 1
    chat.ack_snapshot(second)
    wait_until(lambda: states() == {"chat-1": (2, True), "radar-1": (1, True)}, timeout=5,
               what="both current")
    wait_until(lambda: value(port, "fastproxy_center_nodes_current", state="current") == 2,
               timeout=5, what="the metric: 2 current")
    assert value(port, "fastproxy_center_nodes_current", state="behind") == 0
    radar.expect_silence(0.2)  # nothing was pushed to radar


@pytest.mark.parametrize("doc", DOCS, ids=lambda path: path.name)
def test_the_metrics_the_center_serves_are_the_ones_the_docs_list(
        metrics_center: tuple[CenterProcess, int], doc: Path) -> None:
    """Every series, after an apply, a refused apply, a NACK and a rollout, has exactly the
    labels the docs give it."""
    center, port = metrics_center
    keys = PolicyKeys()
    stub = center.stub()
    assert apply(stub, policy_yaml(keys)).applied
    assert not apply(stub, policy_yaml(keys) + "colour: blue\n").applied
    watcher = center.watch().hello("out-1", OUT, "chat_service")
    watcher.ack_snapshot(watcher.next_snapshot())
    assert apply(stub, policy_yaml(keys, song_timeout_ms=500)).applied
    second = watcher.next_snapshot()
    watcher.nack(2, second.content_hash, "cannot load key song-id")
    wait_until(lambda: value(port, "fastproxy_center_nacks_total", service="chat_service") == 1,
               timeout=5, what="the NACK counted")
    assert undocumented(scrape(port), documented_metrics(doc)) == []


def test_the_readme_and_the_reference_list_the_same_metrics_and_labels() -> None:
    readme, reference = (documented_metrics(doc) for doc in DOCS)
    assert readme == reference
