"""The policy: YAML schema, validated model, and the node-scoped snapshots built from it."""

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
from fastproxy.policy.schema import PolicyError, load_policy, validate_policy

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
