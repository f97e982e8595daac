"""Fixtures for the broker suites: a throwaway Redis per test, unique names, an admin client.

The ``anyio_backend`` fixture (asyncio) comes from tests/conftest.py.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
import redis.asyncio

from tests.redis_support import RedisServer
from tests.redis_support import redis_server as run_redis_server


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
