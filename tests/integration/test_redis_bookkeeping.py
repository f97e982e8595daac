"""Redis subscriptions follow local membership: ``PUBSUB CHANNELS`` shows exactly what is wanted."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio

from tests.redis_support import RedisServer

from .processes import channels_in_redis, eventually, hub_env, hub_processes, numsub, wait_channels
from .recorders import ProtocolClient, closing

pytestmark = [pytest.mark.anyio, pytest.mark.redis]


async def test_pubsub_channels_match_local_members_and_empty_when_clients_leave(
    redis_server: RedisServer, admin: redis.asyncio.Redis, prefix: str
) -> None:
    """Each channel is in Redis while some process has a member, once per such process."""
    env = hub_env(redis_server.url, prefix)
    async with hub_processes(2, env) as [one, two], closing([]) as clients:
        # Internal channels: #all on every hub, and one probe channel per broker.
        assert await numsub(admin, f"{prefix}#all") == 2
        names = [n.decode() for n in await admin.pubsub_channels(f"{prefix}__probe__:*")]
        assert len(names) == 2
        assert await channels_in_redis(admin, prefix) == set()

        a = await ProtocolClient.open(one.ws_url())
        b = await ProtocolClient.open(two.ws_url())
        c = await ProtocolClient.open(two.ws_url())
        clients += [a, b, c]
        for client, channels in ((a, "xy"), (b, "yz"), (c, "z")):
            for channel in channels:
                await client.subscribe(channel)
        # A subscribe is answered once Redis confirmed it: no waiting needed.
        assert await channels_in_redis(admin, prefix) == {"x", "y", "z"}
        counts = [await numsub(admin, f"{prefix}{ch}") for ch in "xyz"]
        assert counts == [1, 2, 1]

        await a.unsubscribe("x")
        assert await channels_in_redis(admin, prefix) == {"y", "z"}
        await b.close()  # c still holds z on process two; a holds y on process one
        await wait_channels(admin, prefix, {"y", "z"})

        async def y_on_one_process() -> bool:
            return await numsub(admin, f"{prefix}y") == 1

        await eventually(y_on_one_process, what="y held by one process")
        await c.unsubscribe("z")
        assert await channels_in_redis(admin, prefix) == {"y"}

        many = [f"room:{i}" for i in range(50)]
        await asyncio.gather(*(c.subscribe(channel) for channel in many))
        assert await channels_in_redis(admin, prefix) == {"y", *many}

        a.ws.transport.abort()  # a crash: no close frame, the TCP connection just ends
        await c.close()
        await wait_channels(admin, prefix, set())
        assert await numsub(admin, f"{prefix}#all") == 2  # the hubs themselves still run
