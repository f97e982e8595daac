"""RedisBroker against a real redis-server: subscriptions on the server, foreign publishers."""

from __future__ import annotations

import asyncio
import logging
import pathlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
import pytest
import redis.asyncio

from tests.redis_support import Recorder, RedisServer, require_binary
from tests.redis_support import redis_server as run_redis_server
from wshub.brokers import BrokerState
from wshub.brokers.base import Publication
from wshub.brokers.redis import PROBE_INFIX, RedisBroker
from wshub.testing import wait_until

pytestmark = pytest.mark.anyio

StartBroker = Callable[..., Awaitable[tuple[RedisBroker, Recorder]]]


@pytest.fixture
async def start_broker(redis_url: str, prefix: str) -> AsyncIterator[StartBroker]:
    """Start RedisBrokers on the test's Redis and prefix (options overridable); close them after."""
    brokers: list[RedisBroker] = []

    async def start(**options: Any) -> tuple[RedisBroker, Recorder]:
        options.setdefault("prefix", prefix)
        broker = RedisBroker(redis_url, **options)
        recorder = Recorder()
        await broker.start(recorder)
        brokers.append(broker)
        return broker, recorder

    yield start
    for broker in brokers:
        await broker.close()


async def server_channels(admin: redis.asyncio.Redis, prefix: str) -> set[str]:
    """PUBSUB CHANNELS under ``prefix``, without prefix and without probe channels."""
    names = await admin.pubsub_channels(f"{prefix}*")
    decoded = [name.decode() if isinstance(name, bytes) else name for name in names]
    channels = {name[len(prefix) :] for name in decoded}
    return {c for c in channels if not c.startswith(PROBE_INFIX)}


async def subscribe_calls(admin: redis.asyncio.Redis) -> int:
    """How many SUBSCRIBE commands the server has executed."""
    stats = await admin.info("commandstats")
    return int(stats.get("cmdstat_subscribe", {}).get("calls", 0))


async def test_pubsub_channels_equal_the_desired_set(
    start_broker: StartBroker, admin: redis.asyncio.Redis, prefix: str
) -> None:
    """After each call returns, PUBSUB CHANNELS holds exactly the subscribed channels."""
    broker, _ = await start_broker()
    await broker.subscribe(["a", "b", "c"])
    assert await server_channels(admin, prefix) == {"a", "b", "c"}
    await broker.subscribe(["d", "#all", "#user:42"])
    await broker.unsubscribe(["b", "#all"])
    assert await server_channels(admin, prefix) == {"a", "c", "d", "#user:42"}
    assert broker.channels == {"a", "c", "d", "#user:42"}
    await broker.unsubscribe(["a", "c", "d", "#user:42"])
    assert await server_channels(admin, prefix) == set()


async def test_probe_channel_is_on_the_server_but_not_in_channels(
    start_broker: StartBroker, admin: redis.asyncio.Redis, prefix: str
) -> None:
    """The broker's probe channel shows in PUBSUB CHANNELS, never in broker.channels."""
    broker, _ = await start_broker()
    assert broker.probe_channel.startswith(prefix + PROBE_INFIX)
    assert await admin.pubsub_channels(f"{prefix}*") == [broker.probe_channel.encode()]
    assert broker.channels == frozenset()


async def test_concurrent_subscribes_go_out_as_one_command(
    start_broker: StartBroker, admin: redis.asyncio.Redis, prefix: str
) -> None:
    """Fifty subscribe() calls made together cost one SUBSCRIBE command."""
    broker, _ = await start_broker()
    before = await subscribe_calls(admin)
    channels = [f"room-{n}" for n in range(50)]
    await asyncio.gather(*(broker.subscribe([channel]) for channel in channels))
    assert await subscribe_calls(admin) == before + 1
    assert await server_channels(admin, prefix) == set(channels)


async def test_redis_cli_publish_reaches_subscribers(
    start_broker: StartBroker, redis_server: RedisServer, unique: str
) -> None:
    """Plain `redis-cli PUBLISH wshub:<channel> '{"a":1}'` reaches the channel's subscribers."""
    broker, recorder = await start_broker(prefix="wshub:")
    await broker.subscribe([unique])
    cli = require_binary("redis-cli")
    args = [cli, "-p", str(redis_server.port), "PUBLISH", f"wshub:{unique}", '{"a":1}']
    done = await anyio.run_process(args)
    assert done.stdout.strip() == b"1"  # one subscriber connection got it
    await wait_until(lambda: recorder.publications)
    assert recorder.publications == [(unique, Publication(b'{"a":1}'))]


async def test_invalid_payloads_are_counted_logged_once_and_dropped(
    start_broker: StartBroker,
    admin: redis.asyncio.Redis,
    prefix: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Non-JSON payloads are not delivered, each is counted, one warning per channel."""
    caplog.set_level(logging.WARNING, logger="wshub.brokers.redis")
    broker, recorder = await start_broker()
    await broker.subscribe(["chat", "news"])
    for payload in (b"not json", b"\x1e{broken\n1", b"{"):
        await admin.publish(f"{prefix}chat", payload)
    await admin.publish(f"{prefix}news", b"nope")
    await admin.publish(f"{prefix}chat", b'"fine"')
    await wait_until(lambda: recorder.publications)
    assert recorder.publications == [("chat", Publication(b'"fine"'))]
    assert broker.invalid_payloads == 4
    warned = sorted(r.getMessage().split("'")[1] for r in caplog.records)
    assert warned == ["chat", "news"]


async def test_subscriber_exceptions_do_not_stop_delivery(
    start_broker: StartBroker, caplog: pytest.LogCaptureFixture
) -> None:
    """If on_publication raises, the error is logged and later publications still arrive."""
    broker, recorder = await start_broker()
    calls: list[bytes] = []

    def fragile(channel: str, publication: Publication) -> None:
        calls.append(publication.data)
        if len(calls) == 1:
            raise RuntimeError("bug in the hub")

    recorder.on_publication = fragile  # type: ignore[method-assign]
    await broker.subscribe(["x"])
    await broker.publish("x", b"1")
    await broker.publish("x", b"2")
    await wait_until(lambda: len(calls) == 2)
    assert broker.state is BrokerState.CONNECTED
    assert "bug in the hub" in caplog.text


async def test_start_with_redis_down_does_not_raise(
    redis_server: RedisServer, admin: redis.asyncio.Redis, prefix: str
) -> None:
    """start() with Redis down reports DISCONNECTED at once, then connects when Redis comes."""
    redis_server.stop()
    broker = RedisBroker(redis_server.url, prefix=prefix, reconnect_base=0.02, reconnect_cap=0.1)
    recorder = Recorder()
    try:
        with anyio.fail_after(1):
            await broker.start(recorder)
        assert recorder.states == [BrokerState.DISCONNECTED]
        assert not await broker.ready()
        await broker.subscribe(["early"])  # returns at once; applied once connected
        redis_server.start()
        await wait_until(lambda: broker.state is BrokerState.CONNECTED)
        assert await server_channels(admin, prefix) == {"early"}
        await broker.publish("early", b"1")
        await wait_until(lambda: recorder.data("early") == [b"1"])
    finally:
        await broker.close()


@pytest.mark.parametrize("variant", ["unix socket", "password", "resp3 in url"])
async def test_url_variants_connect_and_deliver(
    variant: str, tmp_path: pathlib.Path, prefix: str
) -> None:
    """unix:// URLs, credentials in the URL and ?protocol=3 all work for both connections."""
    socket_path = tmp_path / "redis.sock"
    args = {
        "unix socket": ("--unixsocket", str(socket_path)),
        "password": ("--requirepass", "s3cret"),
        "resp3 in url": (),
    }[variant]
    with run_redis_server(*args) as server:
        url = {
            "unix socket": f"unix://{socket_path}",
            "password": f"redis://:s3cret@127.0.0.1:{server.port}/0",
            "resp3 in url": f"{server.url}?protocol=3",
        }[variant]
        broker, recorder = RedisBroker(url, prefix=prefix), Recorder()
        try:
            await broker.start(recorder)
            assert broker.state is BrokerState.CONNECTED
            await broker.subscribe(["c"])
            await broker.publish("c", b"[1]", origin="o")
            await wait_until(lambda: recorder.publications)
            assert recorder.publications == [("c", Publication(b"[1]", None, "o"))]
        finally:
            await broker.close()
