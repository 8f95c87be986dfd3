"""Calls song_service straight at its in-proxy (or at the app's own server of
examples/embedded_server.py): the SDK does the out-proxy's job in-process.

`python examples/call_embedded.py [TARGET]` (default 127.0.0.1:9101, the in-proxy); the
Center is `$FASTPROXY_CENTER`, else 127.0.0.1:7070."""

import os
import sys

import grpc

import fastproxy
from fastproxy.v1 import demo_pb2, demo_pb2_grpc

target = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:9101"
center = os.environ.get("FASTPROXY_CENTER") or "127.0.0.1:7070"
with (
    fastproxy.client_interceptors(service="chat_service", center=center,
                                  embedded=True) as interceptors,
    grpc.intercept_channel(grpc.insecure_channel(target), *interceptors) as channel,
):
    echo = demo_pb2_grpc.EchoStub(channel)
    try:
        print(echo.Unary(demo_pb2.EchoRequest(text="hello, sealed in-process"), timeout=5).text)
        replies = echo.Bidi(iter([demo_pb2.EchoRequest(text=t) for t in ("a", "b", "c")]),
                            timeout=5)
        print([reply.text for reply in replies])
    except grpc.RpcError as refused:
        reason = dict(refused.trailing_metadata() or ()).get("fastproxy-error", "not FastProxy's")
        print(f"refused: {refused.code().name} ({reason}): {refused.details()}")
        sys.exit(1)
