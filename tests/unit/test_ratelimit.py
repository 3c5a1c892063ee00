"""TokenBucket with explicit times: PROTOCOL.md's per-connection rate limit."""

from __future__ import annotations

import pytest

from webchat.ratelimit import TokenBucket


def takes(bucket: TokenBucket, now: float, n: int) -> list[bool]:
    return [bucket.take(now) for _ in range(n)]


def test_full_at_creation():
    bucket = TokenBucket(rate=10, burst=20, now=100.0)
    assert takes(bucket, 100.0, 20) == [True] * 20
    assert bucket.take(100.0) is False


def test_refills_at_rate():
    bucket = TokenBucket(rate=8, burst=5, now=0.0)
    assert takes(bucket, 0.0, 5) == [True] * 5
    assert bucket.take(0.0625) is False  # half a token
    assert bucket.take(0.125) is True  # one token after 1/8 s at 8/s
    assert bucket.take(0.125) is False
    assert takes(bucket, 0.4375, 3) == [True, True, False]  # 2.5 tokens accrued, 2 whole


def test_fractional_tokens_are_kept():
    bucket = TokenBucket(rate=1, burst=1, now=0.0)
    assert bucket.take(0.0) is True
    assert bucket.take(0.375) is False
    assert bucket.take(0.75) is False
    assert bucket.take(1.0) is True  # 3/8 + 3/8 + 1/4: rejected frames lose no refill


def test_refill_is_capped_at_burst():
    bucket = TokenBucket(rate=100, burst=3, now=0.0)
    assert takes(bucket, 0.0, 3) == [True] * 3
    assert takes(bucket, 3600.0, 4) == [True, True, True, False]


def test_slow_rate():
    bucket = TokenBucket(rate=0.5, burst=1, now=0.0)
    assert bucket.take(0.0) is True
    assert bucket.take(1.9) is False
    assert bucket.take(2.0) is True


def test_time_going_backwards_adds_nothing():
    # Times are multiples of 1/8 so that the float arithmetic is exact.
    bucket = TokenBucket(rate=4, burst=2, now=10.0)
    assert takes(bucket, 10.0, 2) == [True, True]
    assert bucket.take(5.0) is False
    assert bucket.take(10.125) is False  # still measured from 10.0
    assert bucket.take(10.25) is True


def test_rejections_in_a_row_are_counted_until_an_accepted_message():
    bucket = TokenBucket(rate=1, burst=2, now=0.0)
    assert takes(bucket, 0.0, 2) == [True, True]
    assert bucket.rejected_in_a_row == 0
    assert takes(bucket, 0.0, 5) == [False] * 5
    assert bucket.rejected_in_a_row == 5
    # A frame that got a token but was not an accepted message (bad_json, say) resets nothing.
    assert bucket.take(1.0) is True
    assert bucket.rejected_in_a_row == 5
    assert bucket.take(1.0) is False
    assert bucket.rejected_in_a_row == 6
    bucket.accepted()
    assert bucket.rejected_in_a_row == 0
    assert bucket.take(1.0) is False
    assert bucket.rejected_in_a_row == 1


def test_abuse_threshold_is_three_times_burst():
    burst = 4
    bucket = TokenBucket(rate=1, burst=burst, now=0.0)
    takes(bucket, 0.0, burst)
    for n in range(1, 3 * burst + 1):
        assert bucket.take(0.0) is False
        assert bucket.rejected_in_a_row == n
    assert bucket.rejected_in_a_row >= 3 * burst


@pytest.mark.parametrize(("rate", "burst"), [(10.0, 20), (2.5, 1), (1000.0, 100_000)])
def test_long_run_average_is_the_rate(rate, burst):
    bucket = TokenBucket(rate=rate, burst=burst, now=0.0)
    accepted = sum(bucket.take(i * 0.001) for i in range(100_000))  # 1000 tries/s for 100 s
    assert accepted == pytest.approx(min(100_000, burst + rate * 99.999), abs=1)
