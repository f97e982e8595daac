"""Buckets: a histogram of plain integers, cheap enough for the send path.

The hub counts into these with one ``bisect`` and two additions, no lock and no
Prometheus object; `wshub.metrics` reads them when it is scraped (or every second,
with several worker processes) and hands them to ``prometheus_client``.
Nothing here imports asyncio or Prometheus.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence

#: Upper bounds of the send-queue depth histogram, in frames.
QUEUE_DEPTH_BOUNDS: tuple[float, ...] = (0, 1, 2, 5, 10, 25, 50, 100, 250, 500, 1000)
#: Upper bounds of the publish-to-enqueue latency histogram, in seconds.
LATENCY_BOUNDS: tuple[float, ...] = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
)  # fmt: skip


class Buckets:
    """Counts of observations per bucket, Prometheus style (``value <= bound``).

    Args:
        bounds: the finite upper bounds, increasing; a last ``+Inf`` bucket is implied.

    Attributes:
        bounds: the finite upper bounds.
        counts: observations per bucket, NOT cumulative; one more than ``bounds``.
        sum: the sum of every observed value.

    Raises:
        ValueError: the bounds are empty or not strictly increasing.
    """

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        if not bounds or any(b >= c for b, c in zip(bounds, bounds[1:], strict=False)):
            raise ValueError("bucket bounds must be non-empty and strictly increasing")
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        """Count one observation of ``value``."""
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    @property
    def count(self) -> int:
        """How many values were observed."""
        return sum(self.counts)

    def __repr__(self) -> str:
        return f"Buckets(count={self.count}, sum={self.sum:g})"
