"""RedisBroker's presence against a real redis-server: keys, expiry, processes that die."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator
from typing import cast

import orjson
import pytest
import redis.asyncio

from tests.brokers.engines import poll_until
from tests.redis_support import Recorder
from wshub.brokers.presence import ClientInfo
from wshub.brokers.redis import RedisBroker
from wshub.brokers.redis_presence import ENTRIES_INFIX, EXPIRIES_INFIX
from wshub.testing import TIME_SCALE

pytestmark = pytest.mark.anyio

ANN = ClientInfo("c1", "ann", {"color": "red"})
BOB = ClientInfo("c2", "bob")

# A worker that adds one presence entry, says so, then waits to be killed.
DOOMED_WORKER = """
import asyncio, sys
from wshub.brokers.redis import RedisBroker
from wshub.brokers.presence import ClientInfo

class Quiet:
    def on_publication(self, channel, publication): pass
    def on_state(self, state): pass

async def main():
    url, prefix, channel, ttl = sys.argv[1:]
    broker = RedisBroker(url, prefix=prefix)
    await broker.start(Quiet())
    await broker.presence_add(channel, [ClientInfo("doomed", "zed")], float(ttl))
    print("ready", flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
"""


@pytest.fixture
async def brokers(redis_url: str, prefix: str) -> AsyncIterator[tuple[RedisBroker, RedisBroker]]:
    """Two started brokers on one Redis: two worker processes."""
    pair = RedisBroker(redis_url, prefix=prefix), RedisBroker(redis_url, prefix=prefix)
    for broker in pair:
        await broker.start(Recorder())
    yield pair
    for broker in pair:
        await broker.close()


async def test_keys_hold_entries_and_expiries(
    brokers: tuple[RedisBroker, RedisBroker], admin: redis.asyncio.Redis, prefix: str
) -> None:
    """A hash maps client to {user, info}; a sorted set to its expiry (Redis ms); both expire."""
    broker, _ = brokers
    await broker.presence_add("room", [ANN, BOB], ttl=30)
    entries, expiries = f"{prefix}{ENTRIES_INFIX}room", f"{prefix}{EXPIRIES_INFIX}room"
    stored = await admin.hgetall(entries)
    assert orjson.loads(stored[b"c1"]) == {"user": "ann", "info": {"color": "red"}}
    assert orjson.loads(stored[b"c2"]) == {"user": "bob", "info": None}
    seconds, micros = await admin.time()
    now_ms = seconds * 1000 + micros // 1000
    scores = cast(list[tuple[bytes, float]], await admin.zrange(expiries, 0, -1, withscores=True))
    for _, score in scores:
        assert now_ms + 29_000 < score <= now_ms + 30_000
    for key in (entries, expiries):
        assert 29_000 < await admin.pttl(key) <= 30_000


async def test_a_shorter_ttl_never_shortens_the_keys(
    brokers: tuple[RedisBroker, RedisBroker], admin: redis.asyncio.Redis, prefix: str
) -> None:
    """A short-lived entry added later does not shorten the keys' expiry: others live longer."""
    first, second = brokers
    await first.presence_add("room", [ANN], ttl=30)
    await second.presence_add("room", [BOB], ttl=1)
    assert await admin.pttl(f"{prefix}{ENTRIES_INFIX}room") > 28_000


async def test_two_brokers_share_entries(brokers: tuple[RedisBroker, RedisBroker]) -> None:
    """Entries added by either process are read by both; a removal is seen by both."""
    first, second = brokers
    await first.presence_add("room", [ANN], ttl=30)
    await second.presence_add("room", [BOB], ttl=30)
    assert await first.presence("room") == await second.presence("room") == {"c1": ANN, "c2": BOB}
    await second.presence_remove("room", ["c2"])
    assert await first.presence("room") == {"c1": ANN}


async def test_expired_entries_are_deleted_from_redis_on_read(
    brokers: tuple[RedisBroker, RedisBroker], admin: redis.asyncio.Redis, prefix: str
) -> None:
    """A read removes expired entries from both keys, not only from its answer."""
    broker, _ = brokers
    await broker.presence_add("room", [ANN], ttl=30)
    await broker.presence_add("room", [BOB], ttl=0.2)
    await asyncio.sleep(0.3 * TIME_SCALE)
    assert await broker.presence("room") == {"c1": ANN}
    assert await admin.hkeys(f"{prefix}{ENTRIES_INFIX}room") == [b"c1"]
    assert await admin.zrange(f"{prefix}{EXPIRIES_INFIX}room", 0, -1) == [b"c1"]


async def test_entries_not_written_by_wshub_are_skipped(
    brokers: tuple[RedisBroker, RedisBroker], admin: redis.asyncio.Redis, prefix: str
) -> None:
    """Foreign values in the hash are left out of the answer instead of failing it."""
    broker, _ = brokers
    await broker.presence_add("room", [ANN], ttl=30)
    entries, expiries = f"{prefix}{ENTRIES_INFIX}room", f"{prefix}{EXPIRIES_INFIX}room"
    await admin.hset(entries, mapping={"x": b"not json", "y": b"[1]", "z": b'{"user":5}'})
    await admin.zadd(expiries, {"x": 2**50, "y": 2**50, "z": 2**50})
    assert await broker.presence("room") == {"c1": ANN}


async def test_entries_of_a_killed_process_vanish_within_ttl(
    brokers: tuple[RedisBroker, RedisBroker],
    admin: redis.asyncio.Redis,
    redis_url: str,
    prefix: str,
) -> None:
    """A worker killed with SIGKILL (no cleanup): its entry and keys are gone within ttl."""
    broker, _ = brokers
    ttl = 1.0
    worker = await asyncio.create_subprocess_exec(
        *(sys.executable, "-c", DOOMED_WORKER, redis_url, prefix, "room", str(ttl)),
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert worker.stdout is not None
        line = await asyncio.wait_for(worker.stdout.readline(), 20 * TIME_SCALE)
        assert line == b"ready\n"
        assert set(await broker.presence("room")) == {"doomed"}
        worker.kill()  # SIGKILL: no cleanup runs
        killed = time.monotonic()
    finally:
        if worker.returncode is None:
            worker.kill()
        await worker.wait()
    keys = (f"{prefix}{ENTRIES_INFIX}room", f"{prefix}{EXPIRIES_INFIX}room")

    async def keys_gone() -> bool:
        return await admin.exists(*keys) == 0

    await poll_until(keys_gone, within=ttl + 1)  # Redis expires them, with no reader's help
    assert time.monotonic() - killed <= (ttl + 0.5) * TIME_SCALE
    assert await broker.presence("room") == {}
