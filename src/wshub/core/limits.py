"""Rate limiting: a token bucket per connection, with strikes for clients that keep going.

No event loop here: callers pass the current time (``loop.time()``).
"""

from __future__ import annotations


class TokenBucket:
    """Allows ``rate`` frames per second on average and bursts of up to ``burst``.

    Args:
        rate: tokens added per second.
        burst: the bucket's size; it starts full.

    Attributes:
        strikes: frames refused since the bucket was last full; a client that keeps
            flooding piles them up, a calm one has them cleared.
    """

    __slots__ = ("rate", "burst", "tokens", "stamp", "strikes")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.stamp = now
        self.strikes = 0

    def take(self, now: float) -> bool:
        """Take one token.

        Returns:
            True when the frame may pass; False (and a strike) when the bucket is empty.
        """
        tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if tokens >= self.burst:
            self.strikes = 0
        if tokens < 1:
            self.tokens = tokens
            self.strikes += 1
            return False
        self.tokens = tokens - 1
        return True
