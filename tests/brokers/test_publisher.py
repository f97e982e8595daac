"""Publisher: publishing to hub channels from processes that serve no WebSockets."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import anyio
import orjson
import pytest

from tests.redis_support import Recorder, RedisServer
from wshub.brokers.base import Publication
from wshub.brokers.redis import RedisBroker
from wshub.core.errors import BrokerUnavailable, PublishError
from wshub.publisher import Publisher
from wshub.testing import wait_until

pytestmark = pytest.mark.anyio


@pytest.fixture
async def subscriber(redis_url: str, prefix: str) -> AsyncIterator[tuple[RedisBroker, Recorder]]:
    """A started RedisBroker subscribed to ``news`` under the test's prefix."""
    broker, recorder = RedisBroker(redis_url, prefix=prefix), Recorder()
    await broker.start(recorder)
    await broker.subscribe(["news"])
    yield broker, recorder
    await broker.close()


async def test_async_publish_reaches_a_broker_subscriber(
    subscriber: tuple[RedisBroker, Recorder], redis_url: str, prefix: str
) -> None:
    """await publish() encodes with orjson once and reaches the hub's subscriber as plain JSON."""
    _, recorder = subscriber
    data = {"text": "héllo", "n": [1, 2.5, None]}
    async with Publisher(redis_url, prefix=prefix) as publisher:
        assert await publisher.publish("news", data) == 1
    await wait_until(lambda: recorder.publications)
    assert recorder.publications == [("news", Publication(orjson.dumps(data)))]


async def test_sync_publish_reaches_a_broker_subscriber(
    subscriber: tuple[RedisBroker, Recorder], redis_url: str, prefix: str
) -> None:
    """publish_sync() from a plain thread reaches the hub's subscriber, in order."""
    _, recorder = subscriber

    def job() -> None:
        with Publisher(redis_url, prefix=prefix) as publisher:
            for n in range(3):
                publisher.publish_sync("news", {"n": n})

    await anyio.to_thread.run_sync(job)
    await wait_until(lambda: len(recorder.publications) == 3)
    assert recorder.data("news") == [b'{"n":0}', b'{"n":1}', b'{"n":2}']


def test_memory_url_is_refused() -> None:
    """A memory:// URL raises ValueError: that broker cannot be reached from another process."""
    with pytest.raises(ValueError, match="per-process"):
        Publisher("memory://")


@pytest.mark.parametrize("channel", ["", "#all", "#user:1", "has space", "x" * 201])
async def test_invalid_channel_names_are_refused(redis_url: str, channel: str) -> None:
    """Channel names a client could not use raise ValueError, before any I/O."""
    async with Publisher(redis_url) as publisher:
        with pytest.raises(ValueError, match="invalid channel"):
            await publisher.publish(channel, 1)
        with pytest.raises(ValueError, match="invalid channel"):
            publisher.publish_sync(channel, 1)


async def test_unserialisable_data_raises_publish_error(redis_url: str) -> None:
    """Data orjson cannot encode raises PublishError."""
    async with Publisher(redis_url) as publisher:
        with pytest.raises(PublishError, match="news"):
            await publisher.publish("news", {"when": object()})


async def test_redis_down_raises_broker_unavailable(redis_server: RedisServer) -> None:
    """With Redis down, both publish flavours raise BrokerUnavailable promptly."""
    redis_server.stop()
    async with Publisher(redis_server.url, timeout=1.0) as publisher:
        started = time.monotonic()
        with pytest.raises(BrokerUnavailable, match="could not publish"):
            await publisher.publish("news", 1)
        with pytest.raises(BrokerUnavailable):
            await anyio.to_thread.run_sync(publisher.publish_sync, "news", 1)
        assert time.monotonic() - started < 2


async def test_close_and_aclose(redis_url: str) -> None:
    """close() is idempotent but refuses to leave an async client open; aclose() closes both."""
    publisher = Publisher(redis_url)
    publisher.close()
    await publisher.publish("news", 1)
    with pytest.raises(RuntimeError, match="aclose"):
        publisher.close()
    await publisher.aclose()
    await publisher.aclose()
    publisher.close()
