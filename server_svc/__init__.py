"""FastProxy server: the demo services host (`python -m server_svc`) and embedded mode.

`server_interceptors(...)` / `aio_server_interceptors(...)` let any app's own gRPC server
open and check sealed calls in-process, with the in-proxy's stages (see fastproxy.server).
"""

from fastproxy.server import (
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
