"""What the conformance suites share: the engines under test and polling on async reads."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from tests.redis_support import Recorder
from wshub.brokers.memory import MemoryBroker
from wshub.brokers.redis import RedisBroker
from wshub.brokers.redis_cluster import RedisClusterBroker
from wshub.testing import TIME_SCALE

#: A broker of any engine: all implement Broker, History and Presence.
Engine = MemoryBroker | RedisBroker | RedisClusterBroker
#: The ``make_broker`` fixture: start one more broker of the engine under test.
MakeBroker = Callable[[], Awaitable[tuple[Engine, Recorder]]]


async def poll_until(
    predicate: Callable[[], Awaitable[bool]], within: float = 5.0, interval: float = 0.02
) -> None:
    """Await ``predicate()`` until it is true; fail after ``within`` seconds (scaled).

    Raises:
        TimeoutError: the condition did not become true in time.
    """
    deadline = time.monotonic() + within * TIME_SCALE
    while not await predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met within {within * TIME_SCALE:.1f} s")
        await asyncio.sleep(interval)


async def sleep_scaled(seconds: float) -> None:
    """Sleep ``seconds`` times WSHUB_TEST_TIME_SCALE (for waits that outlast a ttl)."""
    await asyncio.sleep(seconds * TIME_SCALE)
