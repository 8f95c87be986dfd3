"""The SDK's configuration: keyword arguments first, then `FASTPROXY_*` environment variables,
so one app runs unchanged in every environment."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from fastproxy.hosting.app_config import (
    AppEnvironment,
    SdkConfigError,
    center_connection,
    policy_source,
)
from fastproxy.node.credentials import CenterCredentials

__all__ = ["SdkConfig", "SdkConfigError", "resolve_config"]

DEFAULT_POLICY_WAIT_S = 5.0


@dataclass(frozen=True, slots=True)
class SdkConfig:
    """What one set of interceptors runs with. `center` and `policy_file` are exclusive;
    with neither, a sidecar-mode SDK only adds trace context and `timeout_ms`."""

    service: str
    center: str | None
    policy_file: str | None
    embedded: bool
    credentials: CenterCredentials = field(repr=False)
    center_public_key: bytes | None
    timeout_ms: int | None
    cache_dir: str | None
    policy_wait_s: float
    node_id: str


def resolve_config(*, service: str | None, center: str | None, embedded: bool | None,
                   token: str | None, tls_ca: str | None, tls_cert: str | None,
                   tls_key: str | None, center_public_key: str | bytes | None,
                   timeout_ms: int | None, policy_file: str | None, cache_dir: str | None,
                   policy_wait_s: float | None, node_id: str | None,
                   environ: Mapping[str, str] | None = None) -> SdkConfig:
    env = AppEnvironment(environ)
    service_name = env.pick(service, "SERVICE") or ""
    center_address, policy_path = policy_source(env, center, policy_file)
    is_embedded = embedded if embedded is not None else env.flag("EMBEDDED")
    if (center_address or policy_path or is_embedded) and not service_name:
        raise SdkConfigError("service is required (argument or FASTPROXY_SERVICE) with a "
                             "center, a policy file or embedded=True")
    if is_embedded and not (center_address or policy_path):
        raise SdkConfigError("embedded=True needs a center (FASTPROXY_CENTER) or a "
                             "policy_file (FASTPROXY_POLICY_FILE)")
    timeout = timeout_ms if timeout_ms is not None else env.integer("TIMEOUT_MS")
    if timeout is not None and timeout <= 0:
        raise SdkConfigError("timeout_ms must be greater than 0")
    wait = policy_wait_s if policy_wait_s is not None else DEFAULT_POLICY_WAIT_S
    connection = center_connection(env, center=center_address, token=token, tls_ca=tls_ca,
                                   tls_cert=tls_cert, tls_key=tls_key,
                                   center_public_key=center_public_key)
    return SdkConfig(
        service=service_name, center=center_address, policy_file=policy_path,
        embedded=is_embedded, credentials=connection.credentials,
        center_public_key=connection.pinned_key, timeout_ms=timeout,
        cache_dir=env.pick(cache_dir, "CACHE_DIR"), policy_wait_s=wait,
        node_id=node_id or f"{service_name or 'app'}-client-{os.uname().nodename}-{os.getpid()}",
    )
