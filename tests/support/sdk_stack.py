"""Helpers for the client SDK's tests: a policy, an upstream in the test process, and a real
in-proxy and out-proxy (`python -m proxy_svc`) started from one policy file.

- `sdk_policy_yaml(...)`: chat_service calls song_service, which serves `demo.v1.Echo` and the
  raw-bytes `test.v1.Flaky` (HMAC identities, AES-256-GCM, a retry policy, `timeout_ms`);
  lonely_service has an identity and no rule names it.
- `UpstreamServer`: a grpc.aio server on its own loop in a thread, serving the demo
  `EchoServicer` of server_svc and `test.v1.Flaky`, whose behaviour each call picks with
  metadata: `x-call-id` (calls are counted and their metadata and deadline recorded under
  it), `x-fail-first: N` (the first N attempts of that id fail with `x-fail-code`, default
  UNAVAILABLE), `x-fail-after-response: 1` (ServerStream sends one message, then fails).
"""

from __future__ import annotations

import asyncio
import base64
import os
import threading
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc

from fastproxy.v1 import demo_pb2_grpc
from server_svc.demo import EchoServicer

CALLER = "chat_service"
CALLEE = "song_service"
LONELY = "lonely_service"  # a service no rule names
FLAKY_UNARY = "/test.v1.Flaky/Unary"
FLAKY_SERVER_STREAM = "/test.v1.Flaky/ServerStream"
MiB = 1024 * 1024
OPTIONS = (("grpc.max_receive_message_length", 64 * MiB),
           ("grpc.max_send_message_length", 64 * MiB))


def _secret() -> str:
    return "base64:" + base64.b64encode(os.urandom(32)).decode()


def sdk_policy_yaml(endpoint: str, *, timeout_ms: int = 20000, max_attempts: int = 3,
                    secrets: dict[str, str] | None = None) -> str:
    keys = {"lonely": _secret(),
            **(secrets if secrets is not None else {"chat": _secret(), "song": _secret(),
                                                    "enc": _secret()})}
    return f"""\
version: 1
keys:
  chat-id: {{type: hmac-sha256, secret: "{keys['chat']}"}}
  song-id: {{type: hmac-sha256, secret: "{keys['song']}"}}
  song-enc: {{type: aes-256-gcm, secret: "{keys['enc']}"}}
  lonely-id: {{type: hmac-sha256, secret: "{keys['lonely']}"}}
services:
  {CALLEE}:
    grpc_services: [demo.v1.Echo, test.v1.Flaky]
    endpoints: ["{endpoint}"]
    identity: {{key: song-id}}
    encrypt: {{key: song-enc}}
    compress: {{algorithm: gzip, min_bytes: 1024}}
    timeout_ms: {timeout_ms}
    retry: {{max_attempts: {max_attempts}, initial_backoff_ms: 10, max_backoff_ms: 50}}
    allow:
      - caller: {CALLER}
        methods: ["*"]
  {CALLER}:
    identity: {{key: chat-id}}
  {LONELY}:
    identity: {{key: lonely-id}}
"""


@dataclass
class FlakyRecord:
    attempts: int = 0
    metadata: list[tuple[str, Any]] = field(default_factory=list)
    time_remaining: float | None = None


class FlakyService:
    def __init__(self) -> None:
        self.records: dict[str, FlakyRecord] = defaultdict(FlakyRecord)

    def handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler("test.v1.Flaky", {
            "Unary": grpc.unary_unary_rpc_method_handler(self.unary),
            "ServerStream": grpc.unary_stream_rpc_method_handler(self.server_stream),
        })

    def _begin(self, context: grpc.aio.ServicerContext[Any, Any]) -> tuple[FlakyRecord, bool,
                                                                          dict[str, Any]]:
        control = dict(context.invocation_metadata() or ())
        record = self.records[str(control.get("x-call-id", ""))]
        record.attempts += 1
        record.metadata = list(context.invocation_metadata() or ())
        record.time_remaining = context.time_remaining()
        fail = record.attempts <= int(control.get("x-fail-first", "0"))
        return record, fail, control

    async def unary(self, request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        _record, fail, control = self._begin(context)
        if fail:
            await context.abort(grpc.StatusCode[control.get("x-fail-code", "UNAVAILABLE")],
                                "flaky upstream says no")
        return request

    async def server_stream(self, request: bytes, context: grpc.aio.ServicerContext[Any, Any]
                            ) -> AsyncIterator[bytes]:
        _record, fail, control = self._begin(context)
        if fail and control.get("x-fail-after-response") == "1":
            yield request
        if fail:
            await context.abort(grpc.StatusCode[control.get("x-fail-code", "UNAVAILABLE")],
                                "flaky upstream says no")
        yield request
        yield request


class UpstreamServer:
    """The demo Echo and test.v1.Flaky on a grpc.aio server in a thread of the test process."""

    def __init__(self) -> None:
        self.flaky = FlakyService()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self.address = ""

    def start(self) -> UpstreamServer:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    async def _start(self) -> None:
        self._server = grpc.aio.server(options=OPTIONS)
        demo_pb2_grpc.add_EchoServicer_to_server(EchoServicer(), self._server)
        self._server.add_generic_rpc_handlers((self.flaky.handler(),))
        port = self._server.add_insecure_port("127.0.0.1:0")
        await self._server.start()
        self.address = f"127.0.0.1:{port}"

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._server.stop(0), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()
