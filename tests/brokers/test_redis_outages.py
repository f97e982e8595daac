"""RedisBroker through outages: Redis killed and restarted, subscriber killed, deaf, or dropped."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

import pytest
import redis
import redis.asyncio

from tests.redis_support import Recorder, RedisServer
from wshub.brokers import BrokerState
from wshub.brokers.base import Publication
from wshub.brokers.redis import RedisBroker
from wshub.core.errors import BrokerUnavailable
from wshub.testing import wait_until

pytestmark = pytest.mark.anyio


def fast_broker(url: str, prefix: str, probe_timeout: float | None = None) -> RedisBroker:
    """A RedisBroker with quick reconnects and probes, so each outage test ends in seconds."""
    return RedisBroker(
        url,
        prefix=prefix,
        reconnect_base=0.02,
        reconnect_cap=0.2,
        probe_interval=0.2,
        probe_timeout=probe_timeout,
        timeout=1.0,
    )


@pytest.fixture
async def started(redis_url: str, prefix: str) -> AsyncIterator[tuple[RedisBroker, Recorder]]:
    """A started `fast_broker` and the Recorder it reports to."""
    broker, recorder = fast_broker(redis_url, prefix), Recorder()
    await broker.start(recorder)
    yield broker, recorder
    await broker.close()


async def assert_delivers(started: tuple[RedisBroker, Recorder], channel: str, data: bytes) -> None:
    """Publish through the broker and wait until its own subscription receives it."""
    broker, recorder = started
    await broker.publish(channel, data)
    await wait_until(lambda: data in recorder.data(channel))


async def test_publish_fails_fast_when_redis_is_killed(
    started: tuple[RedisBroker, Recorder], redis_server: RedisServer
) -> None:
    """With Redis killed, publish raises BrokerUnavailable at once and the state is DISCONNECTED."""
    broker, recorder = started
    await broker.subscribe(["c"])
    redis_server.stop()
    # The loop has not seen the closed sockets yet: the command itself fails, fast.
    assert broker.state is BrokerState.CONNECTED
    began = time.monotonic()
    with pytest.raises(BrokerUnavailable, match="could not publish"):
        await broker.publish("c", b"1")
    assert time.monotonic() - began < 0.5
    await wait_until(lambda: broker.state is BrokerState.DISCONNECTED)
    began = time.monotonic()
    with pytest.raises(BrokerUnavailable, match="disconnected"):
        await broker.publish("c", b"2")
    assert time.monotonic() - began < 0.05
    assert not await broker.ready()
    assert recorder.states[-1] is BrokerState.DISCONNECTED


async def test_redis_restart_on_same_port_recovers_subscriptions(
    started: tuple[RedisBroker, Recorder],
    redis_server: RedisServer,
    admin: redis.asyncio.Redis,
    prefix: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """After a restart (empty Redis) the broker reconnects, resubscribes, logs once per outage."""
    broker, recorder = started
    caplog.set_level(logging.DEBUG, logger="wshub.brokers.redis")
    await broker.subscribe(["c", "d"])
    redis_server.stop()
    await wait_until(lambda: broker.state is BrokerState.DISCONNECTED)
    await broker.unsubscribe(["d"])  # changes during the outage never raise
    await broker.subscribe(["e"])
    await wait_until(lambda: caplog.text.count("reconnecting to") >= 3)  # several attempts
    redis_server.start()
    await wait_until(lambda: broker.state is BrokerState.CONNECTED, within=10)
    channels = await admin.pubsub_channels(f"{prefix}*")
    assert set(channels) == {f"{prefix}{c}".encode() for c in ("c", "e")} | {
        broker.probe_channel.encode()
    }
    await assert_delivers(started, "c", b'"again"')
    await assert_delivers(started, "e", b'"new"')
    assert recorder.states == [
        BrokerState.CONNECTED,
        BrokerState.DISCONNECTED,
        BrokerState.CONNECTED,
    ]
    assert broker.reconnects == 1
    levels = [r.levelno for r in caplog.records if r.levelno >= logging.INFO]
    assert levels == [logging.WARNING, logging.INFO]  # lost once, recovered once
    assert "resubscribed 2 channels" in caplog.text


async def test_killed_subscriber_connection_is_replaced(
    started: tuple[RedisBroker, Recorder], admin: redis.asyncio.Redis
) -> None:
    """CLIENT KILL TYPE pubsub: the broker reconnects and resubscribes within the probe interval."""
    broker, _ = started
    await broker.subscribe(["c"])
    assert await admin.client_kill_filter(_type="pubsub") == 1
    await wait_until(lambda: broker.reconnects == 1, within=1)
    await wait_until(lambda: broker.state is BrokerState.CONNECTED)
    await assert_delivers(started, "c", b"1")


async def test_a_probe_whose_cancellation_is_swallowed_still_times_out(
    redis_url: str, prefix: str
) -> None:
    """A publish that swallows the probe's timeout (Python 3.11 wait_for) cannot hang the probe."""
    broker = fast_broker(redis_url, prefix, probe_timeout=0.1)
    await broker.start(Recorder())
    assert broker._client is not None

    async def swallowing_publish(channel: str, message: bytes) -> int:
        try:
            await asyncio.sleep(0.5)
        except asyncio.CancelledError:
            pass  # as redis-py's asyncio.wait_for can when the reply lands with the cancel
        return 0

    broker._client.publish = swallowing_publish  # type: ignore[method-assign,assignment]
    try:
        await wait_until(lambda: broker.probe_failures >= 1, within=3)
    finally:
        began = time.monotonic()
        await broker.close()
    assert time.monotonic() - began < 2


async def test_deaf_subscriber_is_detected_by_the_probe(
    redis_server: RedisServer, prefix: str
) -> None:
    """A connection that stays open but carries nothing fails the probe and is replaced."""
    proxy = FreezableProxy("127.0.0.1", redis_server.port)
    await proxy.start()
    broker = fast_broker(proxy.url, prefix, probe_timeout=0.3)
    recorder = Recorder()
    try:
        await broker.start(recorder)
        await broker.subscribe(["c"])
        proxy.freeze()  # like a failover that leaves the old sockets open and silent
        await wait_until(lambda: broker.probe_failures >= 1, within=3)
        await wait_until(lambda: broker.reconnects >= 1 and broker.state is BrokerState.CONNECTED)
        await broker.publish("c", b"1")
        await wait_until(lambda: recorder.data("c") == [b"1"])
    finally:
        await broker.close()
        await proxy.close()


class SlowRecorder(Recorder):
    """A Recorder whose first publication on ``burst`` stalls the whole event loop."""

    def __init__(self) -> None:
        super().__init__()
        self.stalled = False

    def on_publication(self, channel: str, publication: Publication) -> None:
        """Record, and block the loop once, as a process stuck in CPU work would."""
        super().on_publication(channel, publication)
        if channel == "burst" and not self.stalled:
            self.stalled = True
            time.sleep(0.5)  # meanwhile Redis must buffer all it sends to this subscriber


async def test_output_buffer_limit_disconnect_is_survived(
    admin: redis.asyncio.Redis, redis_server: RedisServer, prefix: str
) -> None:
    """Redis drops a subscriber over `client-output-buffer-limit pubsub`; the broker recovers."""
    await admin.config_set("client-output-buffer-limit", "pubsub 64kb 32kb 1")
    broker = fast_broker(redis_server.url, prefix)
    recorder = SlowRecorder()
    try:
        await broker.start(recorder)
        await broker.subscribe(["burst", "after"])
        await asyncio.to_thread(publish_burst, redis_server.url, f"{prefix}burst")
        await wait_until(lambda: broker.reconnects >= 1 and broker.state is BrokerState.CONNECTED)
        assert "output buffer limits" in redis_server.log()  # Redis did drop it
        await broker.publish("after", b'"recovered"')
        await wait_until(lambda: recorder.data("after") == [b'"recovered"'])
    finally:
        await broker.close()


def publish_burst(url: str, channel: str) -> None:
    """Publish about 26 MB in one pipeline: more than any socket buffer can hide."""
    payload = b'"' + b"x" * 65_536 + b'"'
    with redis.Redis.from_url(url) as client, client.pipeline(transaction=False) as pipe:
        for _ in range(400):
            pipe.publish(channel, payload)
        pipe.execute()


class FreezableProxy:
    """A TCP proxy whose open connections can be frozen: sockets stay open, bytes stop.

    Attributes:
        url: the Redis URL to connect through the proxy, once started.
    """

    def __init__(self, host: str, port: int) -> None:
        self._target = (host, port)
        self._server: asyncio.Server | None = None
        self._frozen: list[list[bool]] = []  # one mutable flag per proxied connection
        self._writers: list[asyncio.StreamWriter] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self.url = ""

    async def start(self) -> None:
        """Listen on a free port of 127.0.0.1."""
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.url = f"redis://127.0.0.1:{self._server.sockets[0].getsockname()[1]}/0"

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.create_task(self._pipe(reader, writer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._target)
        except OSError:
            writer.close()
            return
        self._writers.append(up_writer)
        frozen = [False]
        self._frozen.append(frozen)
        await asyncio.gather(
            self._pump(reader, up_writer, frozen),
            self._pump(up_reader, writer, frozen),
            return_exceptions=True,
        )

    @staticmethod
    async def _pump(
        src: asyncio.StreamReader, dst: asyncio.StreamWriter, frozen: list[bool]
    ) -> None:
        try:
            while chunk := await src.read(65_536):
                if not frozen[0]:  # frozen: swallow the bytes but keep the socket open
                    dst.write(chunk)
                    await dst.drain()
        finally:
            dst.close()

    def freeze(self) -> None:
        """Stop carrying bytes on every connection open now; new ones work normally."""
        for frozen in self._frozen:
            frozen[0] = True

    async def close(self) -> None:
        """Stop listening and cut every connection."""
        if self._server is not None:
            self._server.close()
        for writer in self._writers:
            writer.close()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
