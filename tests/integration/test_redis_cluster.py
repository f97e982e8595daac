"""Hubs on a 3-master Redis Cluster (``redis+cluster://``): sharded fan-out, history, restarts.

The cluster is the session's (`tests.cluster_support.redis_cluster`); each test keeps
to its own prefix. The master-restart test leaves the cluster ``ok`` again.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable

import pytest
import redis.asyncio
from redis.crc import key_slot

from tests.cluster_support import RedisClusterNodes
from wshub.brokers.redis_cluster import RedisClusterBroker, cluster_name
from wshub.brokers.redis_cluster_session import fetch_slot_map, owner_table
from wshub.brokers.redis_connections import parse_cluster_url
from wshub.testing import RunningServer, wait_until

from .history_support import (
    Backend,
    abort,
    history,
    live_messages,
    offsets,
    open_wire,
    serve_hub,
    subscribe,
    wait_ready,
)
from .processes import NO_RATE_LIMIT, eventually, hub_env, hub_processes
from .recorders import closing, open_clients

pytestmark = [pytest.mark.anyio, pytest.mark.redis]

Serve = Callable[..., RunningServer]
CHANNELS = 42
PER_PUBLISHER = 10


@pytest.fixture
def prefix() -> str:
    """A prefix of this test's own (the cluster is shared by the session)."""
    return f"wshub-{uuid.uuid4().hex[:12]}:"


async def owners(cluster: RedisClusterNodes, prefix: str, channels: list[str]) -> dict[str, int]:
    """The port of the master owning each channel's slot, per the cluster's own slot map."""
    table = owner_table(await fetch_slot_map(parse_cluster_url(cluster.url), [], connect_timeout=2))
    found = {}
    for channel in channels:
        owner = table[key_slot(cluster_name(prefix, channel).encode())]
        assert owner is not None
        found[channel] = owner[1]
    return found


@pytest.fixture
async def node_admin(
    redis_cluster: RedisClusterNodes,
) -> AsyncIterator[dict[int, redis.asyncio.Redis]]:
    """A plain client per cluster node, by port."""
    clients = {p: redis.asyncio.Redis(port=p) for p in redis_cluster.ports}
    yield clients
    for client in clients.values():
        await client.aclose()


async def test_two_processes_fan_out_42_channels_over_the_shards_exactly_once_in_order(
    redis_cluster: RedisClusterNodes,
    node_admin: dict[int, redis.asyncio.Redis],
    prefix: str,
) -> None:
    """Two ``wshub serve`` on the cluster; 42 channels on every shard; both publish to all.

    Every client gets every publication exactly once, each publisher's in order, and all
    clients see one order per channel; each channel's subscribers sit on its own master
    only (SSUBSCRIBE), one subscriber connection per process there.
    """
    channels = [f"fan{i}" for i in range(CHANNELS)]
    placed = await owners(redis_cluster, prefix, channels)
    assert len(set(placed.values())) >= 2, placed
    env = hub_env(redis_cluster.url, prefix, **NO_RATE_LIMIT, WSHUB_MAX_SUBSCRIPTIONS="1000")
    async with hub_processes(2, env) as hubs, closing([]) as clients:
        clients += await open_clients([hubs[i % 2].ws_url() for i in range(4)], *channels)
        for channel in channels[:6]:
            name = cluster_name(prefix, channel)
            for port, admin in node_admin.items():
                reply = await admin.execute_command("PUBSUB", "SHARDNUMSUB", name)
                assert int(reply[1]) == (2 if port == placed[channel] else 0), (
                    channel,
                    port,
                    reply,
                )
        publishers = clients[:2]  # one on each process

        async def publish_all(i: int) -> None:
            for channel in channels:
                items = [{"src": i, "n": n} for n in range(PER_PUBLISHER)]
                replies = await publishers[i].publish_many(channel, items)
                assert all("result" in reply for reply in replies), replies

        await asyncio.gather(publish_all(0), publish_all(1))
        total = 2 * PER_PUBLISHER
        await wait_until(
            lambda: all(len(c.received[ch]) >= total for c in clients for ch in channels), 20
        )
        await asyncio.sleep(0.2)  # nothing more may come
        for channel in channels:
            reference = clients[0].received[channel]
            assert len(reference) == total, (channel, reference)
            for src in (0, 1):
                assert [d["n"] for d in reference if d["src"] == src] == list(range(PER_PUBLISHER))
            for client in clients:
                assert client.received[channel] == reference, channel
        for hub in hubs:
            assert "Traceback" not in hub.log(), hub.log()


async def test_history_recovery_after_a_disconnect_on_the_cluster(
    serve: Serve, redis_cluster: RedisClusterNodes, prefix: str
) -> None:
    """since/epoch after a reset recovers exactly the missed publications, then live."""
    hub_app = serve_hub(serve, Backend("cluster", redis_cluster.url, prefix))
    assert isinstance(hub_app.hub.broker, RedisClusterBroker)
    async with open_wire(hub_app.url()) as first, open_wire(hub_app.url()) as publisher:
        await subscribe(first, "hist:feed")
        assert await hub_app.publish_range("hist:feed", range(5)) == [1, 2, 3, 4, 5]
        assert offsets(await live_messages(first, "hist:feed", 5)) == [1, 2, 3, 4, 5]
        epoch = (await subscribe(publisher, "hist:feed", request_id="pos"))["epoch"]
        assert isinstance(epoch, str) and epoch
        await abort(first)
        await wait_until(lambda: hub_app.hub.connection_count == 1)
        assert await hub_app.publish_range("hist:feed", range(5, 30)) == list(range(6, 31))
        async with open_wire(hub_app.url()) as again:
            result = await subscribe(again, "hist:feed", since=5, epoch=epoch)
            assert result["recovered"] is True
            assert (result["offset"], result["epoch"]) == (30, epoch)
            assert result["messages"] == [
                {"channel": "hist:feed", "data": {"n": n}, "offset": n + 1} for n in range(5, 30)
            ]
            await publisher.publish("hist:feed", {"n": 30}, request_id="live")
            [live] = await live_messages(again, "hist:feed", 31)
            assert (live["offset"], live["data"]) == (31, {"n": 30})
            assert again.buffered == []


def channel_on(port: int, placed: dict[str, int]) -> str:
    """A channel of ``placed`` whose master is on ``port``."""
    return next(channel for channel, owner in placed.items() if owner == port)


async def test_a_master_killed_and_restarted_empty_changes_the_epoch_and_comes_back(
    serve: Serve, redis_cluster: RedisClusterNodes, prefix: str
) -> None:
    """SIGKILL one master (no replica), restart it on its port and nodes.conf.

    Documented behaviour: its slots come back empty, so its channels' histories get a new
    epoch (recovered false); the hub reconnects every shard, its subscriptions on that
    shard are restored, and publishing works again on every shard.
    """
    hub_app = serve_hub(
        serve, Backend("cluster", redis_cluster.url, prefix), redis_probe_interval=0.5
    )
    candidates = [f"hist:c{i}" for i in range(60)]
    placed = await owners(redis_cluster, prefix, candidates)
    victim = redis_cluster.ports[1]
    per_shard = [channel_on(port, placed) for port in redis_cluster.ports]
    lost = channel_on(victim, placed)
    async with open_wire(hub_app.url()) as client:
        for channel in per_shard:
            await subscribe(client, channel, request_id=channel)
        await hub_app.publish_range(lost, range(3))
        await live_messages(client, lost, 3)
        old = (await history(client, lost, limit=0))["result"]
        assert old["offset"] == 3 and old["epoch"]
        try:
            redis_cluster.kill_node(victim)
            await wait_until(lambda: not hub_app.hub.ready, 10)
            # Past the node timeout the others mark it failed: the cluster refuses all
            # commands (full coverage is required by default), on every shard.
            await eventually(
                lambda: asyncio.to_thread(redis_cluster.is_failing, redis_cluster.ports[0]),
                10,
                "cluster_state:fail",
            )
        finally:
            redis_cluster.start_node(victim)
            redis_cluster.wait_ok()
        await wait_ready(hub_app, 20)

        async def publish_everywhere() -> bool:
            try:
                for channel in per_shard:
                    await hub_app.publish(channel, {"after": channel})
            except Exception:
                await asyncio.sleep(0.1)
                return False
            return True

        await eventually(publish_everywhere, 10, "publishes on every shard")
        seen: dict[str, list[object]] = {}

        async def everything_arrived() -> bool:
            while client.buffered or not all(seen.get(c) for c in per_shard):
                frame = await client.next(5)
                if frame.get("op") == "message" and "after" in frame.get("data", {}):
                    seen.setdefault(frame["channel"], []).append(frame["data"])
            return True

        await asyncio.wait_for(everything_arrived(), 10)
        assert all(seen[c][0] == {"after": c} for c in per_shard)
    async with open_wire(hub_app.url()) as again:
        result = await subscribe(again, lost, since=3, epoch=old["epoch"])
        assert result["recovered"] is False and result["messages"] == []
        assert result["epoch"] != old["epoch"]
