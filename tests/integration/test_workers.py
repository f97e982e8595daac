"""``wshub serve --workers 2 --broker redis://``: two processes on one port act as one hub."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio

from tests.redis_support import RedisServer
from wshub.publisher import Publisher

from .processes import NO_RATE_LIMIT, eventually, hub_env, hub_processes, numsub, stop
from .recorders import ProtocolClient, closing, open_clients, wait_received

pytestmark = [pytest.mark.anyio, pytest.mark.redis]


async def subscriber_names(admin: redis.asyncio.Redis) -> list[str]:
    """The client names of Redis's pub/sub connections (``CLIENT LIST TYPE pubsub``)."""
    return sorted(str(c["name"]) for c in await admin.client_list(_type="pubsub"))


async def test_two_workers_on_one_port_fan_out_to_every_client(
    redis_server: RedisServer, admin: redis.asyncio.Redis, prefix: str
) -> None:
    """Clients land on both workers; publishes from a client and a Publisher reach every one."""
    env = hub_env(redis_server.url, prefix, **NO_RATE_LIMIT)
    async with hub_processes(1, env, "--workers", "2") as [hub], closing([]) as clients:
        # /healthz answered once one worker was up; the other may still be starting.
        async def both_up() -> bool:
            return await subscriber_names(admin) == ["wshub-sub", "wshub-sub"]

        await eventually(both_up, within=15, what="two subscriber connections")
        status, body = await hub.get("/readyz")
        assert status == 200, body
        # The kernel hands each accept to one of the workers: connect until both have members.
        while await numsub(admin, f"{prefix}room") < 2:
            assert len(clients) < 200, "every client landed on the same worker"
            clients += await open_clients([hub.ws_url()] * 10, "room")
        assert len({client.id for client in clients}) == len(clients)

        reply = await clients[-1].publish("room", {"n": 0})
        assert "result" in reply, reply
        async with Publisher(redis_server.url, prefix=prefix) as pub:
            assert await pub.publish("room", {"n": 1}) == 2  # one subscriber per worker
        await wait_received(clients, "room", 2)
        for client in clients:
            assert client.received["room"] == [{"n": 0}, {"n": 1}]
            assert client.origins["room"] == [clients[-1].id, None]

        late = await ProtocolClient.open(hub.ws_url())  # served by either worker
        clients.append(late)
        await late.subscribe("room")
        await clients[0].publish("room", {"n": 2})
        await wait_received(clients[:-1], "room", 3)
        await wait_received([late], "room", 1)
        assert late.received["room"] == [{"n": 2}]
        assert all(client.open_still for client in clients)
        await asyncio.gather(*(client.close() for client in clients))
        assert await stop(hub) == 0, hub.log()
