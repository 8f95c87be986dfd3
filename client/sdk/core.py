"""The one per-call core both interceptor families (sync and aio) drive.

It decides, without I/O: the call's deadline (the app's, else the destination's `timeout_ms`,
else the SDK's `timeout_ms`), the metadata each attempt sends (the app's, W3C trace context,
and in embedded mode the signed call header), what each attempt does to messages (nothing
through an out-proxy; seal and open in embedded mode, with the pipeline's `OutboundCall`),
and whether a failed attempt is tried again. The sync and aio glue only wait, sleep and call.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import grpc

from fastproxy.hosting.refusal import HostRole, Refusal, refuse
from fastproxy.pipeline.metadata import Metadata
from fastproxy.pipeline.node_policy import NodePolicy
from fastproxy.pipeline.reasons import FastProxyError, Reason
from fastproxy.policy.model import RetryPolicy

from .background_policy import BackgroundPolicy
from .call_defaults import CallDefaultsTable
from .config import SdkConfig
from .messages import PASS_THROUGH, MessageCodec, SealedMessages
from .request_log import AioRequestLog, RequestLog
from .retry import retry_delay
from .trace_context import trace_metadata

OWN_PREFIX = "fastproxy-"


@dataclass(frozen=True, slots=True)
class Retry:
    """Try again after `delay` seconds."""

    delay: float


@dataclass(frozen=True, slots=True)
class Refuse:
    """End the call with the SDK's own refusal."""

    error: FastProxyError


@dataclass(frozen=True, slots=True)
class Attempt:
    """One try of a call: its timeout, metadata and message transform."""

    timeout: float | None
    metadata: Metadata
    messages: MessageCodec


class CallPlan:
    """One call as the app made it, across its attempts."""

    __slots__ = ("attempts_made", "deadline", "metadata", "method", "retry")

    def __init__(self, method: str, timeout: float | None, metadata: Metadata) -> None:
        self.method = method
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.metadata = metadata
        self.retry: RetryPolicy | None = None
        self.attempts_made = 0

    def remaining(self) -> float | None:
        return None if self.deadline is None else self.deadline - time.monotonic()

    def set_default_timeout(self, timeout_ms: int | None) -> None:
        if self.deadline is None and timeout_ms:
            self.deadline = time.monotonic() + timeout_ms / 1000


class SdkCore:
    """Shared by the four interceptors of one set; `source` is None without a policy."""

    def __init__(self, config: SdkConfig, source: BackgroundPolicy[Any] | None,
                 rng: random.Random | None = None) -> None:
        self.config = config
        self.source = source
        self.rng = rng or random.Random()

    # --- before the first attempt ------------------------------------------------------

    def plan(self, method: str | bytes, timeout: float | None,
             metadata: Iterable[tuple[str, str | bytes]] | None) -> CallPlan:
        name = method.decode() if isinstance(method, bytes) else method
        kept = tuple((key, value) for key, value in (metadata or ())
                     if not key.startswith(OWN_PREFIX))
        if not any(key == "traceparent" for key, _ in kept):
            kept += trace_metadata()
        return CallPlan(name, timeout, kept)

    def needs_policy(self) -> bool:
        """Embedded calls cannot start before the first policy is in."""
        return (self.config.embedded and self.source is not None
                and self.source.current is None)

    def policy_wait_s(self, plan: CallPlan) -> float:
        remaining = plan.remaining()
        return max(remaining, 0.0) if remaining is not None else self.config.policy_wait_s

    def no_policy(self, waited_s: float) -> FastProxyError:
        where = self.source.where if self.source is not None else "nowhere"
        return FastProxyError(Reason.UNAVAILABLE,
                              f"no policy from {where} within {waited_s:.3f}s")

    # --- each attempt ------------------------------------------------------------------

    def next_attempt(self, plan: CallPlan) -> Attempt:
        """Raises FastProxyError (no_route, unavailable, deadline) in embedded mode."""
        first = plan.attempts_made == 0
        plan.attempts_made += 1
        if self.config.embedded:
            policy: NodePolicy | None = self.source.current if self.source else None
            if policy is None:
                raise self.no_policy(0.0)
            call = policy.outbound(plan.method, time.time())
            if first:
                plan.retry = call.retry
                plan.set_default_timeout(call.timeout_ms or self.config.timeout_ms)
            messages: MessageCodec = SealedMessages(call)
            metadata = plan.metadata + call.request_metadata()
        else:
            if first:
                self._sidecar_defaults(plan)
            messages = PASS_THROUGH
            metadata = plan.metadata
        remaining = plan.remaining()
        if remaining is not None and remaining <= 0:
            raise FastProxyError(Reason.DEADLINE, "the call's deadline ran out before it "
                                                  "could be sent")
        return Attempt(remaining, metadata, messages)

    def _sidecar_defaults(self, plan: CallPlan) -> None:
        table: CallDefaultsTable | None = self.source.current if self.source else None
        defaults = table.for_method(plan.method) if table is not None else None
        if defaults is not None:
            plan.retry = defaults.retry
            plan.set_default_timeout(defaults.timeout_ms or self.config.timeout_ms)
        else:
            plan.set_default_timeout(self.config.timeout_ms)

    def after_failure(self, plan: CallPlan, code: grpc.StatusCode | None,
                      trailers: Iterable[tuple[str, str | bytes]] | None, *,
                      responded: bool, requests: RequestLog | AioRequestLog | None,
                      no_retry: bool = False) -> Retry | Refuse | None:
        """What follows a failed attempt, for every interceptor (sync and aio): `Retry`
        after a delay, `Refuse` with the SDK's own error (sealing a request failed), or
        None: the failure is the call's outcome. `no_retry`: the app cancelled the call, or
        its policy allows no retry."""
        if requests is not None and requests.error is not None:
            return Refuse(requests.error)
        if no_retry or (requests is not None and not requests.replayable):
            return None
        delay = retry_delay(plan.retry, attempts_made=plan.attempts_made, code=code,
                            trailers=trailers, responded=responded,
                            remaining_s=plan.remaining(), rng=self.rng)
        return None if delay is None else Retry(delay)

    def may_retry(self, plan: CallPlan) -> bool:
        return plan.retry is not None and plan.attempts_made < plan.retry.max_attempts

    def refused(self, error: FastProxyError, plan: CallPlan | None,
                attempt: Attempt | None = None) -> Refusal:
        """The answer to a call this SDK refuses, after its one audit line (as the
        out-proxy's, with `proxy=client`). Every refusal of the four interceptors goes
        through here once."""
        return refuse(error, HostRole.CLIENT, service=self.config.service or "",
                      other=attempt.messages.callee if attempt is not None else "",
                      method=plan.method if plan is not None else "",
                      revision=self.source.holder.revision if self.source is not None else 0)

    def close(self) -> None:
        if self.source is not None:
            self.source.close()


def compile_for(config: SdkConfig) -> Any:
    """The compile function of the policy source: the full caller policy in embedded mode,
    only timeouts and retry policies through an out-proxy."""
    if config.embedded:
        return NodePolicy.from_snapshot
    return CallDefaultsTable.from_snapshot
