"""Token buckets: `rps` tokens a second, at most `burst` saved up. The clock is passed in."""

from __future__ import annotations


class TokenBucket:
    """Starts full. `try_take(now)` spends one token if there is one.

    A clock that goes backwards (now earlier than the last call) refills nothing.
    """

    __slots__ = ("_last", "_tokens", "burst", "rps")

    def __init__(self, rps: float, burst: int, now: float) -> None:
        if rps <= 0 or burst < 1:
            raise ValueError("a token bucket needs rps > 0 and burst >= 1")
        self.rps = rps
        self.burst = burst
        self._tokens = float(burst)
        self._last = now

    def try_take(self, now: float) -> bool:
        self._refill(now)
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False

    def tokens(self, now: float) -> float:
        self._refill(now)
        return self._tokens

    def reconfigure(self, rps: float, burst: int) -> None:
        """New limits from a new policy; tokens already saved are kept up to the new burst."""
        if rps <= 0 or burst < 1:
            raise ValueError("a token bucket needs rps > 0 and burst >= 1")
        self.rps = rps
        self.burst = burst
        self._tokens = min(self._tokens, float(burst))

    def _refill(self, now: float) -> None:
        elapsed = now - self._last
        if elapsed > 0:
            self._tokens = min(float(self.burst), self._tokens + elapsed * self.rps)
            self._last = now
