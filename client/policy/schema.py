"""Parses and validates a policy document (YAML, `version: 1`) into a `Policy`.

Every problem is collected with the path of its field, so one run reports them all:
`services.song_service.allow[0].rate_limit.rps: must be greater than 0`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import yaml
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fastproxy.policy.model import (
    AllowRule,
    Compression,
    KeyRef,
    KeySpec,
    KeyType,
    Mode,
    Policy,
    RateLimit,
    RetryPolicy,
    ServiceSpec,
)
from fastproxy.policy.secrets import SecretError, resolve_secret

# Patterns are applied with fullmatch: `$` alone would accept a trailing newline.
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
_GRPC_SERVICE = r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*"
GRPC_SERVICE_RE = re.compile(_GRPC_SERVICE)
METHOD_RE = re.compile(rf"\*|/{_GRPC_SERVICE}/(\*|[A-Za-z_][A-Za-z0-9_]*)")
ENDPOINT_RE = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):([0-9]{1,5})")
COMPRESSION_ALGORITHMS = ("gzip", "zstd")
MAX_TIMEOUT_MS = 24 * 3600 * 1000
MAX_RPS = 1_000_000_000
MAX_BURST = 1 << 30


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
        if pattern is not None and not pattern.fullmatch(value):
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


class _StrictLoader(yaml.SafeLoader):
    """A safe loader that refuses a key written twice in one mapping (YAML would silently
    keep the last one, e.g. drop a whole service), and anchors and aliases: the Center
    rewrites secret values (sealed at rest, `<redacted>` on screen), and a value shared
    through an alias would not survive that (the stored or shown document would name an
    anchor it no longer has)."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()  # type: ignore[no-untyped-call]
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
            raise yaml.composer.ComposerError(
                None, None, "anchors and aliases (&name, *name) are not supported in a "
                "policy: write each value out", event.start_mark)
        return super().compose_node(parent, index)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:
                continue  # an unhashable key; the base constructor reports it
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark,
                    f"found duplicate key {key!r}", key_node.start_mark,
                )
        return super().construct_mapping(node, deep=deep)


def load_policy(text: str | bytes, environ: Mapping[str, str] | None = None) -> Policy:
    """Parses YAML text into a validated `Policy`, or raises `PolicyError` with every error."""
    try:
        document = yaml.load(text, Loader=_StrictLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "cannot be parsed"
        raise PolicyError([f"yaml: {problem}{where}"]) from None
    except RecursionError:
        raise PolicyError(["yaml: nested too deeply"]) from None
    return validate_policy(document, environ)


def validate_policy(document: Any, environ: Mapping[str, str] | None = None) -> Policy:
    """Validates an already parsed document (a mapping, as YAML or JSON would give)."""
    if not isinstance(document, Mapping):
        raise PolicyError(["policy: must be a mapping with version, keys and services"])
    check = _Check()
    check.fields(document, "", ("version",), ("keys", "services"))
    top: Mapping[str, Any] = document
    version = top.get("version", 1)
    if type(version) is not int or version != 1:
        check.error("version", "must be 1")
    keys, key_names = _keys(check, top.get("keys"), lambda ref: resolve_secret(ref, environ))
    services, declared = _services(check, top.get("services"))
    _cross_check(check, keys, key_names, services, declared)
    if check.errors:
        raise PolicyError(check.errors)
    return Policy(keys=MappingProxyType(keys), services=MappingProxyType(services))


def _keys(check: _Check, value: Any,
          resolve: Callable[[str], bytes]) -> tuple[dict[str, KeySpec], set[str]]:
    """The valid keys, and every well-named key declared (valid or not), so that a reference
    to a key that failed on its own is not reported a second time as unknown."""
    raw = check.mapping(value, "keys")
    out: dict[str, KeySpec] = {}
    declared: set[str] = set()
    for name, spec in (raw or {}).items():
        path = f"keys.{name}"
        if not isinstance(name, str) or not NAME_RE.fullmatch(name):
            check.error(path, "is not a valid key name (letters, digits, '.', '_', '-')")
            continue
        declared.add(name)
        key = _key(check, path, name, spec, resolve)
        if key is not None:
            out[name] = key
    return out, declared


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
    except (ValueError, TypeError, UnsupportedAlgorithm):
        try:
            key = serialization.load_der_private_key(material, password=None)
        except (ValueError, TypeError, UnsupportedAlgorithm):
            return None
    if not isinstance(key, Ed25519PrivateKey):
        return None
    return key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
        serialization.NoEncryption(),
    )


SERVICE_FIELDS = ("grpc_services", "endpoints", "identity", "encrypt", "compress",
                  "timeout_ms", "allow", "retry", "secret_metadata", "mode")
MODES = ", ".join(m.value for m in Mode)
# A metadata name gRPC accepts (lower case), not one of ours, not a pseudo-header.
METADATA_NAME_RE = re.compile(r"(?!fastproxy-)[a-z0-9_.-]{1,128}")


# (path of an allow rule's caller field, the service it names)
CallerRefs = list[tuple[str, str]]


@dataclass
class _Declared:
    """What the document names, valid or not, so that cross-checks neither miss a reference
    in a dropped rule nor report a name twice (once invalid, once unknown or missing)."""

    services: set[str] = field(default_factory=set)
    with_identity: set[str] = field(default_factory=set)
    callers: CallerRefs = field(default_factory=list)


def _services(check: _Check, value: Any) -> tuple[dict[str, ServiceSpec], _Declared]:
    raw = check.mapping(value, "services")
    out: dict[str, ServiceSpec] = {}
    declared = _Declared()
    for name, spec in (raw or {}).items():
        path = f"services.{name}"
        if not isinstance(name, str) or not NAME_RE.fullmatch(name):
            check.error(path, "is not a valid service name (letters, digits, '.', '_', '-')")
            continue
        declared.services.add(name)
        if spec is None:
            spec = {}
        fields = check.fields(spec, path, (), SERVICE_FIELDS)
        if fields is None:
            continue
        if fields.get("identity") is not None:
            declared.with_identity.add(name)
        timeout = fields.get("timeout_ms")
        out[name] = ServiceSpec(
            name=name,
            grpc_services=check.string_list(fields.get("grpc_services"),
                                            f"{path}.grpc_services", GRPC_SERVICE_RE,
                                            "gRPC service name"),
            endpoints=_endpoints(check, fields.get("endpoints"), f"{path}.endpoints"),
            identity=_key_ref(check, fields.get("identity"), f"{path}.identity"),
            encrypt=_key_ref(check, fields.get("encrypt"), f"{path}.encrypt"),
            compress=_compression(check, fields.get("compress"), f"{path}.compress"),
            timeout_ms=0 if timeout is None else (
                check.integer(timeout, f"{path}.timeout_ms", 1, MAX_TIMEOUT_MS) or 0),
            allow=_allow(check, fields.get("allow"), f"{path}.allow",
                         declared.callers),
            retry=_retry(check, fields.get("retry"), f"{path}.retry"),
            secret_metadata=check.string_list(fields.get("secret_metadata"),
                                              f"{path}.secret_metadata", METADATA_NAME_RE,
                                              "lower-case metadata name"),
            mode=_mode(check, fields.get("mode"), f"{path}.mode"),
        )
    return out, declared


def _endpoints(check: _Check, value: Any, path: str) -> tuple[str, ...]:
    valid: list[str] = []
    for i, endpoint in enumerate(check.string_list(value, path, ENDPOINT_RE,
                                                   "HOST:PORT endpoint")):
        port = int(endpoint.rpartition(":")[2])
        if 1 <= port <= 65535:
            valid.append(endpoint)
        else:
            check.error(f"{path}[{i}]", f"port {port} is not between 1 and 65535")
    return tuple(valid)


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


def _allow(check: _Check, value: Any, path: str, callers: CallerRefs) -> tuple[AllowRule, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        check.error(path, "must be a list")
        return ()
    rules: list[AllowRule] = []
    for i, item in enumerate(value):
        rule_path = f"{path}[{i}]"
        fields = check.fields(item, rule_path, ("caller", "methods"), ("rate_limit", "mode"))
        if fields is None:
            continue
        caller = None
        if "caller" in fields:
            caller = "*" if fields["caller"] == "*" else check.string(
                fields["caller"], f"{rule_path}.caller", NAME_RE, "service name")
            if caller is not None:
                callers.append((f"{rule_path}.caller", caller))
        methods: tuple[str, ...] = ()
        if "methods" in fields:
            raw_methods = fields["methods"]
            if not isinstance(raw_methods, list) or not raw_methods:
                check.error(f"{rule_path}.methods", "must be a non-empty list of method patterns")
            else:
                errors_before = len(check.errors)
                methods = check.string_list(
                    raw_methods, f"{rule_path}.methods", METHOD_RE,
                    "method pattern (/pkg.Service/Method, /pkg.Service/* or *)")
                if len(check.errors) != errors_before:
                    methods = ()  # a rule is kept whole or not at all
        rate = _rate_limit(check, fields.get("rate_limit"), f"{rule_path}.rate_limit")
        mode = _mode(check, fields.get("mode"), f"{rule_path}.mode")
        if caller is not None and methods:
            rules.append(AllowRule(caller, methods, rate, mode))
    return tuple(rules)


def _mode(check: _Check, value: Any, path: str) -> Mode:
    if value is None:
        return Mode.ENFORCE
    try:
        return Mode(value)
    except ValueError:
        check.error(path, f"must be one of {MODES}")
        return Mode.ENFORCE


def _rate_limit(check: _Check, value: Any, path: str) -> RateLimit | None:
    if value is None:
        return None
    fields = check.fields(value, path, ("rps",), ("burst",))
    if fields is None or "rps" not in fields:
        return None
    rps = fields["rps"]
    if isinstance(rps, bool) or not isinstance(rps, int | float):
        check.error(f"{path}.rps", "must be a number")
        return None
    if rps != rps:  # NaN (math.isnan would overflow on a huge integer)
        check.error(f"{path}.rps", "must be a number")
        return None
    if rps <= 0:
        check.error(f"{path}.rps", "must be greater than 0")
        return None
    if rps > MAX_RPS:  # also refuses .inf and integers too large for a float
        check.error(f"{path}.rps", f"must be at most {MAX_RPS}")
        return None
    burst = check.integer(fields.get("burst", max(1, math.ceil(rps))), f"{path}.burst", 1,
                          MAX_BURST)
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


def _cross_check(check: _Check, keys: Mapping[str, KeySpec], key_names: set[str],
                 services: Mapping[str, ServiceSpec], declared: _Declared) -> None:
    """References between keys and services; runs after every field was read. A name that
    was declared but failed its own checks is not reported again as unknown."""
    routed: dict[str, str] = {}
    identity_owner: dict[str, str] = {}
    for name, svc in services.items():
        path = f"services.{name}"
        _check_key_refs(check, keys, key_names, svc, path)
        for key_name in svc.identity.all if svc.identity is not None else ():
            owner = identity_owner.setdefault(key_name, name)
            if owner != name:
                check.error(f"{path}.identity", f"key {key_name!r} is already the identity of "
                                                f"service {owner!r}: an identity key belongs "
                                                "to one service")
        for i, grpc_service in enumerate(svc.grpc_services):
            owner = routed.setdefault(grpc_service, name)
            if owner != name:
                check.error(f"{path}.grpc_services[{i}]",
                            f"{grpc_service!r} is already routed to service {owner!r}")
    _check_callers(check, services, declared)


def _check_key_refs(check: _Check, keys: Mapping[str, KeySpec], key_names: set[str],
                    svc: ServiceSpec, path: str) -> None:
    """A service's identity and encrypt keys exist and have a type that fits."""
    for ref, field_name, wanted in ((svc.identity, "identity", _SIGNING),
                                    (svc.encrypt, "encrypt", _ENCRYPTION)):
        if ref is None:
            continue
        for label, key_name in (("key", ref.key),
                                *((f"accept[{i}]", k) for i, k in enumerate(ref.accept))):
            key_path = f"{path}.{field_name}.{label}"
            if key_name not in key_names:
                check.error(key_path, f"unknown key {key_name!r}")
            elif key_name in keys and keys[key_name].type not in wanted[0]:
                check.error(key_path, f"key {key_name!r} is not {wanted[1]}")


def _check_callers(check: _Check, services: Mapping[str, ServiceSpec],
                   declared: _Declared) -> None:
    """Every caller a rule names exists, and every service that calls or is called has an
    identity."""
    called_or_calling = {name for name, svc in services.items()
                         if svc.allow or svc.mode is Mode.AUDIT}
    for caller_path, caller in declared.callers:
        if caller == "*":
            continue
        if caller not in declared.services:
            check.error(caller_path, f"unknown service {caller!r}")
        else:
            called_or_calling.add(caller)
    for name in sorted(called_or_calling):
        if name in services and name not in declared.with_identity:
            check.error(f"services.{name}.identity",
                        "is required: the service calls or is called by another service")


_SIGNING = (frozenset(t for t in KeyType if t.signs), "a signing key (hmac-sha256, ed25519)")
_ENCRYPTION = (frozenset(t for t in KeyType if t.encrypts),
               "an encryption key (aes-256-gcm, chacha20-poly1305)")
