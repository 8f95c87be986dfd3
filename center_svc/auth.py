"""Who is calling the Center: a node of some service in some roles, an admin, or (development
mode) anyone local.

Credentials are bound to a service *and* the roles it may watch as, so that an app's SDK
(role `app`, sent no key at all) cannot take the token it was given and watch as its
service's `in` or `out` node, which receive the service's secrets.

- Tokens (`authorization: Bearer TOKEN`), from `--node-tokens` and `--admin-tokens`, one a
  line: `service: token` (a node of that service in every role), `service[in]: token` or
  `service[out,client]: token` (only those roles); `name: token` (an administrator),
  `name[read-secrets]: token` (one who may also read policy secrets, `--show-secrets`).
  A service may have several lines (a token per role, or an old and a new token during a
  rotation); one token may not appear twice. Files are read again whenever they change.
- TLS client certificates checked against `--client-ca`: the common name is the node's
  service, or `admin:NAME`; the roles are URI subject alternative names
  `urn:fastproxy:role:ROLE` (`in`, `out`, `client`, `app`; `read-secrets` for an admin). A
  node certificate without any such name may watch in every role, as a token line without
  brackets. A certificate is asked for, not required (`center_svc/tls_listener.py`): a call
  is authenticated by its token when it carries one, else by its certificate.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from center_svc.tls_listener import ClientCertificate, PassedConnections
from fastproxy.node.acceptance import role_name

log = logging.getLogger("center_svc.auth")

ADMIN_CN_PREFIX = "admin:"
ROLE_URI_PREFIX = "urn:fastproxy:role:"
NODE_ROLES = frozenset({"in", "out", "client", "app"})
READ_SECRETS = "read-secrets"
ADMIN_ROLES = frozenset({READ_SECRETS})


@dataclass(frozen=True, slots=True)
class Principal:
    kind: str  # "node", "admin" or "dev" (development mode: any local caller)
    name: str  # service name for nodes, admin name for admins
    roles: frozenset[str] = frozenset()  # nodes: roles it may watch as; admins: read-secrets

    def watch_refusal(self, service: str, role: int) -> str | None:
        """Why this principal may not watch as a `role` node of `service` (None: it may)."""
        if self.kind == "dev":
            return None
        if self.kind != "node":
            return f"{self.label} may not watch"
        if self.name != service:
            return f"{self.label} may not watch as service {service}"
        wanted = role_name(role)
        if wanted not in self.roles:
            return (f"{self.label} may not watch as role {wanted} (its credential allows "
                    f"{', '.join(sorted(self.roles))})")
        return None

    @property
    def is_admin(self) -> bool:
        return self.kind in ("admin", "dev")

    @property
    def may_read_secrets(self) -> bool:
        return self.kind == "dev" or (self.kind == "admin" and READ_SECRETS in self.roles)

    @property
    def label(self) -> str:
        return f"{self.kind}:{self.name}"


@dataclass(frozen=True, slots=True)
class Refused:
    """No principal: `reason` says why, for the log (never the credential itself)."""

    reason: str


class TokenFileError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class TokenEntry:
    name: str
    roles: frozenset[str]
    token: str = field(repr=False)
    where: str  # FILE:LINE, for error messages
    listed: bool = True  # the roles were named (`name[in]: token`), not implied


def parse_token_lines(text: str, path: str, allowed_roles: frozenset[str],
                      default_roles: frozenset[str]) -> list[TokenEntry]:
    """`name: token` or `name[role,role]: token` lines (blank lines and `#` comments
    allowed). Errors name FILE:LINE, never a token."""
    entries: list[TokenEntry] = []
    seen: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        text_line = line.strip()
        if not text_line or text_line.startswith("#"):
            continue
        where = f"{path}:{number}"
        head, sep, token = text_line.partition(":")
        head, token = head.strip(), token.strip()
        if not sep or not head or not token:
            raise TokenFileError(f"{where}: expected 'name: token' or 'name[roles]: token'")
        name, roles = _name_and_roles(head, where, allowed_roles, default_roles)
        if token in seen:
            raise TokenFileError(f"{where}: the token of {name!r} is already listed at "
                                 f"{seen[token]}")
        seen[token] = where
        entries.append(TokenEntry(name, roles, token, where, listed="[" in head))
    return entries


def _name_and_roles(head: str, where: str, allowed: frozenset[str],
                    default: frozenset[str]) -> tuple[str, frozenset[str]]:
    name, bracket, rest = head.partition("[")
    name = name.strip()
    if not name or any(c.isspace() or c in "]," for c in name):
        raise TokenFileError(f"{where}: {name!r} is not a name")
    if not bracket:
        return name, default
    if not rest.endswith("]"):
        raise TokenFileError(f"{where}: expected 'name[role,role]: token'")
    roles = [r.strip() for r in rest[:-1].split(",")]
    unknown = [r for r in roles if r not in allowed]
    if unknown or not roles:
        choices = ", ".join(sorted(allowed)) if allowed else "none here"
        raise TokenFileError(f"{where}: unknown role {unknown[0] if unknown else ''!r} "
                             f"(roles: {choices})")
    return name, frozenset(roles)


def load_node_tokens(path: str) -> list[TokenEntry]:
    return parse_token_lines(_read(path), path, NODE_ROLES, NODE_ROLES)


def load_admin_tokens(path: str) -> list[TokenEntry]:
    return parse_token_lines(_read(path), path, ADMIN_ROLES, frozenset())


def _read(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise TokenFileError(f"{path}: cannot be read ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise TokenFileError(f"{path}: is not UTF-8 text") from None


class TokenTable:
    """Tokens of nodes and admins, looked up in constant time per token known."""

    def __init__(self, node_entries: Iterable[TokenEntry] = (),
                 admin_entries: Iterable[TokenEntry] = ()) -> None:
        table: list[tuple[bytes, Principal, str]] = []
        seen: dict[bytes, str] = {}
        # node tokens whose line names no role: FILE:LINE, service
        self.every_role: list[tuple[str, str]] = []
        for kind, entries in (("node", node_entries), ("admin", admin_entries)):
            for entry in entries:
                if kind == "node" and not entry.listed:
                    self.every_role.append((entry.where, entry.name))
                known = entry.token.encode()
                if known in seen:
                    raise TokenFileError(f"{entry.where}: the token of {entry.name!r} is "
                                         f"already listed at {seen[known]}")
                seen[known] = entry.where
                table.append((known, Principal(kind, entry.name, entry.roles), entry.where))
        self._tokens = table

    def __len__(self) -> int:
        return len(self._tokens)

    def warn_every_role(self) -> None:
        """One warning per node token that may watch in every role: a token an app's SDK
        holds then also opens the out-proxy's view (every callee's keys)."""
        for where, name in self.every_role:
            log.warning("%s: the token of %r lets its holder watch in every role (%s); name "
                        "the roles each holder needs, e.g. '%s[in]: TOKEN' for an in-proxy",
                        where, name, ", ".join(sorted(NODE_ROLES)), name)

    def principal_of(self, token: bytes) -> Principal | None:
        found: Principal | None = None
        for known, principal, _ in self._tokens:  # compare every one: no early exit
            if hmac.compare_digest(known, token) and found is None:
                found = principal
        return found


class TokenFiles:
    """`--node-tokens` and `--admin-tokens`, read again when their content changes; a file
    that no longer parses is logged and the tokens in force stay."""

    def __init__(self, node_path: str | None, admin_path: str | None) -> None:
        self.node_path, self.admin_path = node_path, admin_path
        self._seen = self._digest()

    def load(self) -> TokenTable:
        """Raises TokenFileError naming FILE:LINE."""
        nodes = load_node_tokens(self.node_path) if self.node_path else []
        admins = load_admin_tokens(self.admin_path) if self.admin_path else []
        return TokenTable(nodes, admins)

    def reload_if_changed(self) -> TokenTable | None:
        """The new table if a file changed and parses; None otherwise."""
        digest = self._digest()
        if digest == self._seen:
            return None
        self._seen = digest
        try:
            table = self.load()
        except TokenFileError as exc:
            log.error("token file refused; the tokens in force stay: %s", exc)
            return None
        log.info("token files reloaded: %d tokens", len(table))
        table.warn_every_role()
        return table

    def _digest(self) -> bytes:
        digest = hashlib.sha256()
        for path in (self.node_path, self.admin_path):
            if path is None:
                continue
            try:
                digest.update(hashlib.sha256(Path(path).read_bytes()).digest())
            except OSError:
                digest.update(b"unreadable")
        return digest.digest()


class Authenticator:
    """Who a call comes from. With `passed` (the Center takes client certificates, and its
    TLS listener passes each connection on), a call carries a bearer token or a client
    certificate, and is authenticated by the token when it has one, else by the
    certificate; calls that did not come through that listener are refused."""

    def __init__(self, *, development: bool, tokens: TokenTable | None = None,
                 passed: PassedConnections | None = None) -> None:
        self.development = development
        self.tokens = tokens or TokenTable()
        self.passed = passed

    def bearer_token(self, context: grpc.aio.ServicerContext) -> bytes | None:
        token = _bearer_token(context.invocation_metadata() or ())
        return None if self.development or token is None else token.encode()

    def peer(self, context: grpc.aio.ServicerContext) -> str:
        """The caller's address (the client's own, not the TLS listener's)."""
        inner = context.peer()
        connection = self.passed.get(inner) if self.passed is not None else None
        return connection.peer if connection is not None else inner

    def recheck(self, token: bytes, service: str, role: int) -> str | None:
        """Why a stream opened with `token` may no longer watch (after a reload)."""
        principal = self.tokens.principal_of(token)
        if principal is None:
            return "its token is no longer listed"
        return principal.watch_refusal(service, role)

    def identify(self, context: grpc.aio.ServicerContext) -> Principal | Refused:
        """The caller's principal, or why it has none."""
        if self.development:
            return Principal("dev", "local", NODE_ROLES | ADMIN_ROLES)
        certificate = None
        if self.passed is not None:
            connection = self.passed.get(context.peer())
            if connection is None:
                return Refused("the call did not come through the Center's TLS listener")
            certificate = connection.certificate
        token = _bearer_token(context.invocation_metadata() or ())
        if token is not None:
            principal = self.tokens.principal_of(token.encode())
            return principal if principal is not None else Refused("unknown token")
        if certificate is not None:
            return certificate_principal(certificate)
        return Refused("no bearer token and no client certificate")


def certificate_principal(certificate: ClientCertificate) -> Principal | Refused:
    """A verified client certificate's principal: its common name is the node's service
    (or `admin:NAME`), its `urn:fastproxy:role:ROLE` URI names the roles."""
    common_name = certificate.common_name
    if not common_name or common_name == ADMIN_CN_PREFIX:
        return Refused("client certificate without a common name (the service, or "
                       "admin:NAME)")
    roles = _certificate_roles(certificate.uris)
    if common_name.startswith(ADMIN_CN_PREFIX):
        return Principal("admin", common_name[len(ADMIN_CN_PREFIX):], roles & ADMIN_ROLES)
    return Principal("node", common_name, roles & NODE_ROLES if roles else NODE_ROLES)


def _certificate_roles(uris: Sequence[str]) -> frozenset[str]:
    """The roles named by the certificate's `urn:fastproxy:role:ROLE` URI names."""
    return frozenset(uri[len(ROLE_URI_PREFIX):] for uri in uris
                     if uri.startswith(ROLE_URI_PREFIX))


def _bearer_token(metadata: Sequence[tuple[str, str | bytes]]) -> str | None:
    for key, value in metadata:
        if key == "authorization" and isinstance(value, str):
            scheme, _, token = value.partition(" ")
            if scheme.lower() == "bearer" and token:
                return token.strip()
    return None
