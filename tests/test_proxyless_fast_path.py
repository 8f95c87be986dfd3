"""What the proxyless path's per-call savings (issue 15) must not change.

- Allow decisions are kept per (caller, method) inside one compiled policy: a call in a
  session opened under a policy that allowed it is refused once a policy without that rule
  is in force (the new policy decides afresh), the kept decisions are those the rules make,
  and they stay bounded whatever method names callers send.
- An awaited unary call of the aio SDK in embedded mode runs its check in the awaiting task
  (no task of its own): awaiting it again, or twice at once, gives the same outcome, a
  refusal too; cancelling the awaiting task cancels the call.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from support.core_policies import CALLEE, CALLER, METHOD, OTHER_METHOD, Setup, connect, refused

import fastproxy
from fastproxy.pipeline.authz import DECISION_CACHE_LIMIT
from fastproxy.pipeline.node_policy import NodeState
from fastproxy.pipeline.reasons import Reason
from fastproxy.server import aio_server_interceptors

pytestmark = pytest.mark.timeout(60)


# --- allow decisions kept per policy -------------------------------------------------------


def test_a_policy_without_the_rule_refuses_the_next_call_of_a_session() -> None:
    allowing = Setup(rules=[{"caller": CALLER, "methods": ["/demo.v1.Echo/*"]}])
    caller, callee = allowing.pair()
    state = NodeState()
    outbound, _ = connect(caller, callee, state)  # allowed, and the decision kept
    narrowed = Setup(rules=[{"caller": CALLER, "methods": [METHOD]}]).callee_policy()
    # the same session, the same caller: METHOD still allowed, OTHER_METHOD no longer
    session = outbound.session
    connect(caller, narrowed, state, session=session)
    connect(caller, callee, state, OTHER_METHOD, session=session)
    refused(Reason.DENIED, lambda: connect(caller, narrowed, state, OTHER_METHOD,
                                           session=session))


def test_kept_decisions_are_the_rules_and_stay_bounded() -> None:
    setup = Setup(extra_callers=("other_service",),
                  rules=[{"caller": CALLER, "methods": [METHOD]},
                         {"caller": "*", "methods": ["/demo.v1.Echo/*"]}])
    allow = setup.callee_policy().callee.allow
    for _ in range(2):  # the second round answers from what was kept
        for caller in (CALLER, "other_service", "nobody"):
            for method in (METHOD, OTHER_METHOD, "/demo.v2.Echo/Say", "/x/y"):
                assert allow.decide(caller, method) == allow._decide(caller, method)
    for number in range(DECISION_CACHE_LIMIT * 2 + 5):
        allow.decide(CALLER, f"/demo.v1.Echo/M{number}")
        assert len(allow._decided) <= DECISION_CACHE_LIMIT
    assert allow.decide(CALLER, METHOD).allowed
    assert allow.decide("nobody", METHOD).allowed  # "*" on every Echo method
    assert not allow.decide("nobody", "/x/y").allowed


# --- the aio SDK's unary calls, in process ---------------------------------------------------


def _secret() -> str:
    return "base64:" + base64.b64encode(os.urandom(32)).decode()


def _policy(address: str) -> str:
    return "\n".join([
        "version: 1", "keys:",
        f"  enc: {{type: aes-256-gcm, secret: \"{_secret()}\"}}",
        f"  caller-id: {{type: hmac-sha256, secret: \"{_secret()}\"}}",
        f"  callee-id: {{type: hmac-sha256, secret: \"{_secret()}\"}}",
        "services:",
        f"  {CALLER}:", "    identity: {key: caller-id}",
        f"  {CALLEE}:", "    grpc_services: [test.v1.Echo]",
        f"    endpoints: [\"{address}\"]", "    identity: {key: callee-id}",
        "    encrypt: {key: enc}", "    allow:",
        f"      - caller: {CALLER}", "        methods: [/test.v1.Echo/Echo, /test.v1.Echo/Slow]",
        ""])


async def _echo(request: bytes, _context: grpc.aio.ServicerContext) -> bytes:
    return request


async def _slow(request: bytes, _context: grpc.aio.ServicerContext) -> bytes:
    await asyncio.sleep(30)
    return request


def _address() -> str:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{probe.getsockname()[1]}"


@contextlib.asynccontextmanager
async def embedded_channel(policy: Path, address: str, center: str | None = None
                           ) -> AsyncIterator[grpc.aio.Channel]:
    """A channel of the aio SDK in embedded mode to an aio server at `address` with the
    embedded server's interceptors, both on this loop, their policy from the file or, with
    `center`, watched from that Center (on the SDK's background loop)."""
    source: dict[str, str] = ({"center": center} if center
                              else {"policy_file": str(policy)})
    interceptors = aio_server_interceptors(service=CALLEE, **source)
    assert interceptors[0].policy.wait_loaded(10)
    server = grpc.aio.server(interceptors=interceptors)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("test.v1.Echo", {
        "Echo": grpc.unary_unary_rpc_method_handler(_echo),
        "Slow": grpc.unary_unary_rpc_method_handler(_slow),
        "Denied": grpc.unary_unary_rpc_method_handler(_echo)}),))
    server.add_insecure_port(address)
    await server.start()
    made = fastproxy.aio_client_interceptors(service=CALLER, embedded=True, **source)
    assert made.wait_for_policy(10)
    try:
        async with grpc.aio.insecure_channel(address, interceptors=made) as opened:
            yield opened
    finally:
        made.close()
        await server.stop(0)
        interceptors[0].policy.stop()


async def _awaits(channel: grpc.aio.Channel) -> None:
    echo = channel.unary_unary("/test.v1.Echo/Echo")
    call = echo(b"one")
    first, second = await asyncio.gather(call, call)
    assert first == second == b"one"
    assert await call == b"one"
    assert await call.code() == grpc.StatusCode.OK
    denied = channel.unary_unary("/test.v1.Echo/Denied")(b"no")
    errors = await asyncio.gather(denied, denied, return_exceptions=True)
    assert all(isinstance(error, grpc.aio.AioRpcError) for error in errors)
    assert {error.code() for error in errors} == {grpc.StatusCode.PERMISSION_DENIED}
    with pytest.raises(grpc.aio.AioRpcError) as again:
        await denied
    assert again.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def _cancels(channel: grpc.aio.Channel) -> None:
    call = channel.unary_unary("/test.v1.Echo/Slow")(b"slow", timeout=20)

    async def wait() -> bytes:
        result: bytes = await call
        return result
    waiting = asyncio.ensure_future(wait())
    await asyncio.sleep(0.2)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert call.cancelled() or await call.code() == grpc.StatusCode.CANCELLED
    with pytest.raises(asyncio.CancelledError):
        await call


@pytest.mark.parametrize("scenario", [_awaits, _cancels], ids=["awaits", "cancels"])
def test_awaiting_an_embedded_unary_call(tmp_path: Path, scenario: object) -> None:
    address = _address()
    policy = tmp_path / "policy.yaml"
    policy.write_text(_policy(address))

    async def run() -> None:
        async with embedded_channel(policy, address) as channel:
            await scenario(channel)  # type: ignore[operator]
    asyncio.run(run())


# --- grpc.aio on two loops: the app's, and the policy watch's --------------------------------


def test_an_app_watching_a_center_logs_no_spurious_poller_errors(
        tmp_path: Path, start_center: Any, caplog: pytest.LogCaptureFixture) -> None:
    """The SDK and the embedded server watch the Center with grpc.aio on their background
    loop; grpc.aio's wake-ups then raise `BlockingIOError` on the app's loop now and then
    (about one per 100 calls with grpcio 1.78), which asyncio logged as an error with a
    traceback: a flood in a busy app (and a hang for one whose stderr is a pipe nobody
    reads). Every call still completes; the record is dropped, other asyncio errors are
    not."""
    address = _address()
    policy = tmp_path / "policy.yaml"
    policy.write_text(_policy(address))
    center = start_center("--policy", str(policy))

    async def run() -> None:
        async with embedded_channel(policy, address, center.address) as channel:
            echo = channel.unary_unary("/test.v1.Echo/Echo")

            async def worker() -> None:
                for number in range(250):
                    payload = b"%d" % number * 100
                    assert await echo(payload, timeout=10) == payload
            await asyncio.gather(*(worker() for _ in range(8)))
        asyncio.get_running_loop().call_exception_handler(
            {"message": "another callback failed", "exception": BlockingIOError(11, "x")})

    with caplog.at_level(logging.ERROR, logger="asyncio"):
        asyncio.run(run())
    errors = [record for record in caplog.records if record.name == "asyncio"]
    assert [record.getMessage() for record in errors] == ["another callback failed"]
