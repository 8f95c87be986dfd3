"""Why the data plane refuses a call: the reasons of the contract, raised by every stage.

Stages raise `FastProxyError(Reason.X, detail)`; the hosts turn a reason into a gRPC status
and the `fastproxy-error` / `fastproxy-proxy` trailers in one place
(`fastproxy.hosting.refusal`), so this module needs no gRPC. docs/reference.md lists the
reasons, their statuses and when each is raised.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fastproxy.pipeline.metadata import Metadata

ERROR_TRAILER = "fastproxy-error"
PROXY_TRAILER = "fastproxy-proxy"
RULE_TRAILER = "fastproxy-rule"  # denied and rate_limited: the deciding rule, or "none"


class Reason(enum.Enum):
    DENIED = "denied"
    RATE_LIMITED = "rate_limited"
    UNAUTHENTICATED = "unauthenticated"
    MALFORMED = "malformed"
    NO_ROUTE = "no_route"
    UNAVAILABLE = "unavailable"
    DEADLINE = "deadline"


class FastProxyError(Exception):
    """A refused call: a contracted reason plus a detail safe to show the caller."""

    def __init__(self, reason: Reason, detail: str, caller: str = "", *, rule: str = "",
                 callee: str = "") -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail
        # denied and rate_limited: the rule that decided (`services.S.allow[I]`) or "none"
        self.rule = rule
        # the callee when a caller's node refused before any plan named it (audit lines)
        self.callee = callee
        # The authenticated caller when the refusal came after authentication (for audit
        # lines and metrics; "" when not known). Never sent to the caller.
        self.caller = caller
        # Set by the callee's pipeline once a call was opened: seals the refusal's STATUS
        # record (code, details, trailers) -> trailers with it (docs/protocol.md, 4).
        self.seal_end: Callable[[int, str, Metadata], Metadata] | None = None
        # The callee does not know the call's session: open a new one and try again.
        self.session_unknown = False


def no_policy_yet(where: str = "") -> FastProxyError:
    """The refusal of a call that arrives before the node's first policy."""
    return FastProxyError(Reason.UNAVAILABLE,
                          f"no policy loaded yet{f' from {where}' if where else ''}")
