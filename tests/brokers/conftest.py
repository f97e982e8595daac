"""Fixtures for the broker suites: a throwaway Redis per test, unique names, an admin client.

The ``anyio_backend`` fixture (asyncio) comes from tests/conftest.py.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
import redis.asyncio

from tests.brokers.engines import Engine, MakeBroker
from tests.redis_support import Recorder, RedisServer
from tests.redis_support import redis_server as run_redis_server
from wshub.brokers.memory import MemoryBroker
from wshub.brokers.redis import RedisBroker
from wshub.brokers.redis_cluster import RedisClusterBroker


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A fresh redis-server on a free port, started and answering PING; killed afterwards."""
    with run_redis_server() as server:
        yield server


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The URL of `redis_server`."""
    return redis_server.url


@pytest.fixture
def unique() -> str:
    """A name no other test uses, for channels and prefixes."""
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture
def prefix(unique: str) -> str:
    """A Redis channel prefix of this test's own."""
    return f"wshub-{unique}:"


@pytest.fixture
async def admin(redis_url: str) -> AsyncIterator[redis.asyncio.Redis]:
    """A plain redis-py client on `redis_server`, to inspect and poke it."""
    client = redis.asyncio.Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture(params=["memory", "redis", "cluster"])
async def make_broker(request: pytest.FixtureRequest, prefix: str) -> AsyncIterator[MakeBroker]:
    """Start brokers of one engine, all on one Redis (or one Redis Cluster, shared by the
    session); close them afterwards."""
    url = ""
    if request.param == "redis":
        url = request.getfixturevalue("redis_url")
    elif request.param == "cluster":
        url = request.getfixturevalue("redis_cluster").url
    brokers: list[Engine] = []

    async def make() -> tuple[Engine, Recorder]:
        broker: Engine
        if request.param == "cluster":
            broker = RedisClusterBroker(url, prefix=prefix)
        else:
            broker = RedisBroker(url, prefix=prefix) if url else MemoryBroker()
        recorder = Recorder()
        await broker.start(recorder)
        brokers.append(broker)
        return broker, recorder

    yield make
    for broker in brokers:
        await broker.close()
