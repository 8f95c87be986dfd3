"""Who is calling the Center: a node of some service, an admin, or (development mode) anyone local.

Credentials: a bearer token in the `authorization` metadata (`--node-tokens`, `--admin-tokens`),
or a TLS client certificate checked against `--client-ca` whose common name is the node's
service, or `admin:<name>` for an administrator.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

ADMIN_CN_PREFIX = "admin:"


@dataclass(frozen=True, slots=True)
class Principal:
    kind: str  # "node", "admin" or "dev" (development mode: any local caller)
    name: str  # service name for nodes, admin name for admins

    def may_watch_as(self, service: str) -> bool:
        return self.kind == "dev" or (self.kind == "node" and self.name == service)

    @property
    def is_admin(self) -> bool:
        return self.kind in ("admin", "dev")

    @property
    def label(self) -> str:
        return f"{self.kind}:{self.name}"


class TokenFileError(ValueError):
    pass


def load_token_file(path: str) -> dict[str, str]:
    """Reads `name: token` lines (blank lines and `#` comments allowed) into name -> token."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise TokenFileError(f"{path}: cannot be read ({exc.strerror})") from None
    tokens: dict[str, str] = {}
    for number, line in enumerate(lines, 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        name, sep, token = text.partition(":")
        name, token = name.strip(), token.strip()
        if not sep or not name or not token:
            raise TokenFileError(f"{path}:{number}: expected 'name: token'")
        if name in tokens:
            raise TokenFileError(f"{path}:{number}: {name!r} is listed twice")
        tokens[name] = token
    return tokens


class Authenticator:
    def __init__(
        self,
        *,
        development: bool,
        node_tokens: Mapping[str, str] | None = None,
        admin_tokens: Mapping[str, str] | None = None,
        client_certificates: bool = False,
    ) -> None:
        self.development = development
        self._tokens: list[tuple[bytes, Principal]] = [
            (token.encode(), Principal("node", name)) for name, token in (node_tokens or {}).items()
        ] + [
            (token.encode(), Principal("admin", name))
            for name, token in (admin_tokens or {}).items()
        ]
        self._client_certificates = client_certificates

    def identify(self, context: grpc.aio.ServicerContext) -> Principal | None:
        """The caller's principal, or None when it presented no valid credential."""
        if self.development:
            return Principal("dev", "local")
        token = _bearer_token(context.invocation_metadata() or ())
        if token is not None:
            return self._by_token(token.encode())
        if self._client_certificates:
            names = context.auth_context().get("x509_common_name") or []
            if names:
                common_name = names[0].decode("utf-8", "replace")
                if common_name.startswith(ADMIN_CN_PREFIX):
                    return Principal("admin", common_name[len(ADMIN_CN_PREFIX):])
                return Principal("node", common_name)
        return None

    def _by_token(self, token: bytes) -> Principal | None:
        found: Principal | None = None
        for known, principal in self._tokens:  # compare every one: no early exit on a match
            if hmac.compare_digest(known, token) and found is None:
                found = principal
        return found


def _bearer_token(metadata: Sequence[tuple[str, str | bytes]]) -> str | None:
    for key, value in metadata:
        if key == "authorization" and isinstance(value, str):
            scheme, _, token = value.partition(" ")
            if scheme.lower() == "bearer" and token:
                return token.strip()
    return None
