"""A tampering intermediary: a grpc.aio relay, on its own loop in a thread, that forwards
every call to `target` and, when told, attacks it on the way (docs/security.md names the
attacker: anyone on the path, with full control of bytes, headers, trailers and status).

Attacks (`TamperRelay.attack`), one per call while set:
- on requests: `drop_last_request`, `duplicate_request`, `swap_requests`,
  `rewrite_header` (the value of `x-echo-a`), `add_header` (`x-admin: yes`);
- on the answer: `drop_last_response`, `drop_all_responses`, `strip_end` (our STATUS record
  out of the trailers), `rewrite_status` (OK <-> NOT_FOUND), `rewrite_details`,
  `rewrite_trailer` (`x-echo-a`), `add_trailer`, `rewrite_response_header` (`x-echo-a`).
Every call is also recorded (metadata, raw messages), so that it can be replayed whole
(`replay` sends a recorded call again, to this relay's target or another address).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc

from proxy_svc.upstream import StatusLog
from support.relay import RELAY_OPTIONS, LoopbackRelay, relayable

REQUEST_ATTACKS = ("drop_last_request", "duplicate_request", "swap_requests",
                   "rewrite_header", "add_header")
ANSWER_ATTACKS = ("drop_last_response", "drop_all_responses", "strip_end", "rewrite_status",
                  "rewrite_details", "rewrite_trailer", "add_trailer",
                  "rewrite_response_header")
END_KEY = "fastproxy-end-bin"

Metadata = tuple[tuple[str, str | bytes], ...]


@dataclass
class Captured:
    """One call as it went through the relay (before any attack)."""

    method: str
    metadata: Metadata
    requests: list[bytes] = field(default_factory=list)
    responses: list[bytes] = field(default_factory=list)
    initial: Metadata = ()
    trailers: Metadata = ()


def _changed(metadata: Metadata, key: str) -> Metadata:
    return tuple((k, (v + "!" if isinstance(v, str) else v + b"!") if k == key else v)
                 for k, v in metadata)


class TamperRelay(LoopbackRelay):
    def __init__(self, target: str) -> None:
        super().__init__(target)
        self.attack: str | None = None
        self.calls: list[Captured] = []

    # --- one call --------------------------------------------------------------------------

    async def _requests(self, requests: AsyncIterator[bytes], captured: Captured,
                        attack: str | None) -> AsyncIterator[bytes]:
        held: list[bytes] = []
        async for message in requests:
            captured.requests.append(message)
            count = len(captured.requests)
            if attack == "drop_last_request":  # always one behind: the last is never sent
                held.append(message)
                if len(held) > 1:
                    yield held.pop(0)
                continue
            if attack == "swap_requests" and count == 1:
                held.append(message)
                continue
            yield message
            if attack == "swap_requests" and count == 2:
                yield held.pop()
            if attack == "duplicate_request" and count == 1:
                yield message
        if attack == "swap_requests" and held:  # one request only: nothing to swap
            yield held.pop()

    async def _relay(self, method: str, requests: AsyncIterator[bytes],
                     context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        attack = self.attack
        metadata = relayable(context.invocation_metadata())
        captured = Captured(method, metadata)
        self.calls.append(captured)
        if attack == "rewrite_header":
            metadata = _changed(metadata, "x-echo-a")
        elif attack == "add_header":
            metadata = (*metadata, ("x-admin", "yes"))
        call = self._channel.stream_stream(method)(
            self._requests(requests, captured, attack), metadata=metadata,
            timeout=context.time_remaining())
        statuses = StatusLog(call)
        code, details = grpc.StatusCode.OK, ""
        try:
            captured.initial = relayable(await call.initial_metadata())
            initial = captured.initial
            if attack == "rewrite_response_header":
                initial = _changed(initial, "x-echo-a")
            if initial:
                await context.send_initial_metadata(initial)
            async for message in call:  # kept as they come: an error may follow
                captured.responses.append(message)
            captured.trailers = relayable(await call.trailing_metadata())
        except grpc.aio.AioRpcError as failed:
            err = await statuses.settled(failed)
            code, details = err.code(), err.details() or ""
            captured.trailers = relayable(err.trailing_metadata())
        responses = list(captured.responses)
        if attack == "drop_last_response":
            responses = responses[:-1]
        elif attack == "drop_all_responses":
            responses = []
        for message in responses:
            yield message
        code, details, trailers = self._answer(attack, code, details, captured.trailers)
        if code == grpc.StatusCode.OK:
            context.set_trailing_metadata(trailers)
            return
        await context.abort(code, details, trailers)

    @staticmethod
    def _answer(attack: str | None, code: grpc.StatusCode, details: str,
                trailers: Metadata) -> tuple[grpc.StatusCode, str, Metadata]:
        if attack == "strip_end":
            trailers = tuple(entry for entry in trailers if entry[0] != END_KEY)
        elif attack == "rewrite_status":
            code = grpc.StatusCode.NOT_FOUND if code == grpc.StatusCode.OK \
                else grpc.StatusCode.OK
        elif attack == "rewrite_details":
            details += " (rewritten)"
        elif attack == "rewrite_trailer":
            trailers = _changed(trailers, "x-echo-a")
        elif attack == "add_trailer":
            trailers = (*trailers, ("x-injected", "yes"))
        return code, details, trailers

    # --- replays ---------------------------------------------------------------------------

    def replay(self, captured: Captured, target: str | None = None,
               requests: Sequence[bytes] | None = None) -> grpc.RpcError | list[bytes]:
        """Sends a recorded call again (its metadata and raw messages) to `target` (default:
        this relay's); the error it ends with, or its responses."""
        with grpc.insecure_channel(target or self.target, options=RELAY_OPTIONS) as ch:
            try:
                return list(ch.stream_stream(captured.method)(
                    iter(captured.requests if requests is None else requests),
                    metadata=captured.metadata, timeout=5))
            except grpc.RpcError as err:
                return err


class SyncUpstream:
    """The four `test.v1.Echo` methods on a *sync* grpc server, recording for each call id
    (`x-test-id`) how its request stream ended: "clean" (the client half-closed) or "reset"
    (the stream was cancelled). A sync server's request iterator raises on a reset; a
    grpc.aio server's just ends, as if half-closed (grpc/grpc#36193), so only a sync server
    can show that a tampered stream never ended cleanly."""

    def __init__(self) -> None:
        from concurrent import futures

        self.ends: dict[str, str] = {}
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=8),
                                  options=RELAY_OPTIONS)
        handlers = {
            "Unary": grpc.unary_unary_rpc_method_handler(self._unary),
            "ClientStream": grpc.stream_unary_rpc_method_handler(self._client_stream),
            "ServerStream": grpc.unary_stream_rpc_method_handler(self._server_stream),
            "Bidi": grpc.stream_stream_rpc_method_handler(self._bidi),
        }
        self.server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("test.v1.Echo", handlers),))
        self.address = f"127.0.0.1:{self.server.add_insecure_port('127.0.0.1:0')}"
        self.server.start()

    def stop(self) -> None:
        self.server.stop(0)

    @staticmethod
    def _id(context: grpc.ServicerContext) -> str:
        return str(dict(context.invocation_metadata()).get("x-test-id", ""))

    def _read(self, requests: Any, context: grpc.ServicerContext) -> Any:
        call_id = self._id(context)
        try:
            for request in requests:
                time.sleep(0.02)  # a slow reader: a reset finds it mid-stream
                yield request
        except grpc.RpcError:
            self.ends[call_id] = "reset"
            raise
        # grpc's sync server may report a reset that arrives around the last message as
        # the end of the stream; the call is then no longer active: wait, then look.
        time.sleep(0.1)
        self.ends[call_id] = "clean" if context.is_active() else "reset"

    def _unary(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        self.ends[self._id(context)] = "clean"
        return request

    def _client_stream(self, requests: Any, context: grpc.ServicerContext) -> bytes:
        return b"".join(self._read(requests, context))

    def _server_stream(self, request: bytes, context: grpc.ServicerContext) -> Any:
        self.ends[self._id(context)] = "clean"
        yield request
        yield request

    def _bidi(self, requests: Any, context: grpc.ServicerContext) -> Any:
        yield from self._read(requests, context)
