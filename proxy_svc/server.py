"""The proxy's grpc.aio server: message limits, and the services consulted before the
forwarding handler (which takes every method)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import grpc

from proxy_svc.tunnel import FRAME_SLACK_BYTES
from proxy_svc.upstream import DEFAULT_MAX_MESSAGE_BYTES


def server_options(max_message_bytes: int) -> tuple[tuple[str, int], ...]:
    """Received messages as large as allowed; sent ones a little larger: a sealed response
    adds its envelope, a tunnel reply its frame around a response of the largest size."""
    return (("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes + FRAME_SLACK_BYTES))


async def start_proxy_server(
    listen: str,
    handler: grpc.GenericRpcHandler,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    credentials: grpc.ServerCredentials | None = None,
    services_first: Iterable[grpc.GenericRpcHandler] = (),
    extra_options: Iterable[tuple[str, Any]] = (),
    add_services: Callable[[grpc.aio.Server], None] | None = None,
) -> tuple[grpc.aio.Server, int]:
    """Builds and starts the proxy's grpc.aio server; returns it and the bound port (useful
    with port 0). `services_first` (e.g. the tunnel) and what `add_services` registers (e.g.
    health) are consulted before `handler`, the forwarding handler that takes every method."""
    server = grpc.aio.server(options=(*server_options(max_message_bytes), *extra_options))
    if add_services is not None:
        add_services(server)
    server.add_generic_rpc_handlers((*services_first, handler))
    if credentials is None:
        port = server.add_insecure_port(listen)
    else:
        port = server.add_secure_port(listen, credentials)
    await server.start()
    return server, int(port)
