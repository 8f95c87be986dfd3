"""What an app sees of its caller's metadata in an embedded server is what it would see behind
an in-proxy: none of the protocol's `fastproxy-*` entries (`fastproxy-call-bin`,
`fastproxy-kind`, ...), the credentials the CALL record carried restored, in grpc's own
types; and its own interceptors (after FastProxy's) see the same, and nothing of a call
FastProxy refused.

One policy, three callees of chat_service, each with the same recording app: `behind_in`
(a plain sync server behind a real in-proxy, `python -m proxy_svc --role in`), and
`embedded_sync` / `embedded_aio` (the app's own servers with `server_interceptors` /
`aio_server_interceptors`, in this process). The callers: a real out-proxy, and the SDK in
embedded mode (sync and aio).
"""

from __future__ import annotations

import asyncio
import base64
import os
import threading
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from support.dataplane import Proxies, free_address

import fastproxy
import server_svc

pytestmark = pytest.mark.timeout(60)

CALLER = "chat_service"
CALLEES = ("behind_in", "embedded_sync", "embedded_aio")
# Sent by the caller: app entries (one name twice, in order, a binary one), credentials.
SENT = (("x-app", "1"), ("authorization", "Bearer app-token"), ("x-app", "2"),
        ("cookie", "session=abc"), ("x-bin-bin", b"\x00\x01"))


def _secret() -> str:
    return "base64:" + base64.b64encode(os.urandom(32)).decode()


def policy_yaml(endpoints: dict[str, str]) -> str:
    lines = ["version: 1", "keys:"]
    for name in (*CALLEES, CALLER):
        lines.append(f'  {name}-id: {{type: hmac-sha256, secret: "{_secret()}"}}')
    lines.append(f'  enc: {{type: aes-256-gcm, secret: "{_secret()}"}}')
    lines.append("services:")
    for name in CALLEES:
        lines += [f"  {name}:", f"    grpc_services: [test.v1.{grpc_service(name)}]",
                  f'    endpoints: ["{endpoints[name]}"]', f"    identity: {{key: {name}-id}}",
                  "    encrypt: {key: enc}", "    allow:", f"      - caller: {CALLER}",
                  '        methods: ["*"]']
    lines += [f"  {CALLER}:", f"    identity: {{key: {CALLER}-id}}"]
    return "\n".join(lines) + "\n"


def grpc_service(callee: str) -> str:
    return "".join(part.title() for part in callee.split("_"))


def method_of(callee: str) -> str:
    return f"/test.v1.{grpc_service(callee)}/Call"


@dataclass
class Seen:
    """What the app saw of each call: its handler's `invocation_metadata()` and its own
    interceptor's `handler_call_details.invocation_metadata`, by the call's `x-call` entry."""

    handler: dict[str, Any] = field(default_factory=dict)
    interceptor: list[Any] = field(default_factory=list)

    def handle(self, request: bytes, context: Any) -> bytes:
        metadata = context.invocation_metadata()
        self.handler[dict(metadata)["x-call"]] = metadata
        return request

    async def aio_handle(self, request: bytes, context: Any) -> bytes:
        return self.handle(request, context)


class Recording(grpc.ServerInterceptor):
    def __init__(self, seen: Seen) -> None:
        self.seen = seen

    def intercept_service(self, continuation: Callable[[Any], Any], details: Any) -> Any:
        self.seen.interceptor.append(details.invocation_metadata)
        return continuation(details)


class AioRecording(grpc.aio.ServerInterceptor):
    def __init__(self, seen: Seen) -> None:
        self.seen = seen

    async def intercept_service(self, continuation: Any, details: Any) -> Any:
        self.seen.interceptor.append(details.invocation_metadata)
        return await continuation(details)


def generic_handler(callee: str, behavior: Callable[..., Any]) -> grpc.GenericRpcHandler:
    return grpc.method_handlers_generic_handler(
        f"test.v1.{grpc_service(callee)}", {"Call": grpc.unary_unary_rpc_method_handler(behavior)})


class AioServer:
    """The app's grpc.aio server with `aio_server_interceptors`, on a loop in a thread."""

    def __init__(self, address: str, policy: Path, seen: Seen) -> None:
        self.address = address
        self.policy = policy
        self.seen = seen
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def start(self) -> AioServer:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)
        return self

    async def _start(self) -> None:
        self.interceptors = server_svc.aio_server_interceptors(
            service="embedded_aio", policy_file=str(self.policy))
        self.server = grpc.aio.server(interceptors=[*self.interceptors,
                                                    AioRecording(self.seen)])
        self.server.add_generic_rpc_handlers(
            (generic_handler("embedded_aio", self.seen.aio_handle),))
        self.server.add_insecure_port(self.address)
        await self.server.start()

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(0), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()
        for interceptor in self.interceptors:
            interceptor.policy.stop()  # type: ignore[attr-defined]


@dataclass
class Stack:
    seen: dict[str, Seen]
    endpoints: dict[str, str]
    out_address: str
    policy: Path


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    directory = tmp_path_factory.mktemp("embedded-metadata")
    seen = {name: Seen() for name in CALLEES}
    endpoints = {name: free_address() for name in CALLEES}
    policy = directory / "policy.yaml"
    policy.write_text(policy_yaml(endpoints))

    upstream = grpc.server(futures.ThreadPoolExecutor(max_workers=4),
                           interceptors=[Recording(seen["behind_in"])])
    upstream.add_generic_rpc_handlers((generic_handler("behind_in", seen["behind_in"].handle),))
    upstream_address = free_address()
    upstream.add_insecure_port(upstream_address)
    upstream.start()

    sync_interceptors = server_svc.server_interceptors(service="embedded_sync",
                                                       policy_file=str(policy))
    sync_server = grpc.server(futures.ThreadPoolExecutor(max_workers=4),
                              interceptors=[*sync_interceptors, Recording(seen["embedded_sync"])])
    sync_server.add_generic_rpc_handlers(
        (generic_handler("embedded_sync", seen["embedded_sync"].handle),))
    sync_server.add_insecure_port(endpoints["embedded_sync"])
    sync_server.start()
    aio_server = AioServer(endpoints["embedded_aio"], policy, seen["embedded_aio"]).start()

    proxies = Proxies(directory)
    try:
        proxies.start("in", "behind_in", endpoints["behind_in"], policy=policy,
                      upstream=upstream_address)
        out = proxies.start("out", CALLER, free_address(), policy=policy)
        yield Stack(seen, endpoints, out.address, policy)
    finally:
        proxies.stop_all()
        aio_server.stop()
        sync_server.stop(0)
        for interceptor in sync_interceptors:
            interceptor.policy.stop()  # type: ignore[attr-defined]
        upstream.stop(0)


def grpcs_own_entry_type(address: str) -> type:
    """The type of an entry of metadata grpc itself hands a server (a server of ours here
    records it from a plain call)."""
    seen = Seen()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    server.add_generic_rpc_handlers((generic_handler("behind_in", seen.handle),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            channel.unary_unary(method_of("behind_in"))(b"", metadata=(("x-call", "t"),),
                                                        timeout=5)
    finally:
        server.stop(0)
    return type(seen.handler["t"][0])


def as_the_app_sees(metadata: Any) -> list[tuple[str, Any]]:
    """Everything but `user-agent`: grpc puts the sending client's own there, which behind
    an in-proxy is the in-proxy's and in an embedded server the caller's."""
    return [(key, value) for key, value in metadata if key != "user-agent"]


def call_every_callee(call: Callable[[str, str, tuple[tuple[str, Any], ...]], None],
                      tag: str) -> None:
    for callee in CALLEES:
        call(callee, method_of(callee), (("x-call", f"{tag}-{callee}"), *SENT))


def assert_same_as_behind_an_in_proxy(stack: Stack, tag: str) -> None:
    entry_type = grpcs_own_entry_type(stack.endpoints["behind_in"])
    views = {callee: stack.seen[callee].handler[f"{tag}-{callee}"] for callee in CALLEES}
    behind = as_the_app_sees(views["behind_in"])
    assert behind == [("x-call", f"{tag}-behind_in"), ("x-app", "1"), ("x-app", "2"),
                      ("x-bin-bin", b"\x00\x01"), ("authorization", "Bearer app-token"),
                      ("cookie", "session=abc")]
    for callee in ("embedded_sync", "embedded_aio"):
        view = views[callee]
        assert [(k, v) for k, v in as_the_app_sees(view) if k != "x-call"] == [
            (k, v) for k, v in behind if k != "x-call"], callee
        assert not [key for key, _ in view if key.startswith("fastproxy-")], callee
        assert all(type(entry) is entry_type for entry in view), callee
        assert [entry.key for entry in view][-2:] == ["authorization", "cookie"]
        # the app's own interceptor saw the same as its handler
        assert list(stack.seen[callee].interceptor[-1]) == list(view), callee


def test_through_an_out_proxy_the_app_sees_what_it_would_behind_an_in_proxy(
        stack: Stack) -> None:
    """The out-proxy sends `fastproxy-call-bin` and `fastproxy-kind`; neither reaches the
    app, and the credentials it carried in the CALL record are back, after the others."""
    with grpc.insecure_channel(stack.out_address) as channel:
        def call(_callee: str, method: str, metadata: tuple[tuple[str, Any], ...]) -> None:
            assert channel.unary_unary(method)(b"hi", metadata=metadata, timeout=10) == b"hi"
        call_every_callee(call, "out")
    assert_same_as_behind_an_in_proxy(stack, "out")


def test_from_the_sdk_the_app_sees_what_it_would_behind_an_in_proxy(stack: Stack) -> None:
    with fastproxy.client_interceptors(service=CALLER, embedded=True,
                                       policy_file=str(stack.policy)) as interceptors:
        def call(callee: str, method: str, metadata: tuple[tuple[str, Any], ...]) -> None:
            with grpc.insecure_channel(stack.endpoints[callee]) as plain:
                channel = grpc.intercept_channel(plain, *interceptors)
                assert channel.unary_unary(method)(b"hi", metadata=metadata,
                                                   timeout=10) == b"hi"
        call_every_callee(call, "sdk")
    assert_same_as_behind_an_in_proxy(stack, "sdk")


def test_from_the_aio_sdk_the_app_sees_what_it_would_behind_an_in_proxy(
        stack: Stack) -> None:
    async def scenario() -> None:
        with fastproxy.aio_client_interceptors(service=CALLER, embedded=True,
                                               policy_file=str(stack.policy)) as made:
            for callee in CALLEES:
                async with grpc.aio.insecure_channel(stack.endpoints[callee],
                                                     interceptors=made) as channel:
                    answer = await channel.unary_unary(method_of(callee))(
                        b"hi", metadata=(("x-call", f"aio-{callee}"), *SENT), timeout=10)
                    assert answer == b"hi"

    asyncio.run(scenario())
    assert_same_as_behind_an_in_proxy(stack, "aio")


def test_a_refused_call_never_reaches_the_app(stack: Stack) -> None:
    """A call the embedded server refuses (here: not sealed, with a forged protocol entry)
    gets to neither the app's own interceptor nor its handler, as behind an in-proxy."""
    before = {callee: len(stack.seen[callee].interceptor) for callee in CALLEES}
    for callee in ("embedded_sync", "embedded_aio"):
        for method in (method_of(callee), "/test.v1.Unknown/Call"):
            with grpc.insecure_channel(stack.endpoints[callee]) as plain, \
                    pytest.raises(grpc.RpcError) as refused:
                plain.unary_unary(method)(b"hi", timeout=5, metadata=(
                    ("x-call", "plain"), ("fastproxy-call-bin", b"forged")))
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert dict(refused.value.trailing_metadata())["fastproxy-proxy"] == "in"
    assert {callee: len(stack.seen[callee].interceptor) for callee in CALLEES} == before
    assert all("plain" not in stack.seen[callee].handler for callee in CALLEES)
