"""Allow rules of a callee: which caller may call which method, and at what rate.

Patterns: "/pkg.Service/Method" (exact), "/pkg.Service/*" (every method of a gRPC
service) and "*" (everything). Rules are tried in order; the first that names the caller
(or "*") and matches the method decides. No rule, no call, unless audit mode lets it pass
as `would_deny`: the service's (`mode: audit`), or that of a rule naming the caller (a rule
being narrowed). `decide` is the one place that decides; `fastproxy explain` runs it too.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

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


NO_RULE = "none"  # the `fastproxy-rule` of a decision no rule made


def rule_path(service: str, index: int) -> str:
    """How operators name a rule: `services.song_service.allow[2]`."""
    return f"services.{service}.allow[{index}]"


@dataclass(frozen=True, slots=True)
class CompiledAllowRule:
    index: int
    caller: str  # a service name or "*"
    patterns: tuple[str, ...]
    methods: MethodMatcher
    rate_limit: RateLimit | None
    audit: bool = False
    path: str = ""  # rule_path(...)

    @property
    def bucket_key(self) -> tuple[str, tuple[str, ...]]:
        """Identifies the rule across policy revisions (same caller and patterns, same bucket)."""
        return (self.caller, self.patterns)

    def admits(self, caller: str, method: str) -> bool:
        return (self.caller == "*" or self.caller == caller) and self.methods.matches(method)


@dataclass(frozen=True, slots=True)
class Decision:
    """What the rules say of one call. `rule` let it through (None: none did); `audit` names
    what let a call no rule allows pass as would-deny (`services.S` for the service's mode,
    a rule's path for a rule's), "" when the call is allowed or denied."""

    rule: CompiledAllowRule | None
    audit: str = ""

    @property
    def allowed(self) -> bool:
        return self.rule is not None or bool(self.audit)

    @property
    def would_deny(self) -> bool:
        return self.rule is None and bool(self.audit)

    @property
    def rule_name(self) -> str:
        """The `fastproxy-rule` value: the deciding rule's path, or `none`."""
        return self.rule.path if self.rule is not None else NO_RULE


DECISION_CACHE_LIMIT = 4096  # (caller, method) pairs whose decision a policy keeps


@dataclass(frozen=True, slots=True)
class AllowList:
    """Immutable (a policy swap brings a new one), so a decision is made once per caller
    and method and kept (`decide`), at most `DECISION_CACHE_LIMIT` of them."""

    rules: tuple[CompiledAllowRule, ...]
    service: str = ""
    audit: bool = False  # the service's mode: audit
    _decided: dict[tuple[str, str], Decision] = field(default_factory=dict, init=False,
                                                       compare=False, repr=False)

    def first_match(self, caller: str, method: str) -> CompiledAllowRule | None:
        for rule in self.rules:
            if rule.admits(caller, method):
                return rule
        return None

    def decide(self, caller: str, method: str) -> Decision:
        key = (caller, method)
        decision = self._decided.get(key)
        if decision is None:
            decision = self._decide(caller, method)
            if len(self._decided) >= DECISION_CACHE_LIMIT:
                self._decided.clear()
            self._decided[key] = decision
        return decision

    def _decide(self, caller: str, method: str) -> Decision:
        rule = self.first_match(caller, method)
        if rule is not None:
            return Decision(rule)
        if self.audit:
            return Decision(None, f"services.{self.service}")
        for rule in self.rules:
            if rule.audit and rule.caller in (caller, "*"):
                return Decision(None, rule.path)
        return Decision(None)

    def denial(self, caller: str, method: str) -> str:
        """Why `caller` may not call `method`, naming the rules that name it, if any."""
        naming = [r for r in self.rules if r.caller in (caller, "*")]
        if not naming:
            return f"no rule of {self.service!r} names {caller!r}"
        paths = ", ".join(r.path or f"allow[{r.index}]" for r in naming)
        return f"no rule of {self.service!r} lets {caller!r} call {method} (rules naming " \
               f"it: {paths})"
