"""The token bucket behind the per-connection frame rate limit."""

from __future__ import annotations

import pytest

from wshub.core.limits import TokenBucket


@pytest.mark.parametrize(("rate", "burst"), [(0, 10), (-1, 10), (10, 0), (10, 0.5)])
def test_invalid_rate_or_burst_is_refused(rate: float, burst: float) -> None:
    """A rate <= 0 or a burst < 1 raises ValueError."""
    with pytest.raises(ValueError):
        TokenBucket(rate, burst, now=0.0)


def test_exactly_burst_frames_pass_at_once_then_the_next_is_refused() -> None:
    """A full bucket lets exactly `burst` frames through at one instant; the next is refused."""
    bucket = TokenBucket(rate=10, burst=5, now=100.0)
    assert [bucket.take(100.0) for _ in range(5)] == [True] * 5
    assert bucket.take(100.0) is False
    assert bucket.strikes == 1


def test_tokens_refill_at_the_rate() -> None:
    """An empty bucket gets one token back after 1/rate seconds, not before."""
    bucket = TokenBucket(rate=10, burst=2, now=0.0)
    assert bucket.take(0.0) and bucket.take(0.0)
    assert not bucket.take(0.05)  # half a token
    assert bucket.take(0.1)  # 0.5 + 0.5 tokens
    assert not bucket.take(0.1)


def test_refill_is_capped_at_burst() -> None:
    """However long a client stays quiet, it never gets more than `burst` frames at once."""
    bucket = TokenBucket(rate=100, burst=3, now=0.0)
    assert [bucket.take(3600.0) for _ in range(4)] == [True, True, True, False]


def test_a_steady_client_at_the_rate_is_never_refused() -> None:
    """Frames spaced exactly 1/rate apart pass forever, even with the bucket drained."""
    bucket = TokenBucket(rate=4, burst=1, now=0.0)
    assert all(bucket.take(i * 0.25) for i in range(1000))
    assert bucket.strikes == 0


def test_strikes_pile_up_while_flooding() -> None:
    """Each refused frame is a strike; partial refills do not clear them."""
    bucket = TokenBucket(rate=10, burst=5, now=0.0)
    for _ in range(5):
        bucket.take(0.0)
    for _ in range(3):
        assert not bucket.take(0.0)
    assert bucket.strikes == 3
    assert bucket.take(0.15)  # 1.5 tokens back: not full, strikes stay
    assert bucket.strikes == 3
    assert not bucket.take(0.15)
    assert bucket.strikes == 4


def test_strikes_reset_once_the_bucket_is_full_again() -> None:
    """A client that calms down until the bucket refills has its strikes cleared."""
    bucket = TokenBucket(rate=10, burst=5, now=0.0)
    for _ in range(8):
        bucket.take(0.0)
    assert bucket.strikes == 3
    assert bucket.take(0.5)  # 5 tokens: full again
    assert bucket.strikes == 0
