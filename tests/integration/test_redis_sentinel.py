"""``wshub serve`` processes on ``redis+sentinel://`` through a failover.

A master, a replica and three sentinels (`tests.sentinel_support`); two hub
processes with clients subscribed. The master is SIGKILLed: /readyz goes 503 on
both hubs, comes back 200 once the sentinels promoted the replica and the hubs
resubscribed there, and the clients, on their original connections, receive what is
published afterwards (by a client and by ``wshub publish``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator, Sequence

import pytest

from tests.sentinel_support import SentinelSetup, sentinel_setup
from wshub.testing import TIME_SCALE, wait_until

from .processes import NO_RATE_LIMIT, HubProcess, eventually, hub_env, hub_processes, run_cli
from .recorders import ProtocolClient, closing, open_clients

pytestmark = [pytest.mark.anyio, pytest.mark.redis]

LOST = "Redis broker lost its connection"  # the broker's one warning per outage
FAILOVER_WITHIN = 15.0


@pytest.fixture
def sentinels() -> Iterator[SentinelSetup]:
    """A master, a replica and three sentinels, ready to fail over."""
    with sentinel_setup(3) as setup:
        yield setup


async def all_ready(hubs: Sequence[HubProcess], status: int) -> bool:
    """True when ``GET /readyz`` answers ``status`` on every hub."""
    return all([await hub.ready_status() == status for hub in hubs])


async def wait_all_got(clients: Sequence[ProtocolClient], data: object) -> None:
    """Wait until every client received ``data`` on ``room``."""
    await wait_until(lambda: all(data in c.received["room"] for c in clients), 5)


async def test_hubs_follow_the_master_through_a_failover(
    sentinels: SentinelSetup, prefix: str
) -> None:
    """Delivery through the master; master killed: 503, then 200 and delivery again."""
    env = hub_env(sentinels.url, prefix, WSHUB_REDIS_PROBE_INTERVAL="0.5", **NO_RATE_LIMIT)
    async with hub_processes(2, env) as hubs, closing([]) as clients:
        clients += await open_clients([hubs[i % 2].ws_url() for i in range(4)], "room")
        assert await all_ready(hubs, 200)
        reply = await clients[0].publish("room", {"n": 0})
        assert "result" in reply, reply
        await wait_all_got(clients, {"n": 0})
        code, out = await run_cli("publish", "room", '{"n":1}', "--broker", sentinels.url, env=env)
        assert code == 0, out
        assert "(2 hub process(es) subscribed)" in out, out
        await wait_all_got(clients, {"n": 1})

        killed = time.monotonic()
        sentinels.master.stop()
        await eventually(lambda: all_ready(hubs, 503), 5, "/readyz 503 on every hub")
        await eventually(lambda: all_ready(hubs, 200), FAILOVER_WITHIN, "/readyz 200 again")
        assert sentinels.failed_over(), sentinels.logs()

        deadline = time.monotonic() + FAILOVER_WITHIN * TIME_SCALE
        while "result" not in (reply := await clients[1].publish("room", {"n": 2})):
            assert reply["error"]["code"] == "unavailable", reply
            assert time.monotonic() < deadline, reply
            await asyncio.sleep(0.1)
        assert time.monotonic() - killed < FAILOVER_WITHIN * TIME_SCALE
        await wait_all_got(clients, {"n": 2})
        code, out = await run_cli("publish", "room", '{"n":3}', "--broker", sentinels.url, env=env)
        assert code == 0, out
        assert "(2 hub process(es) subscribed)" in out, out
        await wait_all_got(clients, {"n": 3})

        assert all(client.open_still for client in clients)
        for client in clients:  # the publication made during the outage reached nobody
            got = client.received["room"]
            assert got == [{"n": 0}, {"n": 1}, {"n": 2}, {"n": 3}], got
        for hub in hubs:
            assert hub.log().count(LOST) == 1, hub.log()
