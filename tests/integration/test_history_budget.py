"""The history memory budget under the "Hardening" probe: many big messages, distinct channels.

A real uvicorn server with the memory broker and a 2 MiB budget; real websockets
clients, each within the default rate limit, publish ~60 KB messages to distinct
``chat:*`` channels. The broker's accounted history bytes never pass the budget, the
evictions show in /metrics, and the newest messages of the last channel are still
recoverable by a client.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from tests.integration.history_support import HubApp, open_wire, subscribe
from tests.integration.scrape import scrape, value
from tests.integration.support import drop_clients
from wshub import Hub
from wshub.brokers.memory import MemoryBroker
from wshub.hub.permissions import Namespace
from wshub.ops.metrics import add_metrics
from wshub.testing import RunningServer

__all__ = ["drop_clients"]

pytestmark = pytest.mark.anyio

BUDGET = 2 * 1024 * 1024
CLIENTS = 4
PER_CLIENT = 40  # within the default burst (200) of the default rate limit
PAYLOAD = "x" * 60_000


async def test_big_publications_to_many_channels_stay_within_the_budget(
    serve: Callable[..., RunningServer],
) -> None:
    hub = Hub(
        history_max_memory=BUDGET,
        namespaces={"chat": Namespace(history_size=500, history_ttl=60), "*": Namespace()},
    )
    hub_app = HubApp(hub)
    add_metrics(hub_app.app, hub)
    hub_app.server = serve(hub_app.app, settings=hub.settings)
    broker = hub.broker
    assert isinstance(broker, MemoryBroker) and broker.history_max_memory == BUDGET
    peak = 0

    async def attacker(n: int) -> None:
        nonlocal peak
        async with open_wire(hub_app.url()) as client:
            for i in range(PER_CLIENT):
                reply = await client.publish(f"chat:{n}-{i}", {"blob": PAYLOAD, "i": i}, i)
                assert "result" in reply, reply
                peak = max(peak, broker.history_bytes)

    await asyncio.wait_for(asyncio.gather(*(attacker(n) for n in range(CLIENTS))), 30)
    published = CLIENTS * PER_CLIENT * len(PAYLOAD)
    assert published > 4 * BUDGET
    assert peak <= BUDGET and broker.history_bytes <= BUDGET
    assert broker.history_evictions > 0
    server = hub_app.server
    samples = await scrape(f"http://{server.host}:{server.port}/metrics")
    assert value(samples, "wshub_history_evictions_total") == broker.history_evictions

    # The most recent channel is intact: a client recovers its messages from offset 0.
    last = f"chat:{CLIENTS - 1}-{PER_CLIENT - 1}"
    for _ in range(3):
        await hub_app.publish(last, {"blob": PAYLOAD[:1000]})
    async with open_wire(hub_app.url()) as client:
        result = await subscribe(client, last, since=0, epoch="")
        assert result["recovered"] is True, {k: v for k, v in result.items() if k != "messages"}
        assert [m["offset"] for m in result["messages"]] == [1, 2, 3, 4]
    page = await hub_app.call(hub.history(last))
    assert [p.offset for p in page.publications] == [1, 2, 3, 4]
