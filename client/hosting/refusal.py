"""A refused call, as every host answers it: the status, the trailers, the audit line.

The out-proxy, the in-proxy, the embedded server and the SDK each refuse calls; all of them
turn a `FastProxyError` into the contracted gRPC status (the one table below) with the
trailers `fastproxy-error: REASON` and `fastproxy-proxy: ROLE`, and write one audit line
naming both parties. How the answer is delivered (aborting a grpc.aio or a sync context, or
an error object the SDK hands the app) is the host's own, a few lines each.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import grpc

from fastproxy.pipeline.metadata import SESSION_KEY, Metadata
from fastproxy.pipeline.reasons import (
    ERROR_TRAILER,
    PROXY_TRAILER,
    RULE_TRAILER,
    FastProxyError,
    Reason,
)
from fastproxy.pipeline.stages import UNKNOWN_SESSION
from fastproxy.telemetry.logs import audit_refused_call


class HostRole(enum.Enum):
    """Which host refused a call (the `fastproxy-proxy` trailer, audit lines, metrics and
    spans): the in-proxy or an embedded server (`in`), the out-proxy (`out`), the SDK in
    the app (`client`)."""

    IN = "in"
    OUT = "out"
    CLIENT = "client"

    @property
    def guards(self) -> bool:
        """True for the callee's side: the caller is learned from the call."""
        return self is HostRole.IN


STATUS_OF_REASON: dict[Reason, grpc.StatusCode] = {
    Reason.DENIED: grpc.StatusCode.PERMISSION_DENIED,
    Reason.RATE_LIMITED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Reason.UNAUTHENTICATED: grpc.StatusCode.UNAUTHENTICATED,
    Reason.MALFORMED: grpc.StatusCode.INVALID_ARGUMENT,
    Reason.NO_ROUTE: grpc.StatusCode.UNIMPLEMENTED,
    Reason.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    Reason.DEADLINE: grpc.StatusCode.DEADLINE_EXCEEDED,
}

Trailers = tuple[tuple[str, str], ...]  # ours: text only


def refusal_trailers(err: FastProxyError, role: HostRole) -> Trailers:
    trailers: Trailers = ((ERROR_TRAILER, err.reason.value), (PROXY_TRAILER, role.value))
    if err.rule:
        trailers += ((RULE_TRAILER, err.rule),)
    if err.session_unknown:  # the caller opens a new session and may try again
        return (*trailers, (SESSION_KEY, UNKNOWN_SESSION))
    return trailers


@dataclass(frozen=True, slots=True)
class Refusal:
    """What a host sends for a refused call."""

    code: grpc.StatusCode
    details: str
    trailers: Metadata  # ours, and the STATUS record when the refusal is sealed


def refuse(err: FastProxyError, role: HostRole, *, service: str, other: str, method: str,
           revision: int, peer: str = "", trace_id: str | None = None) -> Refusal:
    """Writes the call's audit line and returns its answer. `service` is the host's own
    service, `other` the other party when known ("" otherwise): the caller of an `in` host
    (an error raised after authentication names it better), the callee of the others."""
    if role.guards:
        caller, callee = err.caller or other, service
    else:
        caller, callee = service, other or err.callee
    audit_refused_call(proxy=role.value, caller=caller, callee=callee, method=method,
                       reason=err.reason.value, revision=revision, peer=peer,
                       detail=err.detail, trace_id=trace_id, rule=err.rule)
    return Refusal(STATUS_OF_REASON[err.reason], err.detail, refusal_trailers(err, role))


def handshake_failure(callee: str, code: grpc.StatusCode | None,
                      details: str | None) -> FastProxyError:
    """Why a caller has no session with `callee`, from how its `Session/Open` call failed:
    refused, or not understood (a server that does not speak protocol version 2 cannot be
    authenticated), or out of time, or unreachable."""
    if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.UNIMPLEMENTED):
        return FastProxyError(Reason.UNAUTHENTICATED,
                              f"{callee or 'the callee'} opened no session: {details}")
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return FastProxyError(Reason.DEADLINE, f"no session with {callee or 'the callee'} "
                                               "in time")
    name = code.name if code is not None else "?"
    return FastProxyError(Reason.UNAVAILABLE,
                          f"no session with {callee or 'the callee'} ({name}: {details})")
