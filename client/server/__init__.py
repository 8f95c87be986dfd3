"""The embedded server: an app's own gRPC server doing its in-proxy's job in-process.

`server_interceptors(...)` (sync `grpc.server`) and `aio_server_interceptors(...)`
(`grpc.aio.server`) are twins over one `EmbeddedPolicy`: they answer session handshakes,
open and admit every call as the service's in-proxy would (sealed call header, session,
replay, allow rule, rate limit) before the app's handler runs, open every request and seal
every response, the response headers and the status (`fastproxy.server.sealed_call`).
Both take the Center's settings as the client side does (keyword arguments, else the same
`FASTPROXY_*` variables: `fastproxy.hosting.app_config`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import grpc

from fastproxy.hosting.app_config import (
    AppEnvironment,
    SdkConfigError,
    center_connection,
    policy_source,
)
from fastproxy.node.credentials import CenterCredentials
from fastproxy.server.handlers import AioSealingServerInterceptor, SealingServerInterceptor
from fastproxy.server.policy import EmbeddedPolicy

__all__ = [
    "AioSealingServerInterceptor",
    "EmbeddedPolicy",
    "SdkConfigError",
    "SealingServerInterceptor",
    "aio_server_interceptors",
    "embedded_policy",
    "server_interceptors",
]


# --- public constructors --------------------------------------------------------------------


def embedded_policy(*, service: str | None = None, center: str | None = None,
                    policy_file: str | None = None, node_id: str | None = None,
                    token: str | None = None, tls_ca: str | None = None,
                    tls_cert: str | None = None, tls_key: str | None = None,
                    center_public_key: str | bytes | None = None, cache_dir: str | None = None,
                    advertise: str = "", credentials: CenterCredentials | None = None,
                    pinned_key: bytes | None = None, environ: Mapping[str, str] | None = None,
                    **options: Any) -> EmbeddedPolicy:
    """The `EmbeddedPolicy` of `server_interceptors` and its aio twin, from the keyword
    arguments the client side takes (`fastproxy.client_interceptors`), each falling back to
    the same `FASTPROXY_*` variable (`fastproxy.hosting.app_config`). `credentials` (a
    `CenterCredentials`) and `pinned_key` (32 raw bytes) are the older way to give the
    Center's credentials and key; then no variable is read for them. Raises `SdkConfigError`
    (a `ValueError`) naming the argument or variable."""
    env = AppEnvironment(environ)
    service_name = env.pick(service, "SERVICE")
    if not service_name:
        raise SdkConfigError("service is required (argument or FASTPROXY_SERVICE)")
    center_address, policy_path = policy_source(env, center, policy_file)
    if not center_address and not policy_path:
        raise SdkConfigError("give a center (argument or FASTPROXY_CENTER) or a policy_file "
                             "(argument or FASTPROXY_POLICY_FILE)")
    given = [name for name, value in (("token", token), ("tls_ca", tls_ca),
                                      ("tls_cert", tls_cert), ("tls_key", tls_key))
             if value is not None]
    if credentials is not None and given:
        raise SdkConfigError(f"give either credentials= or {'/'.join(given)}=, not both")
    if pinned_key is not None and center_public_key is not None:
        raise SdkConfigError("give either pinned_key= or center_public_key=, not both")
    connection = center_connection(env, center=center_address, token=token, tls_ca=tls_ca,
                                   tls_cert=tls_cert, tls_key=tls_key,
                                   center_public_key=center_public_key,
                                   credentials=credentials, pinned_key=pinned_key)
    return EmbeddedPolicy(service=service_name, center=center_address,
                          policy_file=policy_path, node_id=node_id,
                          credentials=connection.credentials, advertise=advertise,
                          pinned_key=connection.pinned_key,
                          cache_dir=env.pick(cache_dir, "CACHE_DIR"), **options)


def server_interceptors(*, service: str | None = None, center: str | None = None,
                        policy_file: str | None = None, node_id: str | None = None,
                        token: str | None = None, tls_ca: str | None = None,
                        tls_cert: str | None = None, tls_key: str | None = None,
                        center_public_key: str | bytes | None = None,
                        cache_dir: str | None = None, advertise: str = "", start: bool = True,
                        **options: Any) -> list[grpc.ServerInterceptor]:
    """Interceptors for a sync `grpc.server(..., interceptors=...)` that admit, open and seal
    every call as `service`'s in-proxy would. `advertise` ("HOST:PORT" of this server) is
    registered at the Center as an endpoint of `service`. The Center's settings are the
    client side's (`token`, `tls_ca`/`tls_cert`/`tls_key` paths, `center_public_key`, and
    their `FASTPROXY_*` variables; see `embedded_policy`). Further keyword options go to
    `EmbeddedPolicy` (max_message_bytes, clock_skew_s, max_sessions, ...)."""
    policy = embedded_policy(service=service, center=center, policy_file=policy_file,
                             node_id=node_id, token=token, tls_ca=tls_ca, tls_cert=tls_cert,
                             tls_key=tls_key, center_public_key=center_public_key,
                             cache_dir=cache_dir, advertise=advertise, **options)
    if start:
        policy.start()
    return [SealingServerInterceptor(policy)]


def aio_server_interceptors(*, service: str | None = None, center: str | None = None,
                            policy_file: str | None = None, node_id: str | None = None,
                            token: str | None = None, tls_ca: str | None = None,
                            tls_cert: str | None = None, tls_key: str | None = None,
                            center_public_key: str | bytes | None = None,
                            cache_dir: str | None = None, advertise: str = "",
                            start: bool = True, **options: Any
                            ) -> list[grpc.aio.ServerInterceptor]:
    """The `grpc.aio.server(interceptors=...)` twin of `server_interceptors`."""
    policy = embedded_policy(service=service, center=center, policy_file=policy_file,
                             node_id=node_id, token=token, tls_ca=tls_ca, tls_cert=tls_cert,
                             tls_key=tls_key, center_public_key=center_public_key,
                             cache_dir=cache_dir, advertise=advertise, **options)
    if start:
        policy.start()
    return [AioSealingServerInterceptor(policy)]
