"""Buckets: the plain-integer histogram the hub counts into without Prometheus."""

from __future__ import annotations

import pytest

from wshub.core.buckets import LATENCY_BOUNDS, QUEUE_DEPTH_BOUNDS, Buckets


def test_values_land_in_the_first_bucket_whose_bound_they_do_not_exceed() -> None:
    """``value <= bound`` as Prometheus counts; above the last bound is the +Inf bucket."""
    buckets = Buckets([1, 5])
    for value in (0, 1, 1.5, 5, 6, 100):
        buckets.observe(value)
    assert buckets.counts == [2, 2, 2]
    assert buckets.count == 6
    assert buckets.sum == pytest.approx(113.5)


@pytest.mark.parametrize("bounds", [[], [1, 1], [2, 1]])
def test_bounds_must_increase(bounds: list[float]) -> None:
    """Empty or non-increasing bounds are refused."""
    with pytest.raises(ValueError):
        Buckets(bounds)


def test_shipped_bounds_are_valid() -> None:
    """The depth and latency bounds build."""
    assert len(Buckets(QUEUE_DEPTH_BOUNDS).counts) == len(QUEUE_DEPTH_BOUNDS) + 1
    assert len(Buckets(LATENCY_BOUNDS).counts) == len(LATENCY_BOUNDS) + 1
