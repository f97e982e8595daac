"""The Redis Cluster engine: URLs, the hash-tagged layout, and a slot that changes owner.

The conformance suites run over this engine too (``make_broker``'s ``cluster``); these
tests cover what only the cluster has.
"""

from __future__ import annotations

import pytest
import redis.asyncio
from redis.crc import key_slot

from tests.cluster_support import RedisClusterNodes
from tests.redis_support import Recorder
from wshub.brokers import broker_from_url
from wshub.brokers.base import BrokerState, HistoryOptions
from wshub.brokers.redis import RedisBroker, check_url
from wshub.brokers.redis_cluster import ClusterHistory, ClusterPresence, RedisClusterBroker
from wshub.brokers.redis_connections import parse_cluster_url, redis_location
from wshub.brokers.redis_history import RedisHistory
from wshub.brokers.redis_presence import RedisPresence
from wshub.testing import wait_until

pytestmark = pytest.mark.anyio


def test_cluster_urls_are_parsed_and_never_quote_the_password() -> None:
    """Startup nodes in order, port 6379 by default, credentials out of the location."""
    target = parse_cluster_url("redis+cluster://u:s3cret@10.0.0.1:7000,10.0.0.2,[::1]:7002")
    assert target.nodes == (("10.0.0.1", 7000), ("10.0.0.2", 6379), ("::1", 7002))
    assert (target.username, target.password) == ("u", "s3cret")
    location = redis_location("redis+cluster://u:s3cret@10.0.0.1:7000,10.0.0.2")
    assert location == "cluster 10.0.0.1:7000,10.0.0.2:6379"
    for bad in ("redis+cluster://", "redis+cluster://h:1/0", "redis+cluster://h:1?db=1"):
        with pytest.raises(ValueError) as info:
            parse_cluster_url(bad)
        assert "s3cret" not in str(info.value)


def test_the_scheme_picks_the_cluster_engine_and_plain_redis_refuses_it() -> None:
    """broker_from_url serves redis+cluster://; RedisBroker (and Publisher) refuse it."""
    broker = broker_from_url("redis+cluster://127.0.0.1:7000", prefix="p:", probe_interval=1)
    assert isinstance(broker, RedisClusterBroker)
    with pytest.raises(ValueError, match="cluster broker"):
        check_url("redis+cluster://127.0.0.1:7000")
    with pytest.raises(ValueError, match="cluster broker"):
        RedisBroker("redis+cluster://127.0.0.1:7000")
    with pytest.raises(ValueError, match="braces"):
        RedisClusterBroker("redis+cluster://127.0.0.1:7000", prefix="{app}:")


def test_every_name_of_a_channel_shares_one_slot_and_plain_names_are_unchanged() -> None:
    """Cluster: hash-tagged history/presence keys and channel in the channel's slot.
    Plain Redis: the documented names, without braces."""
    history, presence = ClusterHistory("wshub:"), ClusterPresence("wshub:")
    assert history.keys("chat:lobby") == [
        "wshub:history-meta:{chat:lobby}",
        "wshub:history:{chat:lobby}",
    ]
    assert presence.keys("chat:lobby") == [
        "wshub:presence:{chat:lobby}",
        "wshub:presence-expiry:{chat:lobby}",
    ]
    assert history.pubsub_channel("chat:lobby") == "wshub:{chat:lobby}"
    names = [*history.keys("chat:lobby"), *presence.keys("chat:lobby")]
    names += [history.pubsub_channel("chat:lobby"), history.idempotency_key("chat:lobby", "k")]
    assert len({key_slot(name.encode()) for name in names}) == 1
    assert RedisHistory("wshub:").keys("chat:lobby") == [
        "wshub:history-meta:chat:lobby",
        "wshub:history:chat:lobby",
    ]
    assert RedisHistory("wshub:").pubsub_channel("chat") == "wshub:chat"
    assert RedisPresence("wshub:").keys("c") == ["wshub:presence:c", "wshub:presence-expiry:c"]
    command = history.publish_command("chat", b"1", None, HistoryOptions(size=5, ttl=5))
    assert command[1] == history.publish_script.sha
    assert "redis.call('SPUBLISH', ARGV[1]" in history.publish_script.source
    assert "redis.call('PUBLISH'" not in history.publish_script.source


async def test_plain_json_spublished_by_another_program_reaches_the_broker(
    redis_cluster: RedisClusterNodes, prefix: str, unique: str
) -> None:
    """``SPUBLISH <prefix>{channel} <json>`` on the slot's master is a publication."""
    broker, recorder = RedisClusterBroker(redis_cluster.url, prefix=prefix), Recorder()
    await broker.start(recorder)
    try:
        await broker.subscribe([unique])
        owner = broker.shard_of(unique)
        assert owner is not None
        client = redis.asyncio.Redis(port=int(owner.rpartition(":")[2]))
        try:
            assert await client.spublish(f"{prefix}{{{unique}}}", b'{"a":1}') == 1
        finally:
            await client.aclose()
        await wait_until(lambda: recorder.data(unique))
        assert recorder.data(unique) == [b'{"a":1}']
    finally:
        await broker.close()


async def test_a_slot_moved_to_another_master_is_followed(
    redis_cluster: RedisClusterNodes, prefix: str, unique: str
) -> None:
    """CLUSTER SETSLOT gives a channel's (empty) slot to another master: the broker reads
    the new slot map, subscribes the channel on its new owner and publishes there."""
    broker = RedisClusterBroker(redis_cluster.url, prefix=prefix, probe_interval=0.5)
    recorder = Recorder()
    await broker.start(recorder)
    channel = unique
    slot = key_slot(f"{prefix}{{{channel}}}".encode())
    before = broker.shard_of(channel)
    assert before is not None
    old_port = int(before.rpartition(":")[2])
    new_port = next(p for p in redis_cluster.ports if p != old_port)
    try:
        await broker.subscribe([channel, "steady"])
        await broker.publish(channel, b"1")
        await wait_until(lambda: recorder.data(channel) == [b"1"])
        redis_cluster.move_slot(slot, new_port)
        await wait_until(lambda: broker.shard_of(channel) == f"127.0.0.1:{new_port}", 10)
        await wait_until(lambda: broker.state is BrokerState.CONNECTED, 10)

        async def delivered() -> bool:
            try:
                await broker.publish(channel, b"2")
            except Exception:
                return False
            await wait_until(lambda: b"2" in recorder.data(channel), 2)
            return True

        for _ in range(50):
            if await delivered():
                break
        assert recorder.data(channel)[-1] == b"2"
        await broker.publish("steady", b"3")
        await wait_until(lambda: recorder.data("steady") == [b"3"])
    finally:
        redis_cluster.move_slot(slot, old_port)
        redis_cluster.wait_ok()
        await broker.close()
