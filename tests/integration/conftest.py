"""Fixtures of the multi-process tests: a throwaway Redis and a Redis prefix per test.

The Redis fixtures come from `tests.redis_support` (the broker suites wrap the same
context manager); ``anyio_backend`` comes from tests/conftest.py.
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
    """A fresh redis-server on a free port, answering PING; killed afterwards."""
    with run_redis_server() as server:
        yield server


@pytest.fixture
def prefix() -> str:
    """A Redis channel prefix no other test uses."""
    return f"wshub-{uuid.uuid4().hex[:12]}:"


@pytest.fixture
async def admin(redis_server: RedisServer) -> AsyncIterator[redis.asyncio.Redis]:
    """A plain redis-py client on `redis_server`, to inspect it and publish like other programs."""
    client = redis.asyncio.Redis.from_url(redis_server.url)
    yield client
    await client.aclose()


@pytest.fixture(scope="session", autouse=True)
def record_frames() -> Iterator[None]:
    """Record the frames every `WireClient` exchanges (see `tests.integration.frame_log`)."""
    from tests.integration import frame_log

    undo = frame_log.install()
    yield
    undo()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the run when a recorded frame does not fit /asyncapi.json (frame_log.problems)."""
    from tests.integration import frame_log

    if not frame_log.SAMPLES:
        return
    found = frame_log.problems()
    if found:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        lines = [f"{len(found)} recorded frame(s) do not fit the AsyncAPI document:", *found]
        if reporter is not None:
            reporter.write_line("\n".join(lines[:50]), red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
