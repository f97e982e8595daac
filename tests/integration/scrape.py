"""Reading ``/metrics`` in tests: scrape, parse, look samples up, and wait for values.

Deadlines are multiplied by ``WSHUB_TEST_TIME_SCALE``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import httpx
from prometheus_client.parser import text_string_to_metric_families

from wshub.testing import TIME_SCALE

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(url: str) -> Samples:
    """``GET url`` (a /metrics URL) and parse it into ``{(name, labels): value}``."""
    async with httpx.AsyncClient(trust_env=False, timeout=5 * TIME_SCALE) as client:
        response = await client.get(url)
    assert response.status_code == 200, response.text
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """The value of sample ``name`` with exactly ``labels``; 0 when absent (never counted)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


async def wait_metrics(
    url: str, check: Callable[[Samples], bool], within: float = 5.0, what: str = "metrics"
) -> Samples:
    """Scrape until ``check(samples)`` holds; return those samples.

    Raises:
        AssertionError: not within ``within`` s (scaled), showing the wshub samples seen.
    """
    deadline = time.monotonic() + within * TIME_SCALE
    while True:
        samples = await scrape(url)
        if check(samples):
            return samples
        if time.monotonic() > deadline:
            seen = {
                (name, dict(labels).__repr__()): v
                for (name, labels), v in samples.items()
                if name.startswith("wshub_") and not name.endswith("_created")
            }
            raise AssertionError(f"{what} not reached within {within * TIME_SCALE:.1f} s: {seen}")
        await asyncio.sleep(0.05)
