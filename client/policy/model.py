"""The validated policy: immutable objects, key material resolved.

Built by `fastproxy.policy.schema.load_policy`; never constructed from raw input elsewhere.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field


class KeyType(enum.Enum):
    AES_256_GCM = "aes-256-gcm"
    CHACHA20_POLY1305 = "chacha20-poly1305"
    HMAC_SHA256 = "hmac-sha256"
    ED25519 = "ed25519"

    @property
    def encrypts(self) -> bool:
        return self in (KeyType.AES_256_GCM, KeyType.CHACHA20_POLY1305)

    @property
    def signs(self) -> bool:
        return self in (KeyType.HMAC_SHA256, KeyType.ED25519)


@dataclass(frozen=True, slots=True)
class KeySpec:
    """A named key. `secret` is the symmetric key or the ed25519 32-byte private seed;
    `public` is the ed25519 public key (empty for symmetric keys)."""

    name: str
    type: KeyType
    secret: bytes = field(repr=False)
    public: bytes = b""

    def __repr__(self) -> str:
        return f"KeySpec(name={self.name!r}, type={self.type.value!r}, secret=<redacted>)"


@dataclass(frozen=True, slots=True)
class KeyRef:
    """The key a sender uses, plus keys still accepted when opening (rotation)."""

    key: str
    accept: tuple[str, ...] = ()

    @property
    def all(self) -> tuple[str, ...]:
        return (self.key, *(k for k in self.accept if k != self.key))


@dataclass(frozen=True, slots=True)
class RateLimit:
    rps: float
    burst: int


class Mode(enum.Enum):
    """`enforce`: calls the rules do not allow are denied. `audit` (a dry run): they pass, and
    are counted, audited and marked on their spans as `would_deny`."""

    ENFORCE = "enforce"
    AUDIT = "audit"


@dataclass(frozen=True, slots=True)
class AllowRule:
    caller: str  # a service name or "*"
    methods: tuple[str, ...]
    rate_limit: RateLimit | None = None
    # audit: a call of this rule's caller that no rule allows passes as `would_deny` (the
    # rule is being narrowed); enforce: it is denied
    mode: Mode = Mode.ENFORCE


@dataclass(frozen=True, slots=True)
class Compression:
    algorithm: str  # "gzip" or "zstd"
    min_bytes: int = 1024


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int = 1
    initial_backoff_ms: int = 100
    max_backoff_ms: int = 1000


@dataclass(frozen=True, slots=True)
class ServiceSpec:
    name: str
    grpc_services: tuple[str, ...] = ()
    endpoints: tuple[str, ...] = ()
    identity: KeyRef | None = None
    encrypt: KeyRef | None = None
    compress: Compression | None = None
    timeout_ms: int = 0
    allow: tuple[AllowRule, ...] = ()
    retry: RetryPolicy | None = None
    secret_metadata: tuple[str, ...] = ()  # encrypted on the wire, beyond the built-in names
    mode: Mode = Mode.ENFORCE  # audit: every call the rules do not allow passes as would_deny


@dataclass(frozen=True, slots=True)
class Policy:
    keys: Mapping[str, KeySpec]
    services: Mapping[str, ServiceSpec]

    def callers_of(self, service: ServiceSpec) -> tuple[str, ...]:
        """Services that may reach `service`: those some allow rule names ("*" expands to
        all), and, in audit mode, every service with an identity (its calls pass as
        would_deny)."""
        names: set[str] = set()
        if service.mode is Mode.AUDIT:
            names.update(n for n, s in self.services.items() if s.identity is not None)
        for rule in service.allow:
            if rule.caller == "*":
                names.update(n for n, s in self.services.items() if s.identity is not None)
            else:
                names.add(rule.caller)
        return tuple(sorted(names))

    def callees_of(self, caller: str) -> tuple[str, ...]:
        """Services `caller` may reach: with an allow rule that names it (or "*"), or in
        audit mode (services serving gRPC services, the caller having an identity)."""
        own = self.services.get(caller)
        return tuple(
            sorted(
                name
                for name, svc in self.services.items()
                if any(rule.caller in (caller, "*") for rule in svc.allow)
                or (svc.mode is Mode.AUDIT and svc.grpc_services and own is not None
                    and own.identity is not None)
            )
        )

    def owner_of(self, grpc_service: str) -> ServiceSpec | None:
        """The service that serves `grpc_service` (validation makes it at most one)."""
        for spec in self.services.values():
            if grpc_service in spec.grpc_services:
                return spec
        return None
