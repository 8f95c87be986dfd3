"""Replay protection for call headers: a timestamp window plus a bounded cache of nonces.

A nonce is remembered until its timestamp leaves the window. When the cache is full, the
oldest entry is forgotten and the window's lower edge is raised to that entry's timestamp,
so a forgotten nonce can never be accepted again: under overload the cache refuses late
calls instead of admitting a replay.
"""

from __future__ import annotations

from fastproxy.pipeline.reasons import FastProxyError, Reason


def check_fresh(timestamp_ms: int, now: float, window_s: float, what: str) -> None:
    """UNAUTHENTICATED when `timestamp_ms` is more than `window_s` away from `now`."""
    skew = timestamp_ms / 1000.0 - now
    if skew > window_s:
        raise FastProxyError(Reason.UNAUTHENTICATED, f"{what} timestamp is in the future")
    if skew < -window_s:
        raise FastProxyError(Reason.UNAUTHENTICATED, f"{what} timestamp has expired")


class ReplayCache:
    """Remembers (nonce, timestamp) pairs seen inside the window. Not locked: the caller
    (`NodeState`) serializes access."""

    __slots__ = ("_floor_ms", "_seen", "max_entries", "window_s")

    def __init__(self, window_s: float = 30.0, max_entries: int = 100_000) -> None:
        if window_s <= 0 or max_entries < 1:
            raise ValueError("a replay cache needs window_s > 0 and max_entries >= 1")
        self.window_s = window_s
        self.max_entries = max_entries
        self._seen: dict[bytes, int] = {}  # insertion order: oldest first
        self._floor_ms = -(1 << 62)

    def __len__(self) -> int:
        return len(self._seen)

    def check_and_remember(self, nonce: bytes, timestamp_ms: int, now: float) -> None:
        check_fresh(timestamp_ms, now, self.window_s, "call header")
        if timestamp_ms <= self._floor_ms:
            raise FastProxyError(
                Reason.UNAUTHENTICATED, "call header is older than the replay cache can vouch for"
            )
        if nonce in self._seen:
            raise FastProxyError(Reason.UNAUTHENTICATED, "call header was replayed")
        self._forget_expired(now)
        self._seen[nonce] = timestamp_ms
        while len(self._seen) > self.max_entries:
            oldest = next(iter(self._seen))
            self._floor_ms = max(self._floor_ms, self._seen.pop(oldest))

    def _forget_expired(self, now: float) -> None:
        # Oldest-inserted first; entries behind a younger one wait for the size bound, which
        # is safe (forgetting raises the floor only as far as the forgotten timestamp).
        horizon_ms = (now - self.window_s) * 1000.0
        seen = self._seen
        while seen:
            oldest = next(iter(seen))
            if seen[oldest] >= horizon_ms:
                return
            del seen[oldest]
