"""Failure reasons of the data plane and the one place that maps them to gRPC statuses.

Stages raise `FastProxyError(Reason.X, detail)`; only the gRPC glue turns a reason into a
status code and the `fastproxy-error` / `fastproxy-proxy` trailers (see CONTRACT.md).
"""

from __future__ import annotations

import enum

import grpc

ERROR_TRAILER = "fastproxy-error"
PROXY_TRAILER = "fastproxy-proxy"


class Reason(enum.Enum):
    DENIED = "denied"
    RATE_LIMITED = "rate_limited"
    UNAUTHENTICATED = "unauthenticated"
    MALFORMED = "malformed"
    NO_ROUTE = "no_route"
    UNAVAILABLE = "unavailable"
    DEADLINE = "deadline"


STATUS_OF_REASON: dict[Reason, grpc.StatusCode] = {
    Reason.DENIED: grpc.StatusCode.PERMISSION_DENIED,
    Reason.RATE_LIMITED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Reason.UNAUTHENTICATED: grpc.StatusCode.UNAUTHENTICATED,
    Reason.MALFORMED: grpc.StatusCode.INVALID_ARGUMENT,
    Reason.NO_ROUTE: grpc.StatusCode.UNIMPLEMENTED,
    Reason.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    Reason.DEADLINE: grpc.StatusCode.DEADLINE_EXCEEDED,
}


class FastProxyError(Exception):
    """A refused call: a contracted reason plus a detail safe to show the caller."""

    def __init__(self, reason: Reason, detail: str, caller: str = "") -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail
        # The authenticated caller when the refusal came after authentication (for audit
        # lines and metrics; "" when not known). Never sent to the caller.
        self.caller = caller

    @property
    def status(self) -> grpc.StatusCode:
        return STATUS_OF_REASON[self.reason]

    def trailers(self, proxy: str) -> tuple[tuple[str, str], ...]:
        return ((ERROR_TRAILER, self.reason.value), (PROXY_TRAILER, proxy))
