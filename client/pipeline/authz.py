"""Allow rules of a callee: which caller may call which method, and at what rate.

Patterns: "/pkg.Service/Method" (exact), "/pkg.Service/*" (every method of a gRPC
service) and "*" (everything). Rules are tried in order; the first that names the caller
(or "*") and matches the method decides. No rule, no call.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from fastproxy.policy.model import RateLimit


@dataclass(frozen=True, slots=True)
class MethodMatcher:
    exact: frozenset[str]
    services: frozenset[str]  # "/pkg.Service/" prefixes
    everything: bool

    @classmethod
    def compile(cls, patterns: Iterable[str]) -> MethodMatcher:
        exact: set[str] = set()
        services: set[str] = set()
        everything = False
        for pattern in patterns:
            if pattern == "*":
                everything = True
            elif pattern.endswith("/*") and pattern.startswith("/") and pattern.count("/") == 2:
                services.add(pattern[:-1])
            elif pattern.startswith("/") and pattern.count("/") == 2 and "*" not in pattern:
                exact.add(pattern)
            else:
                raise ValueError(f"method pattern {pattern!r} is not /pkg.Service/Method, "
                                 "/pkg.Service/* or *")
        return cls(frozenset(exact), frozenset(services), everything)

    def matches(self, method: str) -> bool:
        if self.everything or method in self.exact:
            return True
        cut = method.rfind("/")
        return cut > 0 and method[: cut + 1] in self.services


@dataclass(frozen=True, slots=True)
class CompiledAllowRule:
    index: int
    caller: str  # a service name or "*"
    patterns: tuple[str, ...]
    methods: MethodMatcher
    rate_limit: RateLimit | None

    @property
    def bucket_key(self) -> tuple[str, tuple[str, ...]]:
        """Identifies the rule across policy revisions (same caller and patterns, same bucket)."""
        return (self.caller, self.patterns)

    def admits(self, caller: str, method: str) -> bool:
        return (self.caller == "*" or self.caller == caller) and self.methods.matches(method)


@dataclass(frozen=True, slots=True)
class AllowList:
    rules: tuple[CompiledAllowRule, ...]

    def first_match(self, caller: str, method: str) -> CompiledAllowRule | None:
        for rule in self.rules:
            if rule.admits(caller, method):
                return rule
        return None
