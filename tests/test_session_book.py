"""The out-proxy's sessions (`proxy_svc.sessions.SessionBook`) against the in-proxy's end of the
handshake (`SessionService`), over real gRPC on loopback, with one simulated clock for both:
calls wait for a handshake only when no session serves; a session that is due keeps serving
while the next one opens aside; concurrent calls share one handshake; a handshake that fails
aside costs no call."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import grpc
from support.core_policies import CALLEE, METHOD, T0, Setup

from fastproxy.node.holder import PolicyHolder
from fastproxy.pipeline.handshake import SESSION_LIFETIME_S, CallerSession
from fastproxy.pipeline.node_policy import NodePolicy, NodeState
from fastproxy.pipeline.stages import Destination
from proxy_svc.sessions import SessionBook, SessionService


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


async def eventually(predicate: Callable[[], bool], what: str, limit_s: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + limit_s
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, what
        await asyncio.sleep(0.01)


@dataclass
class Rig:
    """A book, the caller's policy and destination, a channel to a real in-proxy session
    service at `address`, that server, and the clock they share."""

    book: SessionBook
    policy: NodePolicy
    destination: Destination
    channel: grpc.aio.Channel
    address: str
    server: grpc.aio.Server
    clock: Clock

    async def session(self, channel: grpc.aio.Channel | None = None) -> CallerSession:
        return await self.book.session(self.policy, self.destination, channel or self.channel,
                                       5)


def run(scenario: Callable[[Rig], Awaitable[None]]) -> None:
    async def main() -> None:
        caller, callee = Setup().pair()
        clock = Clock()
        holder: PolicyHolder[NodePolicy] = PolicyHolder()
        holder.replace(callee, 1, "")
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((SessionService(CALLEE, holder, NodeState(), clock),))
        address = f"127.0.0.1:{server.add_insecure_port('127.0.0.1:0')}"
        await server.start()
        try:
            async with grpc.aio.insecure_channel(address) as channel:
                await scenario(Rig(SessionBook(clock), caller, caller.route(METHOD), channel,
                                   address, server, clock))
        finally:
            await server.stop(0)
    asyncio.run(asyncio.wait_for(main(), 30))


def test_a_session_serves_calls_until_it_is_due_with_one_handshake() -> None:
    async def scenario(rig: Rig) -> None:
        first = await rig.session()
        for _ in range(10):
            rig.clock.now += 10
            assert await rig.session() is first
        assert rig.book.handshakes == 1
    run(scenario)


def test_a_due_session_keeps_serving_while_the_next_one_opens_aside() -> None:
    async def scenario(rig: Rig) -> None:
        first = await rig.session()
        rig.clock.now += SESSION_LIFETIME_S * 0.85  # due, still usable
        assert first.due(rig.clock.now)
        # returned at once: the call does not wait for the handshake it started
        assert await rig.session() is first
        await eventually(lambda: rig.book.handshakes == 2, "the next session opened aside")
        await asyncio.sleep(0)
        second = await rig.session()
        assert second is not first
        assert second.session_id != first.session_id
        assert not second.due(rig.clock.now)
        assert rig.book.handshakes == 2
    run(scenario)


def test_a_session_past_its_use_is_replaced_before_the_call_goes() -> None:
    async def scenario(rig: Rig) -> None:
        first = await rig.session()
        rig.clock.now += SESSION_LIFETIME_S * 0.96  # in its lifetime, too late to start a call
        second = await rig.session()
        assert second is not first and rig.book.handshakes == 2
    run(scenario)


def test_concurrent_calls_share_one_handshake_and_warm_opens_one_before_any_call() -> None:
    async def scenario(rig: Rig) -> None:
        sessions = await asyncio.gather(*(rig.session() for _ in range(20)))
        assert len({id(s) for s in sessions}) == 1 and rig.book.handshakes == 1
        # warm: a session on another connection, opened with no call waiting for it
        async with grpc.aio.insecure_channel(rig.address) as other:
            rig.book.warm(rig.policy, rig.destination, other)
            rig.book.warm(rig.policy, rig.destination, other)  # one under way: no second
            await eventually(lambda: rig.book.handshakes == 2, "the warmed session")
            await asyncio.sleep(0)
            warmed = await rig.session(other)
            assert warmed is not sessions[0] and rig.book.handshakes == 2
            rig.book.warm(rig.policy, rig.destination, other)  # it serves: nothing to do
            await asyncio.sleep(0.1)
            assert rig.book.handshakes == 2
    run(scenario)


def test_a_failed_handshake_aside_leaves_the_due_session_serving() -> None:
    async def scenario(rig: Rig) -> None:
        first = await rig.session()
        await rig.server.stop(0)
        rig.clock.now += SESSION_LIFETIME_S * 0.85
        served: list[CallerSession] = []
        for _ in range(5):  # each call past due tries aside; none waits or fails for it
            served.append(await rig.session())
            await asyncio.sleep(0.05)
        assert all(session is first for session in served)
        assert rig.book.handshakes == 1
    run(scenario)
