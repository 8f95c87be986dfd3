"""The endpoint registry without I/O: leases, stream ends, and endpoints inherited across a
Center restart."""

from __future__ import annotations

from center_svc.nodes import NodeSession, NodeTable
from fastproxy.v1 import policy_pb2 as pb


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def table() -> tuple[NodeTable, Clock, list[dict[str, list[str]]]]:
    clock = Clock()
    published: list[dict[str, list[str]]] = []
    return NodeTable(published.append, clock), clock, published


def in_node(service: str = "song") -> NodeSession:
    return NodeSession("n1", pb.ROLE_IN, service, "ipv4:127.0.0.1:1", 0.0)


def test_inherited_endpoints_are_served_until_a_lease_time_passes() -> None:
    nodes, clock, published = table()
    nodes.inherit({"song": ["10.0.0.1:9101"]}, lease_s=15)
    assert nodes.registered() == {"song": ["10.0.0.1:9101"]}
    clock.now += 14
    nodes.expire_leases()
    assert nodes.registered() == {"song": ["10.0.0.1:9101"]}
    clock.now += 2
    nodes.expire_leases()
    assert nodes.registered() == {}
    assert published == [{}]


def test_an_inherited_endpoint_registered_again_becomes_live_without_a_push() -> None:
    nodes, clock, published = table()
    nodes.inherit({"song": ["10.0.0.1:9101"]}, lease_s=15)
    session = in_node()
    nodes.add(session)
    nodes.register(session, "10.0.0.1:9101", 30)
    assert published == []  # the routes callers hold did not change
    clock.now += 20
    nodes.expire_leases()
    assert nodes.registered() == {"song": ["10.0.0.1:9101"]}  # now held by the live lease
    nodes.remove(session)
    assert nodes.registered() == {}
    assert published == [{}]


def test_a_new_registration_is_published_at_once() -> None:
    nodes, _clock, published = table()
    session = in_node()
    nodes.add(session)
    nodes.register(session, "10.0.0.9:9101", 15)
    assert published == [{"song": ["10.0.0.9:9101"]}]
