"""Parses and validates a policy document (YAML, `version: 1`) into a `Policy`.

Every problem is collected with the path of its field, so one run reports them all:
`services.song_service.allow[0].rate_limit.rps: must be greater than 0`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fastproxy.policy.model import (
    AllowRule,
    Compression,
    KeyRef,
    KeySpec,
    KeyType,
    Policy,
    RateLimit,
    RetryPolicy,
    ServiceSpec,
)
from fastproxy.policy.secrets import SecretError, resolve_secret

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
GRPC_SERVICE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
METHOD_RE = re.compile(
    r"^(\*|/[A-Za-z_][A-Za-z0-9_.]*/(\*|[A-Za-z_][A-Za-z0-9_]*))$"
)
ENDPOINT_RE = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):([0-9]{1,5})$")
COMPRESSION_ALGORITHMS = ("gzip", "zstd")
MAX_TIMEOUT_MS = 24 * 3600 * 1000


class PolicyError(ValueError):
    """A policy document that failed validation; `errors` lists every problem."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("invalid policy:\n" + "\n".join(f"  {e}" for e in errors))
        self.errors = errors


class _Check:
    """Collects errors while walking the document."""

    def __init__(self) -> None:
        self.errors: list[str] = []

    def error(self, path: str, message: str) -> None:
        self.errors.append(f"{path}: {message}" if path else message)

    def mapping(self, value: Any, path: str) -> Mapping[Any, Any] | None:
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            self.error(path, "must be a mapping")
            return None
        return value

    def fields(
        self, value: Any, path: str, required: tuple[str, ...], optional: tuple[str, ...]
    ) -> Mapping[str, Any] | None:
        """A mapping with exactly the known fields; unknown and missing ones are errors."""
        if not isinstance(value, Mapping):
            self.error(path, "must be a mapping")
            return None
        known = set(required) | set(optional)
        for name in value:
            if name not in known:
                self.error(_join(path, str(name)), "unknown field")
        for name in required:
            if name not in value:
                self.error(_join(path, name), "is required")
        return value

    def string(self, value: Any, path: str, pattern: re.Pattern[str] | None = None,
               what: str = "") -> str | None:
        if not isinstance(value, str) or not value:
            self.error(path, "must be a non-empty string")
            return None
        if pattern is not None and not pattern.match(value):
            self.error(path, f"{value!r} is not a valid {what}")
            return None
        return value

    def integer(self, value: Any, path: str, minimum: int, maximum: int) -> int | None:
        if isinstance(value, bool) or not isinstance(value, int):
            self.error(path, "must be an integer")
            return None
        if value < minimum:
            self.error(path, f"must be at least {minimum}")
            return None
        if value > maximum:
            self.error(path, f"must be at most {maximum}")
            return None
        return value

    def string_list(self, value: Any, path: str, pattern: re.Pattern[str],
                    what: str) -> tuple[str, ...]:
        if value is None:
            return ()
        if not isinstance(value, list):
            self.error(path, "must be a list")
            return ()
        out: list[str] = []
        for i, item in enumerate(value):
            checked = self.string(item, f"{path}[{i}]", pattern, what)
            if checked is not None:
                if checked in out:
                    self.error(f"{path}[{i}]", f"{checked!r} is listed twice")
                else:
                    out.append(checked)
        return tuple(out)


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def load_policy(text: str | bytes, environ: Mapping[str, str] | None = None) -> Policy:
    """Parses YAML text into a validated `Policy`, or raises `PolicyError` with every error."""
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "cannot be parsed"
        raise PolicyError([f"yaml: {problem}{where}"]) from None
    return validate_policy(document, environ)


def validate_policy(document: Any, environ: Mapping[str, str] | None = None) -> Policy:
    check = _Check()
    top = check.fields(document, "", ("version",), ("keys", "services"))
    if top is None:
        raise PolicyError(check.errors or ["policy: must be a mapping"])
    if "version" in top and (isinstance(top["version"], bool) or top["version"] != 1):
        check.error("version", "must be 1")
    keys = _keys(check, top.get("keys"), lambda ref: resolve_secret(ref, environ))
    services = _services(check, top.get("services"))
    _cross_check(check, keys, services)
    if check.errors:
        raise PolicyError(check.errors)
    return Policy(keys=MappingProxyType(keys), services=MappingProxyType(services))


def _keys(check: _Check, value: Any, resolve: Callable[[str], bytes]) -> dict[str, KeySpec]:
    raw = check.mapping(value, "keys")
    out: dict[str, KeySpec] = {}
    for name, spec in (raw or {}).items():
        path = f"keys.{name}"
        if not isinstance(name, str) or not NAME_RE.match(name):
            check.error(path, "is not a valid key name (letters, digits, '.', '_', '-')")
            continue
        key = _key(check, path, name, spec, resolve)
        if key is not None:
            out[name] = key
    return out


def _key(check: _Check, path: str, name: str, spec: Any,
         resolve: Callable[[str], bytes]) -> KeySpec | None:
    if not isinstance(spec, Mapping):
        check.error(path, "must be a mapping")
        return None
    type_name = spec.get("type")
    try:
        key_type = KeyType(type_name)
    except ValueError:
        allowed = ", ".join(t.value for t in KeyType)
        check.error(f"{path}.type", f"must be one of {allowed}" if type_name is not None
                    else "is required")
        check.fields(spec, path, (), ("type", "secret", "private"))
        return None
    material_field = "private" if key_type is KeyType.ED25519 else "secret"
    if check.fields(spec, path, ("type", material_field), ()) is None:
        return None
    ref = spec.get(material_field)
    if ref is None:
        return None
    field_path = f"{path}.{material_field}"
    if not isinstance(ref, str):
        check.error(field_path, "must be a string: base64:..., env:VAR or file:PATH")
        return None
    try:
        material = resolve(ref)
    except SecretError as exc:
        check.error(field_path, str(exc))
        return None
    if key_type.encrypts:
        if len(material) != 32:
            check.error(field_path, f"must be 32 bytes for {key_type.value}, not {len(material)}")
            return None
        return KeySpec(name, key_type, material)
    if key_type is KeyType.HMAC_SHA256:
        if len(material) < 16:
            check.error(field_path, f"must be at least 16 bytes, not {len(material)}")
            return None
        return KeySpec(name, key_type, material)
    seed = _ed25519_seed(material)
    if seed is None:
        check.error(field_path, "must be an ed25519 private key (32 raw bytes or PEM)")
        return None
    public = Ed25519PrivateKey.from_private_bytes(seed).public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    return KeySpec(name, key_type, seed, public)


def _ed25519_seed(material: bytes) -> bytes | None:
    if len(material) == 32:
        return material
    try:
        key = serialization.load_pem_private_key(material, password=None)
    except (ValueError, TypeError):
        try:
            key = serialization.load_der_private_key(material, password=None)
        except (ValueError, TypeError):
            return None
    if not isinstance(key, Ed25519PrivateKey):
        return None
    return key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
        serialization.NoEncryption(),
    )


SERVICE_FIELDS = ("grpc_services", "endpoints", "identity", "encrypt", "compress",
                  "timeout_ms", "allow", "retry")


def _services(check: _Check, value: Any) -> dict[str, ServiceSpec]:
    raw = check.mapping(value, "services")
    out: dict[str, ServiceSpec] = {}
    for name, spec in (raw or {}).items():
        path = f"services.{name}"
        if not isinstance(name, str) or not NAME_RE.match(name):
            check.error(path, "is not a valid service name (letters, digits, '.', '_', '-')")
            continue
        if spec is None:
            spec = {}
        fields = check.fields(spec, path, (), SERVICE_FIELDS)
        if fields is None:
            continue
        timeout = fields.get("timeout_ms")
        out[name] = ServiceSpec(
            name=name,
            grpc_services=check.string_list(fields.get("grpc_services"),
                                            f"{path}.grpc_services", GRPC_SERVICE_RE,
                                            "gRPC service name"),
            endpoints=check.string_list(fields.get("endpoints"), f"{path}.endpoints",
                                        ENDPOINT_RE, "HOST:PORT endpoint"),
            identity=_key_ref(check, fields.get("identity"), f"{path}.identity"),
            encrypt=_key_ref(check, fields.get("encrypt"), f"{path}.encrypt"),
            compress=_compression(check, fields.get("compress"), f"{path}.compress"),
            timeout_ms=0 if timeout is None else (
                check.integer(timeout, f"{path}.timeout_ms", 1, MAX_TIMEOUT_MS) or 0),
            allow=_allow(check, fields.get("allow"), f"{path}.allow"),
            retry=_retry(check, fields.get("retry"), f"{path}.retry"),
        )
    return out


def _key_ref(check: _Check, value: Any, path: str) -> KeyRef | None:
    if value is None:
        return None
    fields = check.fields(value, path, ("key",), ("accept",))
    if fields is None:
        return None
    key = check.string(fields.get("key"), f"{path}.key", NAME_RE, "key name") \
        if "key" in fields else None
    accept = check.string_list(fields.get("accept"), f"{path}.accept", NAME_RE, "key name")
    return KeyRef(key, accept) if key is not None else None


def _compression(check: _Check, value: Any, path: str) -> Compression | None:
    if value is None:
        return None
    fields = check.fields(value, path, ("algorithm",), ("min_bytes",))
    if fields is None or "algorithm" not in fields:
        return None
    algorithm = fields["algorithm"]
    if algorithm not in COMPRESSION_ALGORITHMS:
        check.error(f"{path}.algorithm", f"must be one of {', '.join(COMPRESSION_ALGORITHMS)}")
        return None
    min_bytes = check.integer(fields.get("min_bytes", 1024), f"{path}.min_bytes", 0, 1 << 31)
    return Compression(algorithm, 1024 if min_bytes is None else min_bytes)


def _allow(check: _Check, value: Any, path: str) -> tuple[AllowRule, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        check.error(path, "must be a list")
        return ()
    rules: list[AllowRule] = []
    for i, item in enumerate(value):
        rule_path = f"{path}[{i}]"
        fields = check.fields(item, rule_path, ("caller", "methods"), ("rate_limit",))
        if fields is None:
            continue
        caller = None
        if "caller" in fields:
            caller = "*" if fields["caller"] == "*" else check.string(
                fields["caller"], f"{rule_path}.caller", NAME_RE, "service name")
        methods = check.string_list(fields.get("methods"), f"{rule_path}.methods", METHOD_RE,
                                    "method pattern (/pkg.Service/Method, /pkg.Service/* or *)")
        if isinstance(fields.get("methods"), list) and not fields["methods"]:
            check.error(f"{rule_path}.methods", "must list at least one method pattern")
        rate = _rate_limit(check, fields.get("rate_limit"), f"{rule_path}.rate_limit")
        if caller is not None and methods:
            rules.append(AllowRule(caller, methods, rate))
    return tuple(rules)


def _rate_limit(check: _Check, value: Any, path: str) -> RateLimit | None:
    if value is None:
        return None
    fields = check.fields(value, path, ("rps",), ("burst",))
    if fields is None or "rps" not in fields:
        return None
    rps = fields["rps"]
    if isinstance(rps, bool) or not isinstance(rps, int | float) or not math.isfinite(rps):
        check.error(f"{path}.rps", "must be a number")
        return None
    if rps <= 0:
        check.error(f"{path}.rps", "must be greater than 0")
        return None
    burst = check.integer(fields.get("burst", max(1, math.ceil(rps))), f"{path}.burst", 1,
                          1 << 30)
    return RateLimit(float(rps), burst) if burst is not None else None


def _retry(check: _Check, value: Any, path: str) -> RetryPolicy | None:
    if value is None:
        return None
    fields = check.fields(value, path, ("max_attempts",),
                          ("initial_backoff_ms", "max_backoff_ms"))
    if fields is None:
        return None
    attempts = check.integer(fields.get("max_attempts", 1), f"{path}.max_attempts", 1, 5)
    initial = check.integer(fields.get("initial_backoff_ms", 100),
                            f"{path}.initial_backoff_ms", 1, 60_000)
    maximum = check.integer(fields.get("max_backoff_ms", 1000), f"{path}.max_backoff_ms", 1,
                            600_000)
    if attempts is None or initial is None or maximum is None:
        return None
    if maximum < initial:
        check.error(f"{path}.max_backoff_ms", "must be at least initial_backoff_ms")
        return None
    return RetryPolicy(attempts, initial, maximum)


def _cross_check(check: _Check, keys: dict[str, KeySpec],
                 services: dict[str, ServiceSpec]) -> None:
    """References between keys and services; runs after every field was read."""
    routed: dict[str, str] = {}
    called_or_calling: set[str] = set()
    for name, svc in services.items():
        path = f"services.{name}"
        for ref, field_name, wanted, what in (
            (svc.identity, "identity", KeyType.signs, "a signing key (hmac-sha256, ed25519)"),
            (svc.encrypt, "encrypt", KeyType.encrypts,
             "an encryption key (aes-256-gcm, chacha20-poly1305)"),
        ):
            if ref is None:
                continue
            for label, key_name in (("key", ref.key),
                                    *((f"accept[{i}]", k) for i, k in enumerate(ref.accept))):
                key_path = f"{path}.{field_name}.{label}"
                if key_name not in keys:
                    check.error(key_path, f"unknown key {key_name!r}")
                elif not wanted.fget(keys[key_name].type):  # type: ignore[attr-defined]
                    check.error(key_path, f"key {key_name!r} is not {what}")
        for grpc_service in svc.grpc_services:
            owner = routed.setdefault(grpc_service, name)
            if owner != name:
                check.error(f"{path}.grpc_services",
                            f"{grpc_service!r} is already routed to service {owner!r}")
        if svc.allow:
            called_or_calling.add(name)
        for i, rule in enumerate(svc.allow):
            if rule.caller == "*":
                continue
            if rule.caller not in services:
                check.error(f"{path}.allow[{i}].caller", f"unknown service {rule.caller!r}")
            else:
                called_or_calling.add(rule.caller)
    for name in sorted(called_or_calling):
        if services[name].identity is None:
            check.error(f"services.{name}.identity",
                        "is required: the service calls or is called by another")
