"""Hub processes through Redis outages: Redis killed and restarted, subscriber killed or dropped.

Clients never reconnect in these tests: the `ProtocolClient` objects opened at the
start are the ones that receive after recovery, and none of them saw a close.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Sequence

import pytest
import redis.asyncio

from tests.redis_support import RedisServer
from wshub.publisher import Publisher
from wshub.testing import TIME_SCALE, wait_until

from .processes import (
    NO_RATE_LIMIT,
    HubProcess,
    eventually,
    hub_env,
    hub_processes,
    numsub,
)
from .recorders import ProtocolClient, closing, open_clients, wait_received

pytestmark = [pytest.mark.anyio, pytest.mark.redis]

LOST = "Redis broker lost its connection"  # the broker's one warning per outage
PROBE_INTERVAL = 0.5


async def all_ready(hubs: Sequence[HubProcess], status: int) -> bool:
    """True when ``GET /readyz`` answers ``status`` on every hub."""
    return all([await hub.ready_status() == status for hub in hubs])


async def pubsub_ids(admin: redis.asyncio.Redis) -> set[str]:
    """The ids of Redis's pub/sub connections (``CLIENT LIST TYPE pubsub``)."""
    return {str(client["id"]) for client in await admin.client_list(_type="pubsub")}


async def assert_all_receive(
    clients: Sequence[ProtocolClient], publisher: ProtocolClient, data: object, within: float
) -> None:
    """Publish ``data`` from ``publisher``; wait until every client received it."""
    reply = await publisher.publish("room", data)
    assert "result" in reply, reply
    await wait_until(lambda: all(data in c.received["room"] for c in clients), within)


def assert_per_process_sequences(clients: Sequence[ProtocolClient], processes: int) -> None:
    """Clients of one process saw one sequence (one subscriber feeds them), each in order."""
    for first in clients[:processes]:
        numbers = [d["n"] for d in first.received["room"] if "n" in d]
        assert numbers == sorted(set(numbers)), "duplicated or reordered publications"
    for i, client in enumerate(clients):
        assert client.received["room"] == clients[i % processes].received["room"]


async def test_redis_killed_mid_traffic_then_restarted_traffic_resumes_without_reconnects(
    redis_server: RedisServer, prefix: str
) -> None:
    """While Redis is dead publishes get `unavailable`, /readyz 503; all resumes within 10 s."""
    env = hub_env(redis_server.url, prefix, **NO_RATE_LIMIT)
    async with hub_processes(2, env) as hubs, closing([]) as clients:
        clients += await open_clients([hubs[i % 2].ws_url() for i in range(10)], "room")
        publishers = clients[:2]  # client i is on process i
        codes: list[str] = []
        done = asyncio.Event()

        async def traffic() -> None:
            n = 0
            while not done.is_set():
                for publisher in publishers:
                    reply = await publisher.publish("room", {"n": n})
                    codes.append("ok" if "result" in reply else reply["error"]["code"])
                    n += 1
                await asyncio.sleep(0.01)

        task = asyncio.create_task(traffic())
        try:
            await wait_received(clients, "room", 10)
            redis_server.stop()
            await eventually(lambda: all_ready(hubs, 503), what="/readyz 503 everywhere")
            for publisher in publishers:
                reply = await publisher.publish("room", {"during": "outage"})
                assert reply["error"]["code"] == "unavailable", reply
            assert all(client.open_still for client in clients)

            restarted = time.monotonic()
            redis_server.start()  # the same port, an empty dataset
            await eventually(lambda: all_ready(hubs, 200), 10, "/readyz 200 everywhere")
            for i, publisher in enumerate(publishers):
                await assert_all_receive(clients, publisher, {"back": i}, within=2)
            assert time.monotonic() - restarted < 10 * TIME_SCALE
        finally:
            done.set()
            await task
        assert {"ok", "unavailable"} == set(codes), set(codes)
        assert codes[-1] == "ok"
        assert all(client.open_still for client in clients)
        assert_per_process_sequences(clients, 2)
        for hub in hubs:
            assert hub.log().count(LOST) == 1, hub.log()


async def test_subscriber_killed_by_client_kill_is_replaced_and_resubscribed(
    redis_server: RedisServer, admin: redis.asyncio.Redis, prefix: str
) -> None:
    """``CLIENT KILL TYPE pubsub``: each hub reconnects, resubscribes, and delivers again."""
    env = hub_env(redis_server.url, prefix, WSHUB_REDIS_PROBE_INTERVAL=str(PROBE_INTERVAL))
    async with hub_processes(2, env) as hubs, closing([]) as clients:
        clients += await open_clients([hubs[i % 2].ws_url() for i in range(10)], "room")
        await assert_all_receive(clients, clients[0], {"n": 0}, within=5)
        before = await pubsub_ids(admin)
        assert len(before) == 2

        killed = time.monotonic()
        assert await admin.execute_command("CLIENT", "KILL", "TYPE", "pubsub") == 2

        async def replaced() -> bool:
            ids = await pubsub_ids(admin)
            return len(ids) == 2 and not ids & before and await numsub(admin, f"{prefix}room") == 2

        await eventually(replaced, PROBE_INTERVAL + 2, "two new subscribers on room")
        assert time.monotonic() - killed < (PROBE_INTERVAL + 2) * TIME_SCALE
        await eventually(lambda: all_ready(hubs, 200), what="/readyz 200 everywhere")
        await assert_all_receive(clients, clients[1], {"n": 1}, within=5)
        async with Publisher(redis_server.url, prefix=prefix) as pub:
            assert await pub.publish("room", {"n": 2}) == 2
        await wait_received(clients, "room", 3)
        assert all(c.received["room"] == [{"n": 0}, {"n": 1}, {"n": 2}] for c in clients)
        assert all(client.open_still for client in clients)
        for hub in hubs:
            assert hub.log().count(LOST) == 1, hub.log()


async def test_subscriber_dropped_for_its_output_buffer_limit_is_replaced(
    redis_server: RedisServer, admin: redis.asyncio.Redis, prefix: str
) -> None:
    """A burst past a tiny ``client-output-buffer-limit pubsub`` drops subscribers; hubs recover."""
    env = hub_env(redis_server.url, prefix, WSHUB_REDIS_PROBE_INTERVAL=str(PROBE_INTERVAL))
    async with hub_processes(2, env) as hubs, closing([]) as clients:
        clients += await open_clients([hubs[i % 2].ws_url() for i in range(10)], "room")
        await assert_all_receive(clients, clients[0], {"n": 0}, within=5)
        before = await pubsub_ids(admin)
        await admin.config_set("client-output-buffer-limit", "pubsub 32kb 16kb 1")

        burst = f'{{"blob":"{"x" * 48 * 1024}"}}'  # one message overflows the limit
        async with admin.pipeline(transaction=False) as pipe:
            for _ in range(20):
                pipe.publish(f"{prefix}room", burst)
            await pipe.execute()
        sent = time.monotonic()

        async def replaced() -> bool:
            ids = await pubsub_ids(admin)
            return len(ids) == 2 and not ids & before and await numsub(admin, f"{prefix}room") == 2

        await eventually(replaced, PROBE_INTERVAL + 2, "two new subscribers on room")
        assert time.monotonic() - sent < (PROBE_INTERVAL + 2) * TIME_SCALE
        assert "output buffer limits" in redis_server.log()
        await eventually(lambda: all_ready(hubs, 200), what="/readyz 200 everywhere")
        for n in range(1, 11):  # small publications pass the limit, in order
            await clients[n % 2].publish("room", {"n": n})
        await wait_until(lambda: all(c.received["room"][-1] == {"n": 10} for c in clients), 5)
        for client in clients:
            numbers = [d["n"] for d in client.received["room"] if "n" in d]
            assert numbers == list(range(11))
            assert client.open_still


class DeafeningProxy:
    """A TCP proxy in front of Redis that can leave a connection open but deaf.

    A deafened connection still carries the client's commands to Redis, but whatever
    Redis sends back is dropped: what a failover can leave a subscriber with.
    Connections are named by the port of the proxy's socket towards Redis, which is
    the ``addr`` Redis shows in ``CLIENT LIST``.
    """

    def __init__(self, redis_port: int) -> None:
        self.port = 0
        self.deaf: set[int] = set()
        self._redis_port = redis_port
        self._tasks: set[asyncio.Task[None]] = set()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[DeafeningProxy]:
        """Listen on a free port for the block; then close every connection."""
        server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        try:
            yield self
        finally:
            server.close()
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        upstream_reader, upstream = await asyncio.open_connection("127.0.0.1", self._redis_port)
        name: int = upstream.get_extra_info("sockname")[1]
        try:
            await asyncio.gather(
                self._pump(reader, upstream, None), self._pump(upstream_reader, writer, name)
            )
        finally:
            for stream in (writer, upstream):
                stream.close()
            self._tasks.discard(task)

    async def _pump(
        self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, name: int | None
    ) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await source.read(65536):
                if name not in self.deaf:
                    sink.write(data)
                    await sink.drain()
        sink.close()


async def test_deaf_subscriber_is_caught_by_the_probe_and_replaced(
    redis_server: RedisServer, admin: redis.asyncio.Redis, prefix: str
) -> None:
    """A subscriber that Redis keeps but that hears nothing fails its probe; the hub reconnects."""
    async with DeafeningProxy(redis_server.port).running() as proxy:
        url = f"redis://127.0.0.1:{proxy.port}/0"
        env = hub_env(url, prefix, WSHUB_REDIS_PROBE_INTERVAL=str(PROBE_INTERVAL))
        async with hub_processes(2, env) as hubs, closing([]) as clients:
            clients += await open_clients([hubs[i % 2].ws_url() for i in range(10)], "room")
            await assert_all_receive(clients, clients[0], {"n": 0}, within=5)
            subscribers = await admin.client_list(_type="pubsub")
            proxy.deaf.update(int(c["addr"].rsplit(":", 1)[1]) for c in subscribers)

            deafened = time.monotonic()
            async with Publisher(redis_server.url, prefix=prefix) as pub:
                # Redis still counts both subscribers, but nothing reaches them.
                assert await pub.publish("room", {"n": "unheard"}) == 2
            before = {str(c["id"]) for c in subscribers}

            async def replaced() -> bool:
                ids = await pubsub_ids(admin)
                return (
                    len(ids) == 2 and not ids & before and await numsub(admin, f"{prefix}room") == 2
                )

            # Detection takes at most probe_interval + probe_timeout (2 s by default).
            limit = PROBE_INTERVAL + 2 + 1
            await eventually(replaced, limit, "two new subscribers on room")
            assert time.monotonic() - deafened < limit * TIME_SCALE
            await eventually(lambda: all_ready(hubs, 200), what="/readyz 200 everywhere")
            await assert_all_receive(clients, clients[1], {"n": 1}, within=5)
            for client in clients:
                assert client.received["room"] == [{"n": 0}, {"n": 1}]
                assert client.open_still
            for hub in hubs:
                assert hub.log().count(LOST) == 1, hub.log()
                assert "liveness probe failed" in hub.log()
