"""`fastproxy explain`: what a callee decides for one call under a policy, and why.

The decision is not re-implemented here: the callee's in-node policy is built as the Center
builds it for the callee's in-proxy (`scope_snapshot` -> `NodePolicy.from_snapshot`), and its
allow list decides (`AllowList.decide`), so the answer is the in-proxy's by construction.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from fastproxy.pipeline.authz import NO_RULE
from fastproxy.pipeline.metadata import grpc_service_of
from fastproxy.pipeline.node_policy import NodePolicy
from fastproxy.policy.model import Policy
from fastproxy.policy.scope import scope_snapshot
from fastproxy.v1 import policy_pb2 as pb


class Verdict(enum.Enum):
    ALLOWED = "allowed"
    WOULD_DENY = "would_deny"  # passes in audit mode; enforcing would deny it
    DENIED = "denied"
    NO_ROUTE = "no_route"  # no service serves the method's gRPC service

    @property
    def passes(self) -> bool:
        return self in (Verdict.ALLOWED, Verdict.WOULD_DENY)


@dataclass(frozen=True, slots=True)
class Endpoint:
    address: str
    registered: bool  # else listed in the policy


@dataclass(frozen=True, slots=True)
class CalleeFacts:
    """What a call to the callee gets, whoever calls."""

    timeout_ms: int = 0  # 0: no cap
    encryption: str = ""  # the AEAD (key type) and key, or "" when not encrypted
    compression: str = ""  # "gzip from 1024 bytes", or ""
    endpoints: tuple[Endpoint, ...] = ()


@dataclass(frozen=True, slots=True)
class Explanation:
    caller: str
    method: str
    revision: int
    verdict: Verdict
    detail: str  # in words, as a refusal would say it
    callee: str = ""
    facts: CalleeFacts = field(default_factory=CalleeFacts)
    rule: str = NO_RULE  # the rule that allowed it, or "none"
    audit: str = ""  # what is in audit mode when the verdict is would_deny
    rate_limit: tuple[float, int] | None = None  # (rps, burst) of the deciding rule


class ExplainError(ValueError):
    """The question cannot be asked of this policy (unknown caller, bad method name)."""


def explain(policy: Policy, revision: int, caller: str, method: str,
            registered: Mapping[str, Sequence[str]] | None = None) -> Explanation:
    if caller not in policy.services:
        raise ExplainError(f"unknown service {caller!r}: no such service in revision "
                           f"{revision}")
    grpc_service = grpc_service_of(method)
    if not grpc_service or method.endswith("/"):
        raise ExplainError(f"{method!r} is not a method name (/pkg.Service/Method)")
    owner = policy.owner_of(grpc_service)
    if owner is None:
        return Explanation(caller, method, revision, Verdict.NO_ROUTE,
                           f"no service serves {grpc_service!r}")
    snapshot = scope_snapshot(policy, pb.ROLE_IN, owner.name)
    snapshot.revision = revision
    callee = NodePolicy.from_snapshot(snapshot).callee
    allow = callee.allow
    # a caller whose identity is not even sent to the callee: no rule names it
    decision = allow.decide(caller, method) if caller in callee.callers else None
    facts = _facts(policy, owner.name, registered or {})
    if decision is None or not decision.allowed:
        return Explanation(caller, method, revision, Verdict.DENIED,
                           f"{allow.denial(caller, method)} (policy revision {revision}, "
                           f"rule {NO_RULE})", owner.name, facts)
    if decision.would_deny:
        return Explanation(caller, method, revision, Verdict.WOULD_DENY,
                           f"{allow.denial(caller, method)}; passes as would_deny: "
                           f"{decision.audit} is in audit mode", owner.name, facts,
                           audit=decision.audit)
    rule = decision.rule
    assert rule is not None
    limit = rule.rate_limit
    return Explanation(caller, method, revision, Verdict.ALLOWED,
                       f"allowed by {rule.path} ({rule.caller}: {', '.join(rule.patterns)})",
                       owner.name, facts, rule=rule.path,
                       rate_limit=(limit.rps, limit.burst) if limit is not None else None)


def _facts(policy: Policy, callee: str, registered: Mapping[str, Sequence[str]]
           ) -> CalleeFacts:
    spec = policy.services[callee]
    encryption = ""
    if spec.encrypt is not None:
        key = policy.keys[spec.encrypt.key]
        encryption = f"{key.type.value} (key {key.name})"
    compression = ""
    if spec.compress is not None:
        compression = f"{spec.compress.algorithm} from {spec.compress.min_bytes} bytes"
    endpoints = [Endpoint(address, False) for address in spec.endpoints]
    endpoints += [Endpoint(address, True) for address in registered.get(callee, ())
                  if address not in spec.endpoints]
    return CalleeFacts(spec.timeout_ms, encryption, compression, tuple(endpoints))
