"""A lean benchmark upstream: a plain grpc.aio echo server of raw bytes.

    python bench/harness/echo_upstream.py --port PORT [--no-reflection]
        [--fastproxy-service NAME --center HOST:PORT]

Every method is served without a `.proto`: a path ending in `/Bidi` echoes each message of a
bidirectional stream as it arrives; any other path is unary and replies with its request. It
records nothing, so its CPU per call is the cost of grpc.aio itself. Like a typical service
it serves server reflection (`grpc.reflection.v1alpha`): any service it is asked about is
described with a unary `Unary` and a bidirectional `Bidi` method. With `--no-reflection` it
serves no reflection and imports nothing but grpc: a bare grpc.aio server (the harness's
reference for a server's idle memory, and the upstream of `sealed-no-reflection`).

With `--fastproxy-service NAME --center ADDR` the server carries the embedded server's
interceptors (`fastproxy.server.aio_server_interceptors(service=NAME, center=ADDR)`): it admits,
opens and seals every call itself, with no proxy process (the `proxyless` setup). Prints
`listening 127.0.0.1:PORT` once it serves (and, embedded, once its first policy is in);
stops on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import AsyncIterator, Sequence
from typing import Any

import grpc

MAX_MESSAGE_BYTES = 64 * 1024 * 1024
OPTIONS = (
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
)


async def _unary(request: bytes, _context: grpc.aio.ServicerContext) -> bytes:
    return request


async def _bidi(requests: AsyncIterator[bytes],
                _context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
    async for message in requests:
        yield message


REFLECTION_METHOD = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"


def described(service: str) -> bytes:
    """A file declaring `service` with `Unary` (unary) and `Bidi` (bidi) over raw bytes."""
    from google.protobuf import descriptor_pb2

    package, _, name = service.rpartition(".")
    file = descriptor_pb2.FileDescriptorProto(name=f"{service}.proto", package=package,
                                              syntax="proto3")
    file.message_type.add(name="Raw")
    raw = f".{package}.Raw" if package else ".Raw"
    declared = file.service.add(name=name)
    declared.method.add(name="Unary", input_type=raw, output_type=raw)
    declared.method.add(name="Bidi", input_type=raw, output_type=raw,
                        client_streaming=True, server_streaming=True)
    return file.SerializeToString()


async def _reflection(requests: AsyncIterator[Any],
                      _context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
    from grpc_reflection.v1alpha import reflection_pb2 as rpb

    async for request in requests:
        response = rpb.ServerReflectionResponse(original_request=request)
        if request.HasField("file_containing_symbol"):
            response.file_descriptor_response.file_descriptor_proto.append(
                described(request.file_containing_symbol))
        else:
            response.error_response.error_code = grpc.StatusCode.UNIMPLEMENTED.value[0]
        yield response


class EchoAnything(grpc.GenericRpcHandler):  # type: ignore[misc]
    """Unary echo for every method, stream echo for methods named `Bidi`; server reflection
    unless `reflection` is False (its modules are then never imported)."""

    _unary_handler = grpc.unary_unary_rpc_method_handler(_unary)
    _bidi_handler = grpc.stream_stream_rpc_method_handler(_bidi)

    def __init__(self, reflection: bool = True) -> None:
        self._reflection_handler = None
        if reflection:
            from grpc_reflection.v1alpha import reflection_pb2 as rpb

            self._reflection_handler = grpc.stream_stream_rpc_method_handler(
                _reflection, request_deserializer=rpb.ServerReflectionRequest.FromString,
                response_serializer=rpb.ServerReflectionResponse.SerializeToString)

    def service(self, handler_call_details: grpc.HandlerCallDetails
                ) -> grpc.RpcMethodHandler | None:
        method: str = handler_call_details.method
        if method == REFLECTION_METHOD:
            return self._reflection_handler  # None without reflection: UNIMPLEMENTED
        return self._bidi_handler if method.endswith("/Bidi") else self._unary_handler


def _embedded(service: str, center: str) -> Any:
    """The embedded server's interceptors, once the first policy is in."""
    from fastproxy.server import aio_server_interceptors

    interceptors = aio_server_interceptors(service=service, center=center)
    if not interceptors[0].policy.wait_loaded(30.0):
        raise SystemExit(f"embedded server: no policy from {center} within 30 s")
    return interceptors


async def serve(port: int, reflection: bool = True, service: str = "",
                center: str = "") -> None:
    interceptors = _embedded(service, center) if service else None
    server = grpc.aio.server(options=OPTIONS, interceptors=interceptors)
    server.add_generic_rpc_handlers((EchoAnything(reflection),))
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print(f"listening 127.0.0.1:{bound}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await server.stop(0.5)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="raw-bytes grpc.aio echo server")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--no-reflection", action="store_true",
                        help="serve no server reflection (a bare grpc.aio server)")
    parser.add_argument("--fastproxy-service", default="",
                        help="carry the embedded server's interceptors as this service")
    parser.add_argument("--center", default="", help="the Center, for --fastproxy-service")
    args = parser.parse_args(argv)
    asyncio.run(serve(args.port, not args.no_reflection, args.fastproxy_service, args.center))


if __name__ == "__main__":
    main()
