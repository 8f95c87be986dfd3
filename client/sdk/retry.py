"""When a failed attempt is tried again, as gRPC users expect (gRFC A6): only on UNAVAILABLE,
only before any response message arrived, at most `max_attempts` attempts in all, after an
exponential backoff with full jitter that never runs past the call's deadline. A refusal of
ours (`fastproxy-error`) other than `unavailable` is final."""

from __future__ import annotations

import random
from collections.abc import Iterable

import grpc

from fastproxy.pipeline.reasons import ERROR_TRAILER, Reason
from fastproxy.policy.model import RetryPolicy

RETRYABLE_CODE = grpc.StatusCode.UNAVAILABLE


def reason_of(trailers: Iterable[tuple[str, str | bytes]] | None) -> str | None:
    """The `fastproxy-error` trailer of a failed call, if a proxy or the SDK refused it."""
    for key, value in trailers or ():
        if key == ERROR_TRAILER:
            return value.decode(errors="replace") if isinstance(value, bytes) else value
    return None


def backoff_s(policy: RetryPolicy, attempts_made: int, rng: random.Random) -> float:
    """Full jitter: uniform in [0, min(max, initial * 2^(n-1))]."""
    ceiling_ms = min(policy.max_backoff_ms,
                     policy.initial_backoff_ms * 2 ** max(attempts_made - 1, 0))
    return rng.uniform(0, ceiling_ms) / 1000


def retry_delay(policy: RetryPolicy | None, *, attempts_made: int, code: grpc.StatusCode | None,
                trailers: Iterable[tuple[str, str | bytes]] | None, responded: bool,
                remaining_s: float | None, rng: random.Random) -> float | None:
    """Seconds to wait before the next attempt, or None: this failure is final."""
    if policy is None or responded or code != RETRYABLE_CODE:
        return None
    if attempts_made >= policy.max_attempts:
        return None
    reason = reason_of(trailers)
    if reason is not None and reason != Reason.UNAVAILABLE.value:
        return None
    delay = backoff_s(policy, attempts_made, rng)
    if remaining_s is not None and delay >= remaining_s:
        return None
    return delay
