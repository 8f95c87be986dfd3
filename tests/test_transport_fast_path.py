"""The unary fast path: a method known to be unary is served with a unary handler and a
`unary_unary` upstream call; a kind is learned (upstream reflection, the in-proxy's sealed end),
never guessed; streaming methods never take the fast path.

1. Every forwarding contract test of `test_transport_contract.py` runs again here with `Unary` known
   to be unary, so its calls take the fast path (metadata both ways, errors and status details
   unchanged, deadline, cancellation, dead upstream, refusals).
2. Real processes: an in-proxy and an out-proxy (`python -m proxy_svc`) in front of an
   upstream that serves reflection learn `Unary` and serve it on the fast path, never the
   streaming methods, and the app never sees our kind trailer; in front of the test upstream
   (no reflection) everything still works on the stream path.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import test_transport_contract
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection
from support.dataplane import Proxies, call_kind, poll, start_file_stack
from support.transport import (
    KINDS,
    TOLD_UNARY,
    PassThroughRole,
    ProxyThread,
    channel,
    new_id,
)
from support.upstream_app import (
    BIDI,
    CLIENT_STREAM,
    CONTROL_ECHO,
    CONTROL_ID,
    SERVER_STREAM,
    SERVICE,
    UNARY,
    UpstreamProcess,
)

from proxy_svc.forward import ForwardingHandler
from proxy_svc.kinds import ASK_KIND, KIND_KEY, MethodKinds, ReflectionLearner
from proxy_svc.plan import Role
from proxy_svc.server import start_proxy_server
from proxy_svc.upstream import UpstreamPool

# --- 1. the contract tests of test_transport_contract, on the fast path -------------------------

for _name, _value in vars(test_transport_contract).items():
    if _name.startswith("test_") or _name in ("upstream", "upstream_b"):
        globals()[_name] = _value


@pytest.fixture
def start_proxy() -> Iterator[Any]:
    """Proxies with `Unary` known to be unary."""
    started: list[ProxyThread] = []

    def start(role: Role, **kwargs: Any) -> ProxyThread:
        proxy = ProxyThread(role, unary=[UNARY], **kwargs).start()
        started.append(proxy)
        return proxy

    yield start
    for proxy in started:
        proxy.stop()


@pytest.fixture
def proxy(upstream: UpstreamProcess, start_proxy: Any) -> ProxyThread:
    # Not "out": an out-proxy forgets a method no in-proxy confirms as unary.
    proxy: ProxyThread = start_proxy(PassThroughRole("hop", [upstream.address]))
    return proxy


def test_only_a_known_unary_method_takes_the_fast_path(proxy: ProxyThread) -> None:
    ch = channel(proxy.address)
    for kind in KINDS:
        responses, _ = call_kind(ch, kind, b"x" * 100)
        assert responses
    assert proxy.handler.fast_calls == 1
    for _ in range(3):
        call_kind(ch, "unary", b"y")
    assert proxy.handler.fast_calls == 4


# --- 2. learning the kinds, real processes -----------------------------------------------


def _echo_file() -> descriptor_pb2.FileDescriptorProto:
    """`test.v1.Echo` as a .proto would declare it (the test upstream has none)."""
    file = descriptor_pb2.FileDescriptorProto(name="test/v1/echo_fast_path.proto",
                                              package="test.v1", syntax="proto3")
    file.message_type.add(name="Raw")
    service = file.service.add(name="Echo")
    for name, client, server in (("Unary", False, False), ("ClientStream", True, False),
                                 ("ServerStream", False, True), ("Bidi", True, True)):
        service.method.add(name=name, input_type=".test.v1.Raw", output_type=".test.v1.Raw",
                           client_streaming=client, server_streaming=server)
    return file


class ReflectingFront:
    """An upstream that serves reflection: grpcio-reflection describing `test.v1.Echo`, in
    front of the test upstream (every other call passed through as is)."""

    def __init__(self, upstream: str) -> None:
        self._upstream = upstream
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self.address = ""

    def __enter__(self) -> ReflectingFront:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    async def _start(self) -> None:
        pool = descriptor_pool.DescriptorPool()
        pool.Add(_echo_file())
        self._pool = UpstreamPool()
        self._server, port = await start_proxy_server(
            "127.0.0.1:0", ForwardingHandler(PassThroughRole("app", [self._upstream]),
                                             self._pool),
            add_services=lambda server: reflection.enable_server_reflection(
                (SERVICE, reflection.SERVICE_NAME), server, pool))
        self.address = f"127.0.0.1:{port}"

    async def _stop(self) -> None:
        await self._server.stop(0)
        await self._pool.close()

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


def test_reflection_lookup_reads_each_methods_kind(upstream: UpstreamProcess) -> None:
    with ReflectingFront(upstream.address) as front:
        async def lookup() -> dict[str, bool]:
            async with grpc.aio.insecure_channel(front.address) as ch:
                learner = ReflectionLearner(MethodKinds(), lambda: ch)
                return await learner.lookup(SERVICE)

        assert asyncio.run(lookup()) == {UNARY: True, CLIENT_STREAM: False,
                                         SERVER_STREAM: False, BIDI: False}


def test_without_reflection_the_lookup_finds_nothing(upstream: UpstreamProcess) -> None:
    async def lookup() -> dict[str, bool]:
        async with grpc.aio.insecure_channel(upstream.address) as ch:
            return await ReflectionLearner(MethodKinds(), lambda: ch).lookup(SERVICE)

    assert asyncio.run(lookup()) == {}


def _calls_of_every_kind(address: str, rounds: int) -> None:
    ch = channel(address)
    for _ in range(rounds):
        for kind in KINDS:
            responses, call = call_kind(ch, kind, b"payload",
                                        metadata=((CONTROL_ECHO, "1"), ("x-echo-a", "b")))
            assert responses and all(r == b"payload" or r == b"payloadpayload"
                                     for r in responses)
            assert KIND_KEY not in dict(call.trailing_metadata() or ())
            assert dict(call.trailing_metadata() or ())["x-echo-a"] == "b"


def test_proxies_learn_a_unary_method_and_never_a_streaming_one(
        upstream: UpstreamProcess, tmp_path: Path) -> None:
    proxies = Proxies(tmp_path)
    try:
        with ReflectingFront(upstream.address) as front:
            stack = start_file_stack(proxies, front.address, tmp_path)
            out = stack.outproxies["chat_service"]
            _calls_of_every_kind(out.address, 1)
            poll(lambda: "is unary (from the in-proxy's sealed end)" in out.log(), 10,
                 "the out-proxy learning Unary")
            _calls_of_every_kind(out.address, 3)
            # The app's view of a fast-path call: the same as on the stream path.
            call_id = new_id()
            response, _ = channel(out.address).unary_unary(UNARY).with_call(
                b"checked", metadata=((CONTROL_ID, call_id),), timeout=10)
            assert response == b"checked"
            record = upstream.record(call_id)
            assert (record["method"], record["messages_received"]) == (UNARY, 1)
            assert 0 < record["deadline_remaining_s"] <= 10
            in_log, out_log = stack.inproxy.log(), out.log()
        for log in (in_log, out_log):
            for method in (CLIENT_STREAM, SERVER_STREAM, BIDI):
                assert f"method {method} is unary" not in log
        assert f"method {UNARY} is unary (from upstream reflection)" in in_log
        assert f"method {UNARY} is unary (from the in-proxy's sealed end)" in out_log
    finally:
        proxies.stop_all()


def test_without_reflection_upstream_every_kind_still_works(
        upstream: UpstreamProcess, tmp_path: Path) -> None:
    proxies = Proxies(tmp_path)
    try:
        stack = start_file_stack(proxies, upstream.address, tmp_path)
        out = stack.outproxies["chat_service"]
        _calls_of_every_kind(out.address, 3)
        assert "is unary" not in stack.inproxy.log() + out.log()
    finally:
        proxies.stop_all()


def test_a_method_wrongly_thought_unary_is_forgotten(upstream: UpstreamProcess,
                                                     start_proxy: Any) -> None:
    proxy: ProxyThread = start_proxy(PassThroughRole("in", [upstream.address]))
    proxy.handler.kinds.learn(SERVER_STREAM, True, "a test")
    ch = channel(proxy.address)
    # A unary call to a server-streaming upstream waits for the end of a stream that grpc
    # never delivers: the deadline ends it, and the method leaves the fast path.
    with pytest.raises(grpc.RpcError) as raised:
        list(ch.unary_stream(SERVER_STREAM)(b"x", timeout=1))
    assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    poll(lambda: SERVER_STREAM not in proxy.handler.kinds.unary, 5,
         "the proxy dropping the wrong kind")
    assert list(ch.unary_stream(SERVER_STREAM)(b"x", timeout=10)) == [b"x", b"x"]


class KindInjectingApp:
    """An app that claims every method is unary in its trailers (what it must not decide)."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self.address = ""

    def __enter__(self) -> KindInjectingApp:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    async def _start(self) -> None:
        async def stream(request: bytes, context: grpc.aio.ServicerContext[Any, Any]
                         ) -> Any:
            context.set_trailing_metadata(((KIND_KEY, "unary"), ("x-app", "kept")))
            yield request
            yield request

        class Handler(grpc.GenericRpcHandler):
            def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
                return grpc.unary_stream_rpc_method_handler(stream)

        self._server = grpc.aio.server()
        self._server.add_generic_rpc_handlers((Handler(),))
        port = self._server.add_insecure_port("127.0.0.1:0")
        await self._server.start()
        self.address = f"127.0.0.1:{port}"

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._server.stop(0), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


def test_an_app_cannot_declare_its_method_unary(start_proxy: Any) -> None:
    with KindInjectingApp() as app:
        inproxy: ProxyThread = start_proxy(PassThroughRole("in", [app.address]))
        outproxy: ProxyThread = start_proxy(PassThroughRole("out", [inproxy.address]))
        for _ in range(3):
            call = channel(outproxy.address).unary_stream(SERVER_STREAM)(b"m", timeout=10)
            assert list(call) == [b"m", b"m"]
            trailers = dict(call.trailing_metadata() or ())
            assert trailers == {"x-app": "kept"}
        # The in-proxy replaced the app's claim (it knows nothing of this method), so the
        # out-proxy learned nothing and every call took the stream path.
        assert SERVER_STREAM not in outproxy.handler.kinds.unary
        assert outproxy.handler.fast_calls == inproxy.handler.fast_calls == 0


def test_the_in_proxy_tells_the_kind_only_to_a_caller_that_asks(
        upstream: UpstreamProcess, start_proxy: Any) -> None:
    inproxy: ProxyThread = start_proxy(PassThroughRole("in", [upstream.address]))
    unary = channel(inproxy.address).unary_unary(UNARY)
    # A direct caller (the embedded SDK, say) is told nothing.
    _, call = unary.with_call(b"direct", timeout=10)
    trailers = dict(call.trailing_metadata() or ())
    assert KIND_KEY not in trailers and TOLD_UNARY not in trailers
    # An out-proxy asks, and is told in the call's end (sealed by the protocol: on this
    # transport without it, the stand-in entry), never by a trailer of its own.
    _, call = unary.with_call(b"asked", metadata=((KIND_KEY, ASK_KIND),), timeout=10)
    trailers = dict(call.trailing_metadata() or ())
    assert trailers[TOLD_UNARY] == "1" and KIND_KEY not in trailers


def test_a_forgotten_service_is_asked_again_only_after_a_pause(
        upstream: UpstreamProcess) -> None:
    with ReflectingFront(upstream.address) as front:
        async def scenario() -> None:
            async with grpc.aio.insecure_channel(front.address) as ch:
                kinds = MethodKinds()
                learner = ReflectionLearner(kinds, lambda: ch)

                async def learned_within(seconds: float) -> bool:
                    deadline = asyncio.get_running_loop().time() + seconds
                    while UNARY not in kinds.unary:
                        if asyncio.get_running_loop().time() > deadline:
                            return False
                        await asyncio.sleep(0.01)
                    return True

                learner.consider(BIDI)
                assert await learned_within(5)
                assert BIDI in kinds.streaming
                kinds.forget(UNARY, "a test")
                learner.ask_again(UNARY, after_s=0.5)
                learner.consider(UNARY)  # too soon: not asked
                assert not await learned_within(0.3)
                await asyncio.sleep(0.3)
                learner.consider(UNARY)
                assert await learned_within(5)
                await learner.close()

        asyncio.run(scenario())
