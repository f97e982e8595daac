"""RedisBroker's history against a real redis-server: keys, the script, epochs, several brokers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, cast

import anyio
import pytest
import redis.asyncio

from tests.redis_support import Recorder, RedisServer
from wshub.brokers import BrokerState
from wshub.brokers.base import HistoryOptions, Publication
from wshub.brokers.history import NO_HISTORY, StreamPosition
from wshub.brokers.redis import RedisBroker
from wshub.brokers.redis_history import META_INFIX, STREAM_INFIX
from wshub.brokers.redis_wire import encode_payload
from wshub.core.errors import BrokerUnavailable
from wshub.testing import TIME_SCALE, wait_until

pytestmark = pytest.mark.anyio

OPTIONS = HistoryOptions(size=3, ttl=60)
StartBroker = Callable[..., Awaitable[tuple[RedisBroker, Recorder]]]


@pytest.fixture
async def start_broker(redis_url: str, prefix: str) -> AsyncIterator[StartBroker]:
    """Start RedisBrokers with quick reconnects on the test's Redis; close them after."""
    brokers: list[RedisBroker] = []

    async def start(**options: Any) -> tuple[RedisBroker, Recorder]:
        options = {"prefix": prefix, "reconnect_base": 0.02, "reconnect_cap": 0.2, **options}
        broker, recorder = RedisBroker(redis_url, **options), Recorder()
        await broker.start(recorder)
        brokers.append(broker)
        return broker, recorder

    yield start
    for broker in brokers:
        await broker.close()


async def command_calls(admin: redis.asyncio.Redis, command: str) -> int:
    """How many times the server has executed ``command`` (lower case)."""
    stats = await admin.info("commandstats")
    return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))


async def test_keys_hold_meta_and_the_last_size_entries(
    start_broker: StartBroker, admin: redis.asyncio.Redis, prefix: str
) -> None:
    """The meta hash holds epoch, offset, ttl, bytes; the stream the last `size` entries."""
    broker, _ = await start_broker()
    for n in range(5):
        result = await broker.publish("room", b"%d" % n, origin="c9", history=OPTIONS)
    meta, stream = f"{prefix}{META_INFIX}room", f"{prefix}{STREAM_INFIX}room"
    assert await admin.hgetall(meta) == {
        b"epoch": (result.epoch or "").encode(),
        b"offset": b"5",
        b"ttl": b"60000",
        b"bytes": b"771",  # the 3 entries kept, each len(data) + ENTRY_OVERHEAD (256)
    }
    entries = cast(list[tuple[bytes, dict[bytes, bytes]]], await admin.xrange(stream))
    assert [entry_id.split(b"-")[0] for entry_id, _ in entries] == [b"3", b"4", b"5"]
    assert entries[-1][1] == {b"data": b"4", b"from": b"c9"}
    for key in (meta, stream):
        assert 59_000 < await admin.pttl(key) <= 60_000


async def test_the_envelope_on_the_wire_carries_the_offset(
    start_broker: StartBroker, admin: redis.asyncio.Redis, prefix: str
) -> None:
    """The script publishes exactly the envelope encode_payload builds, offset included."""
    broker, _ = await start_broker()
    async with admin.pubsub() as pubsub:
        await pubsub.subscribe(f"{prefix}room")
        await broker.publish("room", b"[0]", history=OPTIONS)
        await broker.publish("room", b'{"t":"hi"}', origin='c"1', history=OPTIONS)
        payloads: list[bytes] = []
        with anyio.fail_after(5 * TIME_SCALE):
            while len(payloads) < 2:
                message = await pubsub.get_message(timeout=1)
                if message is not None and message["type"] == "message":
                    payloads.append(message["data"])
    assert payloads == [
        encode_payload(b"[0]", offset=1),
        encode_payload(b'{"t":"hi"}', 'c"1', offset=2),
    ]


async def test_publish_with_history_is_one_script_call(
    start_broker: StartBroker, admin: redis.asyncio.Redis
) -> None:
    """Each publish with history costs one EVALSHA: assign, keep and publish in one step."""
    broker, _ = await start_broker()
    await broker.publish("room", b"0", history=OPTIONS)  # loads the script if needed
    before = await command_calls(admin, "evalsha")
    for n in range(10):
        await broker.publish("room", b"%d" % n, history=OPTIONS)
    assert await command_calls(admin, "evalsha") == before + 10


async def test_two_brokers_see_the_same_offsets_in_the_same_order(
    start_broker: StartBroker,
) -> None:
    """Concurrent publishes through two brokers: both deliver offsets 1..N in order."""
    (first, seen_first), (second, seen_second) = await start_broker(), await start_broker()
    await first.subscribe(["room"])
    await second.subscribe(["room"])
    brokers = [first, second]
    results = await asyncio.gather(
        *(
            brokers[n % 2].publish("room", b"%d" % n, history=HistoryOptions(500, 60))
            for n in range(200)
        )
    )
    assert sorted(r.offset or 0 for r in results) == list(range(1, 201))
    assert len({r.epoch for r in results}) == 1
    await wait_until(lambda: len(seen_first.publications) == len(seen_second.publications) == 200)
    assert seen_first.publications == seen_second.publications
    assert [p.offset for _, p in seen_first.publications] == list(range(1, 201))
    page = await second.history("room")
    assert page.publications == [p for _, p in seen_first.publications]


async def test_redis_restart_with_empty_dataset_changes_the_epoch(
    start_broker: StartBroker, redis_server: RedisServer
) -> None:
    """After Redis lost its data, the history reads as (0, "") and restarts under a new epoch."""
    broker, _ = await start_broker()
    old = [await broker.publish("room", b"%d" % n, history=OPTIONS) for n in range(3)]
    redis_server.restart()
    # The outage may be over before a poll could see DISCONNECTED: count reconnects.
    await wait_until(lambda: broker.reconnects == 1 and broker.state is BrokerState.CONNECTED)
    assert (await broker.history("room", since=3)).position == NO_HISTORY
    new = await broker.publish("room", b"x", history=OPTIONS)  # the script cache is empty too
    assert new.offset == 1 and new.epoch not in (None, old[0].epoch)
    page = await broker.history("room", since=0)
    assert page.publications == [Publication(b"x", 1)] and page.complete


async def test_a_flushed_script_cache_is_survived(
    start_broker: StartBroker, admin: redis.asyncio.Redis
) -> None:
    """After SCRIPT FLUSH the script is sent again (EVAL) and the offsets carry on."""
    broker, _ = await start_broker()
    await broker.publish("room", b"1", history=OPTIONS)
    await admin.script_flush()
    evals = await command_calls(admin, "eval")
    assert (await broker.publish("room", b"2", history=OPTIONS)).offset == 2
    assert await command_calls(admin, "eval") == evals + 1
    assert (await broker.history("room", since=0)).position.offset == 2


async def test_entries_that_outlived_their_meta_are_dropped(
    start_broker: StartBroker, admin: redis.asyncio.Redis, prefix: str
) -> None:
    """A stream whose meta hash was evicted is never read under the next epoch."""
    broker, _ = await start_broker()
    for n in range(3):
        await broker.publish("room", b"%d" % n, history=OPTIONS)
    await admin.delete(f"{prefix}{META_INFIX}room")  # as maxmemory eviction could
    assert (await broker.history("room")).position == NO_HISTORY
    result = await broker.publish("room", b"new", history=OPTIONS)
    assert result.offset == 1
    page = await broker.history("room")
    assert page.publications == [Publication(b"new", 1)]


async def test_a_lost_stream_makes_reads_incomplete(
    start_broker: StartBroker, admin: redis.asyncio.Redis, prefix: str
) -> None:
    """Without its stream, a channel keeps its position but cannot recover anything."""
    broker, _ = await start_broker()
    for n in range(3):
        result = await broker.publish("room", b"%d" % n, history=OPTIONS)
    await admin.delete(f"{prefix}{STREAM_INFIX}room")
    page = await broker.history("room", since=1)
    assert page.position == StreamPosition(3, result.epoch or "")
    assert (page.publications, page.complete) == ([], False)
    assert (await broker.history("room", since=3)).complete


async def test_reads_fail_fast_while_disconnected(
    start_broker: StartBroker, redis_server: RedisServer
) -> None:
    """With Redis down, history and presence calls raise BrokerUnavailable without waiting."""
    broker, _ = await start_broker()
    redis_server.stop()
    with pytest.raises(BrokerUnavailable, match="could not read the history of 'room'"):
        await broker.history("room")
    await wait_until(lambda: broker.state is BrokerState.DISCONNECTED)
    began = time.monotonic()
    with pytest.raises(BrokerUnavailable, match="disconnected"):
        await broker.history("room")
    with pytest.raises(BrokerUnavailable, match="disconnected"):
        await broker.publish("room", b"1", history=OPTIONS)
    with pytest.raises(BrokerUnavailable, match="disconnected"):
        await broker.presence("room")
    with pytest.raises(BrokerUnavailable, match="disconnected"):
        await broker.presence_add("room", [], ttl=1)
    assert time.monotonic() - began < 0.05


async def test_a_script_error_is_broker_unavailable(
    start_broker: StartBroker, admin: redis.asyncio.Redis, prefix: str
) -> None:
    """A key of the wrong type (someone else's data under the prefix) fails cleanly."""
    broker, _ = await start_broker()
    await admin.set(f"{prefix}{META_INFIX}room", "not a hash")
    with pytest.raises(BrokerUnavailable, match="could not publish to 'room'"):
        await broker.publish("room", b"1", history=OPTIONS)
    with pytest.raises(BrokerUnavailable, match="could not read the history"):
        await broker.history("room")
    assert broker.state is BrokerState.CONNECTED
