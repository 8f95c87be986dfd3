"""The policy: YAML schema, validated model, and the node-scoped snapshots built from it.

The schema (YAML, key parsing) is imported on first use: a proxy fed by the Center never
parses YAML, and not importing it keeps about 10 MiB out of its resident memory.
"""

from typing import TYPE_CHECKING, Any

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

if TYPE_CHECKING:
    from fastproxy.policy.schema import PolicyError, load_policy, validate_policy

_SCHEMA_NAMES = ("PolicyError", "load_policy", "validate_policy")


def __getattr__(name: str) -> Any:
    if name in _SCHEMA_NAMES:
        from fastproxy.policy import schema

        return getattr(schema, name)
    raise AttributeError(f"module 'fastproxy.policy' has no attribute {name!r}")


__all__ = [
    "AllowRule",
    "Compression",
    "KeyRef",
    "KeySpec",
    "KeyType",
    "Policy",
    "PolicyError",
    "RateLimit",
    "RetryPolicy",
    "ServiceSpec",
    "load_policy",
    "validate_policy",
]
