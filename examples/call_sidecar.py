"""Calls song_service through chat_service's out-proxy: the app uses plain gRPC only.

`python examples/call_sidecar.py [OUT_PROXY]` (default 127.0.0.1:9102). A call FastProxy
refuses is printed with its status and reason, and the script exits 1."""

import sys

import grpc

from fastproxy.v1 import demo_pb2, demo_pb2_grpc

out_proxy = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:9102"
with grpc.insecure_channel(out_proxy) as channel:
    echo = demo_pb2_grpc.EchoStub(channel)
    try:
        print(echo.Unary(demo_pb2.EchoRequest(text="hello through the sidecar"), timeout=5).text)
        for reply in echo.ServerStream(demo_pb2.EchoRequest(text="tick", repeat=3), timeout=5):
            print(reply.index, reply.text)
    except grpc.RpcError as refused:
        reason = dict(refused.trailing_metadata() or ()).get("fastproxy-error", "not FastProxy's")
        print(f"refused: {refused.code().name} ({reason}): {refused.details()}")
        sys.exit(1)
