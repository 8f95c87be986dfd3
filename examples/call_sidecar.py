"""Calls song_service through chat_service's out-proxy: the app uses plain gRPC only."""

import grpc

from fastproxy.v1 import demo_pb2, demo_pb2_grpc

with grpc.insecure_channel("127.0.0.1:9102") as channel:
    echo = demo_pb2_grpc.EchoStub(channel)
    print(echo.Unary(demo_pb2.EchoRequest(text="hello through the sidecar"), timeout=5).text)
    for reply in echo.ServerStream(demo_pb2.EchoRequest(text="tick", repeat=3), timeout=5):
        print(reply.index, reply.text)
