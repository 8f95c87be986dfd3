"""Calls song_service's in-proxy directly: the SDK does the out-proxy's job in-process."""

import grpc

import fastproxy
from fastproxy.v1 import demo_pb2, demo_pb2_grpc

with (
    fastproxy.client_interceptors(service="chat_service", center="127.0.0.1:7070",
                                  embedded=True) as interceptors,
    grpc.intercept_channel(grpc.insecure_channel("127.0.0.1:9101"), *interceptors) as channel,
):
    echo = demo_pb2_grpc.EchoStub(channel)
    print(echo.Unary(demo_pb2.EchoRequest(text="hello, sealed in-process"), timeout=5).text)
    replies = echo.Bidi(iter([demo_pb2.EchoRequest(text=t) for t in ("a", "b", "c")]),
                        timeout=5)
    print([reply.text for reply in replies])
