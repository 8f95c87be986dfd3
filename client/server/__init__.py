"""The embedded server: an app's own gRPC server doing its in-proxy's job in-process.

`server_interceptors(...)` (sync `grpc.server`) and `aio_server_interceptors(...)`
(`grpc.aio.server`) are twins over one `EmbeddedPolicy`: they answer session handshakes,
open and admit every call as the service's in-proxy would (sealed call header, session,
replay, allow rule, rate limit) before the app's handler runs, open every request and seal
every response, the response headers and the status (`fastproxy.server.sealed_call`).
"""

from __future__ import annotations

from typing import Any

import grpc

from fastproxy.server.handlers import AioSealingServerInterceptor, SealingServerInterceptor
from fastproxy.server.policy import EmbeddedPolicy

__all__ = [
    "AioSealingServerInterceptor",
    "EmbeddedPolicy",
    "SealingServerInterceptor",
    "aio_server_interceptors",
    "server_interceptors",
]


# --- public constructors --------------------------------------------------------------------


def server_interceptors(*, service: str, center: str | None = None,
                        policy_file: str | None = None, node_id: str | None = None,
                        token: str | None = None, advertise: str = "", start: bool = True,
                        **options: Any) -> list[grpc.ServerInterceptor]:
    """Interceptors for a sync `grpc.server(..., interceptors=...)` that admit, open and seal
    every call as `service`'s in-proxy would. `advertise` ("HOST:PORT" of this server) is
    registered at the Center as an endpoint of `service`. Further keyword options go to
    `EmbeddedPolicy` (credentials, pinned_key, cache_dir, max_message_bytes, ...)."""
    policy = EmbeddedPolicy(service=service, center=center, policy_file=policy_file,
                            node_id=node_id, token=token, advertise=advertise, **options)
    if start:
        policy.start()
    return [SealingServerInterceptor(policy)]


def aio_server_interceptors(*, service: str, center: str | None = None,
                            policy_file: str | None = None, node_id: str | None = None,
                            token: str | None = None, advertise: str = "", start: bool = True,
                            **options: Any) -> list[grpc.aio.ServerInterceptor]:
    """The `grpc.aio.server(interceptors=...)` twin of `server_interceptors`."""
    policy = EmbeddedPolicy(service=service, center=center, policy_file=policy_file,
                            node_id=node_id, token=token, advertise=advertise, **options)
    if start:
        policy.start()
    return [AioSealingServerInterceptor(policy)]
