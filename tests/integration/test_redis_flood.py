"""A flood through Redis: 10,000 publications to 100 clients on two processes, none lost."""

from __future__ import annotations

import time

import pytest
import redis.asyncio

from tests.redis_support import RedisServer
from wshub.testing import TIME_SCALE

from .processes import hub_env, hub_processes, numsub
from .recorders import closing, open_clients, wait_received

pytestmark = [pytest.mark.anyio, pytest.mark.redis]

MESSAGES = 10_000
CLIENTS = 100


async def test_flood_of_10000_reaches_100_clients_on_two_processes_in_order(
    redis_server: RedisServer, admin: redis.asyncio.Redis, prefix: str
) -> None:
    """Every client receives all 10,000 publications, in publish order, within 30 s."""
    env = hub_env(redis_server.url, prefix)
    async with hub_processes(2, env) as hubs, closing([]) as clients:
        clients += await open_clients([hubs[i % 2].ws_url() for i in range(CLIENTS)], "flood")
        assert await numsub(admin, f"{prefix}flood") == 2
        started = time.monotonic()
        for start in range(0, MESSAGES, 1000):  # pipelined, as fast as Redis takes them
            async with admin.pipeline(transaction=False) as pipe:
                for n in range(start, start + 1000):
                    pipe.publish(f"{prefix}flood", b'{"n":%d}' % n)
                # Both processes still subscribed: no client was dropped as a slow consumer.
                assert await pipe.execute() == [2] * 1000
        await wait_received(clients, "flood", MESSAGES, within=30)
        assert time.monotonic() - started < 30 * TIME_SCALE
        expected = [{"n": n} for n in range(MESSAGES)]
        for client in clients:
            assert client.received["flood"] == expected
            assert client.open_still
