"""The SDK's configuration: keyword arguments first, then `FASTPROXY_*` environment variables,
so one app runs unchanged in every environment."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from fastproxy.node.credentials import (
    CenterCredentials,
    ConnectionFlags,
    CredentialError,
    check_center_connection,
)
from fastproxy.policy.signing import parse_center_public_key

ENV_PREFIX = "FASTPROXY_"
TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
FALSE_WORDS = frozenset({"", "0", "false", "no", "off"})
DEFAULT_POLICY_WAIT_S = 5.0
SDK_NAMES = ConnectionFlags(tls="tls_ca= or FASTPROXY_TLS_CA",
                            pin="center_public_key= or FASTPROXY_CENTER_PUBLIC_KEY")


class SdkConfigError(ValueError):
    """A bad argument or environment variable; the message names it."""


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
    env = os.environ if environ is None else environ

    def pick(value: str | None, name: str) -> str | None:
        if value is not None:
            return value
        return env.get(ENV_PREFIX + name) or None

    service_name = pick(service, "SERVICE") or ""
    center_address = pick(center, "CENTER")
    policy_path = pick(policy_file, "POLICY_FILE")
    is_embedded = embedded if embedded is not None else _flag(env, "EMBEDDED")
    if center_address and policy_path:
        raise SdkConfigError("center and policy_file exclude each other")
    if (center_address or policy_path or is_embedded) and not service_name:
        raise SdkConfigError("service is required (argument or FASTPROXY_SERVICE) with a "
                             "center, a policy file or embedded=True")
    if is_embedded and not (center_address or policy_path):
        raise SdkConfigError("embedded=True needs a center (FASTPROXY_CENTER) or a "
                             "policy_file (FASTPROXY_POLICY_FILE)")
    timeout = timeout_ms if timeout_ms is not None else _int(env, "TIMEOUT_MS")
    if timeout is not None and timeout <= 0:
        raise SdkConfigError("timeout_ms must be greater than 0")
    wait = policy_wait_s if policy_wait_s is not None else DEFAULT_POLICY_WAIT_S
    credentials = CenterCredentials.from_files(
        token=pick(token, "TOKEN") or "", tls_ca=pick(tls_ca, "TLS_CA"),
        tls_cert=pick(tls_cert, "TLS_CERT"), tls_key=pick(tls_key, "TLS_KEY"))
    public_key = center_public_key if center_public_key is not None else pick(
        None, "CENTER_PUBLIC_KEY")
    pinned = _public_key(public_key)
    if center_address:
        try:
            check_center_connection(center_address, uses_tls=credentials.uses_tls,
                                    pinned_key=pinned, names=SDK_NAMES)
        except CredentialError as exc:
            raise SdkConfigError(str(exc)) from None
    return SdkConfig(
        service=service_name, center=center_address, policy_file=policy_path,
        embedded=is_embedded, credentials=credentials,
        center_public_key=pinned, timeout_ms=timeout,
        cache_dir=pick(cache_dir, "CACHE_DIR"), policy_wait_s=wait,
        node_id=node_id or f"{service_name or 'app'}-client-{os.uname().nodename}-{os.getpid()}",
    )


def _flag(env: Mapping[str, str], name: str) -> bool:
    raw = env.get(ENV_PREFIX + name, "").strip().lower()
    if raw in TRUE_WORDS:
        return True
    if raw in FALSE_WORDS:
        return False
    raise SdkConfigError(f"{ENV_PREFIX}{name}={raw!r}: expected 1/0, true/false, yes/no")


def _int(env: Mapping[str, str], name: str) -> int | None:
    raw = env.get(ENV_PREFIX + name, "").strip()
    if not raw:
        return None
    try:
        return int(raw)
    except ValueError:
        raise SdkConfigError(f"{ENV_PREFIX}{name}={raw!r}: expected an integer") from None


def _public_key(value: str | bytes | None) -> bytes | None:
    """32 raw bytes, base64 text, or the path of a file holding either."""
    if value is None:
        return None
    if isinstance(value, bytes) and len(value) == 32:
        return value
    text = value.decode() if isinstance(value, bytes) else value
    path = Path(text)
    if len(text) < 200 and path.is_file():
        raw = path.read_bytes()
        if len(raw) == 32:
            return raw
        text = raw.decode(errors="replace")
    key = parse_center_public_key(text.encode())
    if key is None:
        raise SdkConfigError("center_public_key: not an Ed25519 public key "
                             "(32 raw bytes, base64, or a file of either)")
    return key
