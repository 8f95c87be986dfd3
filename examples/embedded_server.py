"""An app's own grpc.aio server that does its in-proxy's job in-process: it opens and checks
every sealed call as song_service, and registers its address at the Center, so callers'
out-proxies route to it beside the in-proxy.

`python examples/embedded_server.py [LISTEN]` (default 127.0.0.1:9201); the Center is
`$FASTPROXY_CENTER`, else 127.0.0.1:7070 (its token and TLS settings, if it had any, would
come from `token=`, `tls_ca=`, ... or `FASTPROXY_TOKEN`, `FASTPROXY_TLS_CA`, ..., as for the
client side). Ctrl-C stops it."""

import asyncio
import os
import signal
import sys

import grpc

import server_svc
from fastproxy.v1 import demo_pb2, demo_pb2_grpc
from server_svc.demo import EchoServicer


class Echo(EchoServicer):
    """The app's own service (here the demo's Echo, with its own Unary): FastProxy is in the
    interceptors, not here."""

    async def Unary(self, request: demo_pb2.EchoRequest,
                    context: grpc.aio.ServicerContext) -> demo_pb2.EchoResponse:
        return demo_pb2.EchoResponse(text=f"{request.text} (answered by the app's own server)")


async def main(listen: str, center: str) -> None:
    interceptors = server_svc.aio_server_interceptors(service="song_service", center=center,
                                                      advertise=listen)
    server = grpc.aio.server(interceptors=interceptors)
    demo_pb2_grpc.add_EchoServicer_to_server(Echo(), server)
    server.add_insecure_port(listen)
    await server.start()
    stop = asyncio.Event()  # (grpc.aio's wait_for_termination() does not end on Ctrl-C)
    for signum in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(signum, stop.set)
    print(f"song_service's own server on {listen}, checks in-process", flush=True)
    await stop.wait()
    await server.stop(1)
    interceptors[0].policy.stop()  # the Center drops the registration


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:9201",
                     os.environ.get("FASTPROXY_CENTER") or "127.0.0.1:7070"))
