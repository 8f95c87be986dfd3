"""How the interceptors an app installs, the client side (`fastproxy.client_interceptors`) and
the embedded server (`fastproxy.server.server_interceptors`), take their settings: the same
keyword arguments on both sides, each falling back to the same `FASTPROXY_*` variable (an
empty variable counts as unset), so that one app that calls and serves is configured once.

| argument | variable |
| --- | --- |
| `service` | `FASTPROXY_SERVICE` |
| `center` | `FASTPROXY_CENTER` |
| `policy_file` | `FASTPROXY_POLICY_FILE` |
| `token` | `FASTPROXY_TOKEN` |
| `tls_ca`, `tls_cert`, `tls_key` (paths) | `FASTPROXY_TLS_CA`, `_TLS_CERT`, `_TLS_KEY` |
| `center_public_key` | `FASTPROXY_CENTER_PUBLIC_KEY` |
| `cache_dir` | `FASTPROXY_CACHE_DIR` |
"""

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
ARGUMENT_NAMES = ConnectionFlags(tls="tls_ca= or FASTPROXY_TLS_CA",
                                 pin="center_public_key= or FASTPROXY_CENTER_PUBLIC_KEY")


class SdkConfigError(ValueError):
    """A bad argument or environment variable of the SDK or the embedded server; the message
    names it."""


class AppEnvironment:
    """Keyword arguments first, then `FASTPROXY_*` variables of `environ` (default: the
    process's)."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self.env = os.environ if environ is None else environ

    def pick(self, value: str | None, name: str) -> str | None:
        """`value`, else the variable `FASTPROXY_<name>` (None when unset or empty)."""
        if value is not None:
            return value
        return self.env.get(ENV_PREFIX + name) or None

    def flag(self, name: str) -> bool:
        raw = self.env.get(ENV_PREFIX + name, "").strip().lower()
        if raw in TRUE_WORDS:
            return True
        if raw in FALSE_WORDS:
            return False
        raise SdkConfigError(f"{ENV_PREFIX}{name}={raw!r}: expected 1/0, true/false, yes/no")

    def integer(self, name: str) -> int | None:
        raw = self.env.get(ENV_PREFIX + name, "").strip()
        if not raw:
            return None
        try:
            return int(raw)
        except ValueError:
            raise SdkConfigError(f"{ENV_PREFIX}{name}={raw!r}: expected an integer") from None


def policy_source(env: AppEnvironment, center: str | None, policy_file: str | None
                  ) -> tuple[str | None, str | None]:
    """(center, policy_file): the arguments when either is given (then neither variable is
    read: an argument beats the environment), else `FASTPROXY_CENTER` and
    `FASTPROXY_POLICY_FILE`. Raises `SdkConfigError` when both end up set."""
    if center or policy_file:
        chosen = (center or None, policy_file or None)
    else:
        chosen = (env.pick(None, "CENTER"), env.pick(None, "POLICY_FILE"))
    if chosen[0] and chosen[1]:
        raise SdkConfigError("center and policy_file exclude each other")
    return chosen


@dataclass(frozen=True, slots=True)
class CenterConnection:
    """How the app's node reaches its Center: credentials and the pinned key."""

    credentials: CenterCredentials = field(repr=False)
    pinned_key: bytes | None


def center_connection(env: AppEnvironment, *, center: str | None, token: str | None,
                      tls_ca: str | None, tls_cert: str | None, tls_key: str | None,
                      center_public_key: str | bytes | None,
                      credentials: CenterCredentials | None = None,
                      pinned_key: bytes | None = None) -> CenterConnection:
    """The credentials (`token`, TLS files) and pinned key (`center_public_key`) from the
    arguments or their variables (`credentials` and `pinned_key`, when given, as they are).
    Raises `SdkConfigError` when a Center off loopback would be reached in plaintext or
    unpinned, `CredentialError` for TLS files that cannot be read (or a certificate without
    its key)."""
    if credentials is None:
        credentials = CenterCredentials.from_files(
            token=env.pick(token, "TOKEN") or "", tls_ca=env.pick(tls_ca, "TLS_CA"),
            tls_cert=env.pick(tls_cert, "TLS_CERT"), tls_key=env.pick(tls_key, "TLS_KEY"))
    if pinned_key is None:
        pinned_key = public_key(center_public_key if center_public_key is not None
                                else env.pick(None, "CENTER_PUBLIC_KEY"))
    if center:
        try:
            check_center_connection(center, uses_tls=credentials.uses_tls,
                                    pinned_key=pinned_key, names=ARGUMENT_NAMES)
        except CredentialError as exc:
            raise SdkConfigError(str(exc)) from None
    return CenterConnection(credentials, pinned_key)


def public_key(value: str | bytes | None) -> bytes | None:
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
