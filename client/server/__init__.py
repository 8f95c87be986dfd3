"""The embedded server: an app's own gRPC server doing its in-proxy's job in-process."""

from fastproxy.server.embedded import (
    AioSealingServerInterceptor,
    EmbeddedPolicy,
    SealingServerInterceptor,
    aio_server_interceptors,
    server_interceptors,
)

__all__ = [
    "AioSealingServerInterceptor",
    "EmbeddedPolicy",
    "SealingServerInterceptor",
    "aio_server_interceptors",
    "server_interceptors",
]
