"""Several hub processes sharing one Redis: every publish reaches every client, in one order."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import redis.asyncio
from fastapi import FastAPI, Request, WebSocket

from tests.redis_support import RedisServer
from wshub import Hub
from wshub.publisher import Publisher
from wshub.testing import RunningServer, wait_until

from .processes import (
    NO_RATE_LIMIT,
    eventually,
    hub_env,
    hub_processes,
    numsub,
    wait_channels,
)
from .recorders import ProtocolClient, RawClient, closing, open_clients, wait_received

pytestmark = [pytest.mark.anyio, pytest.mark.redis]

CLIENTS = 30
PER_SOURCE = 20


@pytest.mark.parametrize("processes", [2, 3])
async def test_publishes_from_every_process_and_publishers_reach_30_clients_in_one_order(
    processes: int, redis_server: RedisServer, admin: redis.asyncio.Redis, prefix: str
) -> None:
    """Clients on each process and both Publisher APIs publish; all 30 clients see one sequence."""
    env = hub_env(redis_server.url, prefix, **NO_RATE_LIMIT)
    async with hub_processes(processes, env) as hubs, closing([]) as clients:
        urls = [hubs[i % processes].ws_url() for i in range(CLIENTS)]
        clients += await open_clients(urls, "room")
        assert await numsub(admin, f"{prefix}room") == processes
        publishers = clients[:processes]  # client i is connected to process i

        async def from_client(i: int, client: ProtocolClient) -> None:
            items = [{"src": f"client{i}", "n": n} for n in range(PER_SOURCE)]
            replies = await client.publish_many("room", items)
            assert all("result" in reply for reply in replies), replies

        async def from_async_publisher() -> None:
            async with Publisher(redis_server.url, prefix=prefix) as pub:
                for n in range(PER_SOURCE):
                    assert await pub.publish("room", {"src": "async", "n": n}) == processes

        def from_sync_publisher() -> None:
            with Publisher(redis_server.url, prefix=prefix) as pub:
                for n in range(PER_SOURCE):
                    assert pub.publish_sync("room", {"src": "sync", "n": n}) == processes

        await asyncio.gather(
            *(from_client(i, client) for i, client in enumerate(publishers)),
            from_async_publisher(),
            asyncio.to_thread(from_sync_publisher),
        )
        total = PER_SOURCE * (processes + 2)
        await wait_received(clients, "room", total)

        reference = clients[0].received["room"]
        sources = [f"client{i}" for i in range(processes)] + ["async", "sync"]
        for source in sources:
            assert [d["n"] for d in reference if d["src"] == source] == list(range(PER_SOURCE))
        for client in clients:
            assert client.received["room"] == reference, f"client {client.id} saw another order"
            expected_from = [
                publishers[int(d["src"][6:])].id if d["src"].startswith("client") else None
                for d in client.received["room"]
            ]
            assert client.origins["room"] == expected_from
            assert client.open_still


def user_app(redis_url: str, prefix: str) -> tuple[FastAPI, Hub]:
    """An app on a Redis hub: library-mode connections of a user, and routes that push to them."""
    hub = Hub(broker=redis_url, redis_prefix=prefix)
    app = FastAPI(lifespan=hub.lifespan)

    @app.websocket("/ws/user/{name}")
    async def user_socket(ws: WebSocket, name: str) -> None:
        async with hub.connect(ws, user=name) as conn:
            async for _ in conn.iter_json():
                pass

    @app.post("/send/{name}")
    async def send(name: str, request: Request) -> dict[str, Any]:
        await hub.send_to_user(name, await request.json())
        return {}

    @app.post("/broadcast")
    async def broadcast(request: Request) -> dict[str, Any]:
        await hub.broadcast(await request.json())
        return {}

    return app, hub


async def test_send_to_user_and_broadcast_reach_connections_on_both_processes(
    serve: Callable[..., RunningServer],
    redis_server: RedisServer,
    admin: redis.asyncio.Redis,
    prefix: str,
) -> None:
    """send_to_user reaches the user's connections on both hubs only; broadcast reaches all."""
    servers = []
    for _ in range(2):
        app, hub = user_app(redis_server.url, prefix)
        servers.append(serve(app, settings=hub.settings))
    async with closing([]) as clients:
        alice = [await RawClient.open(s.ws_url("/ws/user/alice")) for s in servers]
        bob = [await RawClient.open(s.ws_url("/ws/user/bob")) for s in servers]
        clients += alice + bob

        async def both_subscribed() -> bool:
            counts = [await numsub(admin, f"{prefix}#user:{u}") for u in ("alice", "bob")]
            return counts == [2, 2]

        await eventually(both_subscribed, what="both hubs subscribed to both users")
        async with httpx.AsyncClient(trust_env=False) as http:
            response = await http.post(servers[0].http_url("/send/alice"), json={"to": "alice"})
            assert response.status_code == 200
            response = await http.post(servers[1].http_url("/broadcast"), json={"to": "all"})
            assert response.status_code == 200
        await wait_until(lambda: all(len(c.messages) == 2 for c in alice))
        await wait_until(lambda: all(len(c.messages) == 1 for c in bob))
        assert [c.messages for c in alice] == [['{"to":"alice"}', '{"to":"all"}']] * 2
        # Redis delivers in publish order: bob got nothing before the broadcast.
        assert [c.messages for c in bob] == [['{"to":"all"}']] * 2
        assert all(c.open_still for c in clients)
    await wait_channels(admin, prefix, set())


async def test_demo_chat_rooms_fan_out_across_processes(
    redis_server: RedisServer, admin: redis.asyncio.Redis, prefix: str
) -> None:
    """The demo page's ``chat:<room>`` channels (history, presence on one process) work on Redis."""
    env = hub_env(redis_server.url, prefix)
    async with hub_processes(2, env) as hubs, closing([]) as clients:
        clients += await open_clients([hubs[i % 2].ws_url() for i in range(4)], "chat:lobby")
        assert await numsub(admin, f"{prefix}chat:lobby") == 2
        for i, client in enumerate(clients[:2]):
            reply = await client.publish("chat:lobby", {"user": f"u{i}", "text": "hi"})
            assert "result" in reply, reply
        await wait_received(clients, "chat:lobby", 2)
        for client in clients:
            assert client.received["chat:lobby"] == clients[0].received["chat:lobby"]
        for hub in hubs:
            assert "Traceback" not in hub.log(), hub.log()
