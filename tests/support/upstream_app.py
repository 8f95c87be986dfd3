"""A test upstream: a raw-bytes gRPC service that serves all four RPC kinds and records calls.

Run it as a subprocess (`python tests/support/upstream_app.py --port 0 [--name A]`); it prints
one line `listening 127.0.0.1:PORT` on stdout once it serves. `UpstreamProcess` does that for tests.

Service `test.v1.Echo` (messages are raw bytes, no .proto):
- `Unary`: replies with the request.
- `ClientStream`: replies with the concatenation of every request message.
- `ServerStream`: replies with the request `x-test-repeat` times (default 2).
- `Bidi`: replies with each request message as it arrives.

Behaviour on request, through request metadata (`CONTROL_*` names below):
- `x-test-id: ID`: the call is recorded under ID (see `Recorder/Get`).
- `x-test-echo: 1`: every request entry whose key starts with `x-echo-` is sent back, in the
  initial metadata and in the trailers (text and `-bin` entries alike).
- `x-test-stall-ms: N`: wait N ms before the first reply (an upstream that is slow).
- `x-test-stall-each-ms: N`: in ServerStream and Bidi, wait N ms after each reply message (so
  a client can cancel while the upstream is busy mid-stream).
- `x-test-fail-code: NAME` (a `grpc.StatusCode` name, e.g. `NOT_FOUND`): end the call with that
  status after reading the requests, with details from `x-test-fail-details` and trailers
  `grpc-status-details-bin` from `x-test-fail-status-bin` (bytes) plus the echoed entries.

Service `test.v1.Recorder` (control, JSON in and out):
- `Get`: request `{"id": ID}`; reply the record of that call (`CallRecord.to_json`) or `{}`.
- `Stats`: reply `{"calls": N, "name": NAME}` (calls to `test.v1.Echo` so far).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import functools
import json
import os
import signal
import subprocess
import sys
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import grpc

SERVICE = "test.v1.Echo"
UNARY = f"/{SERVICE}/Unary"
CLIENT_STREAM = f"/{SERVICE}/ClientStream"
SERVER_STREAM = f"/{SERVICE}/ServerStream"
BIDI = f"/{SERVICE}/Bidi"
RECORDER_GET = "/test.v1.Recorder/Get"
RECORDER_STATS = "/test.v1.Recorder/Stats"

CONTROL_ID = "x-test-id"
CONTROL_ECHO = "x-test-echo"
CONTROL_STALL_MS = "x-test-stall-ms"
CONTROL_REPEAT = "x-test-repeat"
CONTROL_STALL_EACH_MS = "x-test-stall-each-ms"
CONTROL_FAIL_CODE = "x-test-fail-code"
CONTROL_FAIL_DETAILS = "x-test-fail-details"
CONTROL_FAIL_STATUS_BIN = "x-test-fail-status-bin"
ECHO_PREFIX = "x-echo-"
STATUS_DETAILS_KEY = "grpc-status-details-bin"

MAX_MESSAGE_BYTES = 64 * 1024 * 1024
SERVER_OPTIONS = (
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
)

Metadata = tuple[tuple[str, str | bytes], ...]


@dataclass
class CallRecord:
    """What the upstream saw of one call."""

    method: str
    metadata: list[tuple[str, str | bytes]]
    deadline_remaining_s: float | None
    peer: str
    messages_received: int = 0
    bytes_received: int = 0
    cancelled: bool = False
    done: bool = False  # the handler returned, or the call ended
    started_at: float = field(default_factory=time.monotonic)

    def to_json(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "metadata": [_encode_entry(k, v) for k, v in self.metadata],
            "deadline_remaining_s": self.deadline_remaining_s,
            "peer": self.peer,
            "messages_received": self.messages_received,
            "bytes_received": self.bytes_received,
            "cancelled": self.cancelled,
            "done": self.done,
        }


def _encode_entry(key: str, value: str | bytes) -> list[str]:
    if isinstance(value, bytes):
        return [key, "b64:" + base64.b64encode(value).decode()]
    return [key, value]


def decode_metadata(entries: Sequence[Sequence[str]]) -> list[tuple[str, str | bytes]]:
    """Inverse of the JSON form of `CallRecord.metadata`."""
    out: list[tuple[str, str | bytes]] = []
    for key, value in entries:
        if value.startswith("b64:"):
            out.append((key, base64.b64decode(value[4:])))
        else:
            out.append((key, value))
    return out


def _observe_end(record: CallRecord, context: grpc.aio.ServicerContext) -> None:
    record.cancelled = record.cancelled or bool(context.cancelled())
    record.done = True


class EchoService:
    """The four Echo methods plus the recorder, over one in-memory record table."""

    def __init__(self, name: str, keep: int = 2000) -> None:
        self.name = name
        self.calls = 0
        self._records: OrderedDict[str, CallRecord] = OrderedDict()
        self._keep = keep

    def handlers(self) -> tuple[grpc.GenericRpcHandler, ...]:
        echo = grpc.method_handlers_generic_handler(SERVICE, {
            "Unary": grpc.unary_unary_rpc_method_handler(self.unary),
            "ClientStream": grpc.stream_unary_rpc_method_handler(self.client_stream),
            "ServerStream": grpc.unary_stream_rpc_method_handler(self.server_stream),
            "Bidi": grpc.stream_stream_rpc_method_handler(self.bidi),
        })
        recorder = grpc.method_handlers_generic_handler("test.v1.Recorder", {
            "Get": grpc.unary_unary_rpc_method_handler(self.get_record),
            "Stats": grpc.unary_unary_rpc_method_handler(self.stats),
        })
        return (echo, recorder)

    # --- Echo -------------------------------------------------------------------------

    async def unary(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        record, control = self._begin(UNARY, context)
        try:
            self._count(record, request)
            await self._before_reply(control, context)
            await self._maybe_fail(control, context)
            return request
        except asyncio.CancelledError:
            record.cancelled = True
            raise
        finally:
            record.done = True

    async def client_stream(self, requests: AsyncIterator[bytes],
                            context: grpc.aio.ServicerContext) -> bytes:
        record, control = self._begin(CLIENT_STREAM, context)
        try:
            parts = []
            async for message in requests:
                self._count(record, message)
                parts.append(message)
            await self._before_reply(control, context)
            await self._maybe_fail(control, context)
            return b"".join(parts)
        except asyncio.CancelledError:
            record.cancelled = True
            raise
        finally:
            record.done = True

    async def server_stream(self, request: bytes,
                            context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        record, control = self._begin(SERVER_STREAM, context)
        try:
            self._count(record, request)
            await self._before_reply(control, context)
            await self._maybe_fail(control, context)
            stall_each_s = int(control.get(CONTROL_STALL_EACH_MS, "0")) / 1000
            for _ in range(int(control.get(CONTROL_REPEAT, "2"))):
                yield request
                if stall_each_s:
                    await asyncio.sleep(stall_each_s)
        except asyncio.CancelledError:
            record.cancelled = True
            raise
        finally:
            record.done = True

    async def bidi(self, requests: AsyncIterator[bytes],
                   context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        record, control = self._begin(BIDI, context)
        try:
            await self._before_reply(control, context)
            stall_each_s = int(control.get(CONTROL_STALL_EACH_MS, "0")) / 1000
            async for message in requests:
                self._count(record, message)
                yield message
                if stall_each_s:
                    await asyncio.sleep(stall_each_s)
            await self._maybe_fail(control, context)
        except asyncio.CancelledError:
            record.cancelled = True
            raise
        finally:
            record.done = True

    # --- Recorder ---------------------------------------------------------------------

    async def get_record(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        call_id = json.loads(request)["id"]
        record = self._records.get(call_id)
        return json.dumps(record.to_json() if record else {}).encode()

    async def stats(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return json.dumps({"calls": self.calls, "name": self.name}).encode()

    # --- behaviour --------------------------------------------------------------------

    def _begin(self, method: str,
               context: grpc.aio.ServicerContext) -> tuple[CallRecord, dict[str, Any]]:
        self.calls += 1
        metadata = [(m.key, m.value) for m in context.invocation_metadata() or ()]
        control: dict[str, Any] = {}
        for key, value in metadata:
            control.setdefault(key, value)
        record = CallRecord(method, metadata, context.time_remaining(), context.peer())
        # A cancelled stream may just end the request iterator, without CancelledError.
        context.add_done_callback(functools.partial(_observe_end, record))
        call_id = control.get(CONTROL_ID, "")
        self._records[call_id] = record
        self._records.move_to_end(call_id)
        while len(self._records) > self._keep:
            self._records.popitem(last=False)
        control["echoed"] = tuple(
            (k, v) for k, v in metadata if k.startswith(ECHO_PREFIX)
        ) if control.get(CONTROL_ECHO) == "1" else ()
        return record, control

    @staticmethod
    def _count(record: CallRecord, message: bytes) -> None:
        record.messages_received += 1
        record.bytes_received += len(message)

    @staticmethod
    async def _before_reply(control: dict[str, Any], context: grpc.aio.ServicerContext) -> None:
        if control["echoed"]:
            await context.send_initial_metadata(control["echoed"])
        stall_ms = int(control.get(CONTROL_STALL_MS, "0"))
        if stall_ms:
            await asyncio.sleep(stall_ms / 1000)

    @staticmethod
    async def _maybe_fail(control: dict[str, Any], context: grpc.aio.ServicerContext) -> None:
        trailers: Metadata = control["echoed"]
        code_name = control.get(CONTROL_FAIL_CODE)
        if code_name is None:
            if trailers:
                context.set_trailing_metadata(trailers)
            return
        status_bin = control.get(CONTROL_FAIL_STATUS_BIN)
        if status_bin is not None:
            trailers = (*trailers, (STATUS_DETAILS_KEY, status_bin))
        await context.abort(grpc.StatusCode[code_name],
                            control.get(CONTROL_FAIL_DETAILS, ""), trailers)


async def serve(port: int, name: str) -> None:
    server = grpc.aio.server(options=SERVER_OPTIONS)
    service = EchoService(name)
    server.add_generic_rpc_handlers(service.handlers())
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print(f"listening 127.0.0.1:{bound}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(0.5)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--name", default="upstream", help="reported by Recorder/Stats")
    args = parser.parse_args(argv)
    asyncio.run(serve(args.port, args.name))


# --- for tests: run it as a subprocess and talk to its recorder -----------------------


class UpstreamProcess:
    """`with UpstreamProcess(name="a") as up:` runs the test upstream; `up.address` is its
    `127.0.0.1:PORT`. The process is killed on exit, whatever happened."""

    def __init__(self, name: str = "upstream", port: int = 0, start_timeout_s: float = 15.0):
        self.name = name
        self._port = port
        self._start_timeout_s = start_timeout_s
        self._process: subprocess.Popen[str] | None = None
        self.address = ""

    def start(self) -> UpstreamProcess:
        self._process = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--port", str(self._port),
             "--name", self.name],
            stdout=subprocess.PIPE, text=True,
        )
        assert self._process.stdout is not None
        deadline = time.monotonic() + self._start_timeout_s
        line = ""
        while time.monotonic() < deadline and not line:
            line = self._process.stdout.readline().strip()
            if self._process.poll() is not None:
                break
        if not line.startswith("listening "):
            self.stop()
            raise RuntimeError(f"test upstream did not start: {line!r}")
        self.address = line.split()[1]
        return self

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(5)
        if self._process is not None and self._process.stdout is not None:
            self._process.stdout.close()

    def __enter__(self) -> UpstreamProcess:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def record(self, call_id: str, timeout_s: float = 5.0) -> dict[str, Any]:
        """The record of call `call_id` ({} if the upstream never saw it)."""
        with grpc.insecure_channel(self.address) as channel:
            reply = channel.unary_unary(RECORDER_GET)(
                json.dumps({"id": call_id}).encode(), timeout=timeout_s)
        record: dict[str, Any] = json.loads(reply)
        if record:
            record["metadata"] = decode_metadata(record["metadata"])
        return record

    def wait_record(self, call_id: str, until: str, timeout_s: float = 5.0) -> dict[str, Any]:
        """Polls until the record's boolean field `until` (`done`, `cancelled`) is true."""
        deadline = time.monotonic() + timeout_s
        record = self.record(call_id)
        while not record.get(until) and time.monotonic() < deadline:
            time.sleep(0.02)
            record = self.record(call_id)
        return record

    def calls(self) -> int:
        with grpc.insecure_channel(self.address) as channel:
            reply = channel.unary_unary(RECORDER_STATS)(b"{}", timeout=5.0)
        return int(json.loads(reply)["calls"])


def chunks(payload: bytes, size: int) -> Iterator[bytes]:
    """`payload` cut into messages of at most `size` bytes (one empty message for b"")."""
    if not payload:
        yield b""
        return
    for start in range(0, len(payload), size):
        yield payload[start:start + size]


if __name__ == "__main__":
    main()
