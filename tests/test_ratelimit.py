"""Specification of the token bucket: `rps` tokens a second, `burst` at most, clock passed in."""

from __future__ import annotations

import pytest

from fastproxy.pipeline.ratelimit import TokenBucket

T0 = 1000.0


def test_a_new_bucket_allows_a_burst_then_refuses() -> None:
    bucket = TokenBucket(rps=10, burst=5, now=T0)
    assert [bucket.try_take(T0) for _ in range(6)] == [True] * 5 + [False]


def test_tokens_come_back_at_rps() -> None:
    bucket = TokenBucket(rps=10, burst=5, now=T0)
    for _ in range(5):
        bucket.try_take(T0)
    assert not bucket.try_take(T0 + 0.05)
    assert bucket.try_take(T0 + 0.1)
    assert not bucket.try_take(T0 + 0.1)


def test_saved_tokens_never_exceed_the_burst() -> None:
    bucket = TokenBucket(rps=10, burst=5, now=T0)
    assert bucket.tokens(T0 + 3600) == 5


def test_rps_10_burst_5_lets_at_most_15_of_30_calls_through_in_one_second() -> None:
    bucket = TokenBucket(rps=10, burst=5, now=T0)
    passed = sum(bucket.try_take(T0 + i / 30) for i in range(30))
    assert 14 <= passed <= 15


def test_a_clock_going_backwards_refills_nothing() -> None:
    bucket = TokenBucket(rps=10, burst=1, now=T0)
    assert bucket.try_take(T0)
    assert not bucket.try_take(T0 - 100)
    assert not bucket.try_take(T0 + 0.05)
    assert bucket.try_take(T0 + 0.1)


def test_reconfiguring_keeps_saved_tokens_up_to_the_new_burst() -> None:
    bucket = TokenBucket(rps=10, burst=5, now=T0)
    bucket.reconfigure(rps=1, burst=2)
    assert [bucket.try_take(T0) for _ in range(3)] == [True, True, False]
    assert bucket.try_take(T0 + 1.0)


def test_fractional_rates_work() -> None:
    bucket = TokenBucket(rps=0.5, burst=1, now=T0)
    assert bucket.try_take(T0)
    assert not bucket.try_take(T0 + 1.9)
    assert bucket.try_take(T0 + 2.0)


@pytest.mark.parametrize(("rps", "burst"), [(0, 1), (-1, 1), (1, 0)])
def test_a_bucket_without_a_positive_rate_or_burst_is_refused(rps: float, burst: int) -> None:
    with pytest.raises(ValueError):
        TokenBucket(rps=rps, burst=burst, now=T0)
