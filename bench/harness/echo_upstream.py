"""A lean benchmark upstream: a plain grpc.aio echo server of raw bytes.

    python bench/harness/echo_upstream.py --port PORT

Every method is served without a `.proto`: a path ending in `/Bidi` echoes each message of a
bidirectional stream as it arrives; any other path is unary and replies with its request. It
records nothing, so its CPU per call is the cost of grpc.aio itself. Like a typical service
it serves server reflection (`grpc.reflection.v1alpha`): any service it is asked about is
described with a unary `Unary` and a bidirectional `Bidi` method, which is what the in-proxy
reads to serve unary methods on its fast path. Prints
`listening 127.0.0.1:PORT` once it serves; stops on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import AsyncIterator, Sequence

import grpc
from google.protobuf import descriptor_pb2
from grpc_reflection.v1alpha import reflection_pb2 as rpb

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


def _described(service: str) -> bytes:
    """A file declaring `service` with `Unary` (unary) and `Bidi` (bidi) over raw bytes."""
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


async def _reflection(requests: AsyncIterator[rpb.ServerReflectionRequest],
                      _context: grpc.aio.ServicerContext
                      ) -> AsyncIterator[rpb.ServerReflectionResponse]:
    async for request in requests:
        response = rpb.ServerReflectionResponse(original_request=request)
        if request.HasField("file_containing_symbol"):
            response.file_descriptor_response.file_descriptor_proto.append(
                _described(request.file_containing_symbol))
        else:
            response.error_response.error_code = grpc.StatusCode.UNIMPLEMENTED.value[0]
        yield response


class EchoAnything(grpc.GenericRpcHandler):  # type: ignore[misc]
    """Unary echo for every method, stream echo for methods named `Bidi`."""

    _unary_handler = grpc.unary_unary_rpc_method_handler(_unary)
    _bidi_handler = grpc.stream_stream_rpc_method_handler(_bidi)
    _reflection_handler = grpc.stream_stream_rpc_method_handler(
        _reflection, request_deserializer=rpb.ServerReflectionRequest.FromString,
        response_serializer=rpb.ServerReflectionResponse.SerializeToString)

    def service(self, handler_call_details: grpc.HandlerCallDetails
                ) -> grpc.RpcMethodHandler | None:
        method: str = handler_call_details.method
        if method == REFLECTION_METHOD:
            return self._reflection_handler
        return self._bidi_handler if method.endswith("/Bidi") else self._unary_handler


async def serve(port: int) -> None:
    server = grpc.aio.server(options=OPTIONS)
    server.add_generic_rpc_handlers((EchoAnything(),))
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
    asyncio.run(serve(parser.parse_args(argv).port))


if __name__ == "__main__":
    main()
