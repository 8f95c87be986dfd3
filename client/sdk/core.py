"""The one per-call core both interceptor families (sync and aio) drive.

It decides, without I/O: the call's deadline (the app's, else the destination's `timeout_ms`,
else the SDK's `timeout_ms`), the metadata each attempt sends (the app's, W3C trace context,
and in embedded mode the CALL record), what each attempt does to messages and to what comes
back (nothing through an out-proxy; seal, open and check in embedded mode, with the
pipeline's `OutboundCall`), the session each embedded attempt runs in (its handshake built
and finished here, sent by the glue), and whether a failed attempt is tried again. The sync
and aio glue only wait, sleep and call.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import grpc

from fastproxy.hosting.refusal import HostRole, Refusal, handshake_failure, refuse
from fastproxy.pipeline.handshake import CallerHandshake, CallerSession
from fastproxy.pipeline.metadata import SESSION_KEY, Metadata, hello_of
from fastproxy.pipeline.node_policy import NodePolicy
from fastproxy.pipeline.reasons import FastProxyError, Reason
from fastproxy.pipeline.stages import UNKNOWN_SESSION, Destination
from fastproxy.policy.model import RetryPolicy

from .background_policy import BackgroundPolicy
from .call_defaults import CallDefaultsTable
from .config import SdkConfig
from .messages import PASS_THROUGH, MessageCodec, SealedMessages
from .request_log import AioRequestLog, RequestLog
from .retry import retry_delay
from .trace_context import trace_metadata

OWN_PREFIX = "fastproxy-"
HANDSHAKE_TIMEOUT_S = 5.0


@dataclass(frozen=True, slots=True)
class Retry:
    """Try again after `delay` seconds."""

    delay: float


@dataclass(frozen=True, slots=True)
class Refuse:
    """End the call with the SDK's own refusal."""

    error: FastProxyError


class Attempt:
    """One try of a call: its timeout, metadata and message transform (read only)."""

    __slots__ = ("messages", "metadata", "timeout")

    def __init__(self, timeout: float | None, metadata: Metadata,
                 messages: MessageCodec) -> None:
        self.timeout = timeout
        self.metadata = metadata
        self.messages = messages


class CallPlan:
    """One call as the app made it, across its attempts."""

    __slots__ = ("attempts_made", "deadline", "destination", "lost_session", "metadata",
                 "method", "policy", "retry", "session", "session_retried")

    def __init__(self, method: str, timeout: float | None, metadata: Metadata) -> None:
        self.method = method
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.metadata = metadata
        self.retry: RetryPolicy | None = None
        self.attempts_made = 0
        self.session: CallerSession | None = None  # the current attempt's (embedded mode)
        self.session_retried = False
        # the session the callee answered "unknown" for: the next handshake names it, and the
        # call is sent again only if the callee's signed answer confirms it refuses it
        self.lost_session = b""
        # the policy and destination `handshake_needed` found (embedded mode), reused by the
        # attempt that follows while that policy is in force
        self.policy: NodePolicy | None = None
        self.destination: Destination | None = None

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
        self._sessions: dict[str, CallerSession] = {}  # by destination service

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
        """Embedded calls cannot start before the first policy is in; while the Center
        refuses the credential they fail at once (FastProxyError, `unavailable`, saying why)
        rather than wait for a policy that will not come."""
        if not (self.config.embedded and self.source is not None
                and self.source.current is None):
            return False
        if self.source.refusal:
            raise self.no_policy(0.0)
        return True

    def policy_wait_s(self, plan: CallPlan) -> float:
        remaining = plan.remaining()
        return max(remaining, 0.0) if remaining is not None else self.config.policy_wait_s

    def no_policy(self, waited_s: float) -> FastProxyError:
        if self.source is not None and self.source.refusal:
            return FastProxyError(Reason.UNAVAILABLE, self.source.refusal)
        where = self.source.where if self.source is not None else "nowhere"
        return FastProxyError(Reason.UNAVAILABLE,
                              f"no policy from {where} within {waited_s:.3f}s")

    # --- the session of an embedded call -----------------------------------------------

    def _policy(self) -> NodePolicy:
        policy: NodePolicy | None = self.source.current if self.source else None
        if policy is None:
            raise self.no_policy(0.0)
        return policy

    def handshake_needed(self, plan: CallPlan) -> CallerHandshake | None:
        """In embedded mode, the handshake to send before the next attempt (none while a
        session with the call's destination serves). Raises FastProxyError (no_route)."""
        if not self.config.embedded:
            return None
        policy = self._policy()
        destination = policy.route(plan.method)
        plan.policy, plan.destination = policy, destination
        session = self._sessions.get(destination.name)
        now = time.time()
        # No aside here (a handshake rides the app's channel, in a call): a session that is
        # due is renewed before the next call.
        if session is not None and policy.caller.serves(session, destination, now) \
                and not session.due(now) and not plan.lost_session:
            plan.session = session
            return None
        return policy.caller.handshake(destination, now, lost_session=plan.lost_session)

    def make_spare_key(self, plan: CallPlan) -> None:
        """Makes the next handshake's X25519 key ahead (the aio SDK, while a handshake
        waits for its answer; the sync SDK's first handshake per policy uses the one made
        with the policy, later ones make theirs: waking the policy thread to make it during
        the round trip cost more than it saved, 0.1-0.3 ms per handshake)."""
        if plan.policy is not None:
            plan.policy.caller.spare.refill()

    def handshake_timeout(self, plan: CallPlan) -> float:
        remaining = plan.remaining()
        return HANDSHAKE_TIMEOUT_S if remaining is None else max(
            min(remaining, HANDSHAKE_TIMEOUT_S), 0.0)

    def session_opened(self, plan: CallPlan, handshake: CallerHandshake,
                       trailers: Metadata | None) -> None:
        """The callee answered the handshake (its answer is in `trailers`)."""
        destination = self._policy().route(plan.method)
        session = handshake.finish(hello_of(trailers), destination.verifiers, time.time())
        self._sessions[destination.name] = plan.session = session
        if plan.lost_session:
            plan.lost_session = b""
            if not handshake.lost_refused:
                raise FastProxyError(
                    Reason.UNAUTHENTICATED,
                    f"an answer that {destination.name!r} lost this call's session was not "
                    f"its own (its signed answer says it holds the session): changed on the "
                    f"way")

    def handshake_failed(self, plan: CallPlan, code: grpc.StatusCode | None,
                         details: str | None) -> FastProxyError:
        return handshake_failure(self._policy().route(plan.method).name, code, details)

    # --- each attempt ------------------------------------------------------------------

    def next_attempt(self, plan: CallPlan, single: bool = False) -> Attempt:
        """Raises FastProxyError (no_route, unavailable, deadline) in embedded mode, where
        `plan.session` must be set (`handshake_needed`, `session_opened`). `single`: the
        method takes one request."""
        first = plan.attempts_made == 0
        plan.attempts_made += 1
        if self.config.embedded:
            policy = self._policy()
            destination = plan.destination
            if plan.policy is not policy or destination is None:
                destination = policy.route(plan.method)
            assert plan.session is not None
            call = policy.outbound(destination, plan.session, plan.method, plan.metadata,
                                   time.time())
            if first:
                plan.retry = destination.retry
                plan.set_default_timeout(destination.timeout_ms or self.config.timeout_ms)
            messages: MessageCodec = SealedMessages(call, single)
            metadata = call.metadata
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
        if self._lost_session(plan, code, trailers, responded):
            # in a new session, whose handshake asks the callee to confirm it refuses the
            # lost one (the "unknown session" answer is not sealed: a relay could forge it)
            return Retry(0.0)
        delay = retry_delay(plan.retry, attempts_made=plan.attempts_made, code=code,
                            trailers=trailers, responded=responded,
                            remaining_s=plan.remaining(), rng=self.rng)
        return None if delay is None else Retry(delay)

    def _lost_session(self, plan: CallPlan, code: grpc.StatusCode | None,
                      trailers: Iterable[tuple[str, str | bytes]] | None,
                      responded: bool) -> bool:
        """The callee did not know the attempt's session (restarted, another instance, or
        the session expired): forget it; the call may be sent once more."""
        if (plan.session is None or plan.session_retried or responded
                or code != grpc.StatusCode.UNAUTHENTICATED
                or (SESSION_KEY, UNKNOWN_SESSION) not in tuple(trailers or ())):
            return False
        if self._sessions.get(plan.session.callee) is plan.session:
            del self._sessions[plan.session.callee]
        plan.lost_session = plan.session.session_id
        plan.session, plan.session_retried = None, True
        return True

    def may_retry(self, plan: CallPlan) -> bool:
        return plan.retry is not None and plan.attempts_made < plan.retry.max_attempts

    def _callee_of(self, plan: CallPlan | None) -> str:
        """The service the call would go to, when the policy tells ("" otherwise)."""
        if plan is None or not self.config.embedded:
            return ""
        try:
            return self._policy().route(plan.method).name
        except FastProxyError:
            return ""

    def refused(self, error: FastProxyError, plan: CallPlan | None,
                attempt: Attempt | None = None) -> Refusal:
        """The answer to a call this SDK refuses, after its one audit line (as the
        out-proxy's, with `proxy=client`). Every refusal of the four interceptors goes
        through here once."""
        return refuse(error, HostRole.CLIENT, service=self.config.service or "",
                      other=attempt.messages.callee if attempt is not None
                      else self._callee_of(plan),
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
