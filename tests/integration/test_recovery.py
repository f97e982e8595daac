"""Recovery on resubscribe against a real server, on the memory broker and on Redis.

A client that lost its connection (a reset, or a 4008 slow-consumer close)
resubscribes with ``since`` and ``epoch``: the reply carries every publication it
missed, in order, and the live stream follows with no gap and no duplicate, also
while publications keep coming during the resubscribe. ``recovered: false`` tells
it when that is impossible (gap older than the history, another epoch, a Redis
that lost its data).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from typing import Any

import pytest

from wshub.testing import RunningServer, wait_until

from .history_support import (  # noqa: F401 (backend_fixture: the backend fixture)
    Backend,
    HubApp,
    abort,
    backend_fixture,
    closed_quietly,
    history,
    live_messages,
    offsets,
    open_wire,
    serve_hub,
    subscribe,
    wait_ready,
)
from .support import drop_clients, small_socket  # noqa: F401 (drop_clients: autouse)
from .wire import WireClient, bad_request

pytestmark = pytest.mark.anyio

Serve = Callable[..., RunningServer]


async def test_abrupt_disconnect_then_resubscribe_recovers_the_50_missed_then_live(
    serve: Serve, backend: Backend
) -> None:
    """After a TCP reset and 50 publications, since/epoch recovers exactly those 50, then live."""
    hub_app = serve_hub(serve, backend)
    async with open_wire(hub_app.url()) as first, open_wire(hub_app.url()) as publisher:
        start = await subscribe(first, "hist:feed")
        assert start["offset"] == 0 and len(start["epoch"]) == 8  # the epoch from the start
        for n in range(5):
            reply = await publisher.publish("hist:feed", {"n": n}, request_id=n)
            assert reply == {"id": n, "result": {"offset": n + 1}}
        seen = await live_messages(first, "hist:feed", 5)
        assert offsets(seen) == [1, 2, 3, 4, 5]
        epoch = (await subscribe(publisher, "hist:feed", request_id="pos"))["epoch"]
        assert isinstance(epoch, str) and epoch
        await abort(first)
        await wait_until(lambda: hub_app.hub.connection_count == 1)
        assert await hub_app.publish_range("hist:feed", range(5, 55)) == list(range(6, 56))

        async with open_wire(hub_app.url()) as again:
            result = await subscribe(again, "hist:feed", since=5, epoch=epoch)
            assert result["recovered"] is True
            assert (result["offset"], result["epoch"]) == (55, epoch)
            assert result["messages"] == [
                {"channel": "hist:feed", "data": {"n": n}, "offset": n + 1} for n in range(5, 55)
            ]
            await publisher.publish("hist:feed", {"n": 55}, request_id="live")
            [live] = await live_messages(again, "hist:feed", 56)
            assert live == {
                "op": "message",
                "channel": "hist:feed",
                "data": {"n": 55},
                "offset": 56,
                "from": publisher.id,
            }
            assert again.buffered == []


def padded(n: int) -> dict[str, Any]:
    """Publication ``n`` with 8 kB of padding, so that a stalled socket fills quickly."""
    return {"n": n, "pad": "x" * 8000}


async def test_slow_consumer_closed_4008_recovers_everything_it_missed_then_live(
    serve: Serve, backend: Backend
) -> None:
    """A client closed with 4008 resubscribes: what it never got plus 50 more, then live."""
    hub_app = serve_hub(serve, backend, queue_max_messages=20)
    hub = hub_app.hub
    ws_kwargs = {"sock": small_socket(hub_app.server), "max_queue": 1}
    async with open_wire(hub_app.url(), **ws_kwargs) as slow:
        start = await subscribe(slow, "bulk:feed")
        [conn] = [c for c in hub.connections() if c.id == slow.id]
        # The slow client reads nothing now: publish until its queue overflows.
        n = 0
        while conn.close_code is None:
            assert n < 2900, "the stalled client's queue never overflowed"
            await hub_app.call(hub.publish("bulk:feed", padded(n)))
            n += 1
        assert conn.close_code == 4008
        got = [f for f in await closed_quietly(slow) if f.get("op") == "message"]
        assert offsets(got) == list(range(1, len(got) + 1)) and len(got) < n
    last = len(got)
    epoch = (await hub_app.call(hub.history("bulk:feed", limit=0))).position.epoch
    await wait_until(lambda: hub.connection_count == 0)
    for m in range(n, n + 50):
        await hub_app.call(hub.publish("bulk:feed", padded(m)))

    async with open_wire(hub_app.url()) as again:
        result = await subscribe(again, "bulk:feed", since=last, epoch=epoch)
        assert start["offset"] == 0 and len(start["epoch"]) == 8  # the epoch from the start
        assert result["recovered"] is True and result["offset"] == n + 50
        # The missed ~570 kB come paginated: follow "more" with history (protocol.md).
        messages = list(result["messages"])
        while result.get("more") and messages[-1]["offset"] < result["offset"]:
            since = messages[-1]["offset"]
            page = await history(again, "bulk:feed", since=since, limit=n + 50 - since)
            messages += page["result"]["messages"]
        assert offsets(messages) == list(range(last + 1, n + 51))
        assert [m["data"]["n"] for m in messages] == list(range(last, n + 50))
        await hub_app.publish("bulk:feed", padded(n + 50))
        live = await live_messages(again, "bulk:feed", n + 51)
        assert offsets(live) == [n + 51]


async def test_resubscribe_while_publishing_continues_has_no_gap_and_no_duplicate(
    serve: Serve, backend: Backend
) -> None:
    """25 reconnects under a steady publisher: recovered + live offsets contiguous, none twice."""
    hub_app = serve_hub(serve, backend)
    channel = "live:ticker"
    stop = asyncio.Event()

    async def pump() -> None:
        async with open_wire(hub_app.url()) as publisher:
            n = 0
            while not stop.is_set():
                # Pipelined pairs keep the server busy publishing during every subscribe.
                await publisher.send({"op": "publish", "channel": channel, "data": {"n": n}})
                reply = await publisher.publish(channel, {"n": n + 1}, request_id=n)
                assert "result" in reply, reply
                n += 2

    pumping = asyncio.create_task(pump())
    rng = random.Random(6)
    try:
        async with open_wire(hub_app.url()) as client:
            start = await subscribe(client, channel)
            since, epoch = start["offset"], start["epoch"]
        await wait_until(lambda: hub_app.hub.connection_count == 1)
        if not epoch:  # the channel's first publication starts its epoch
            page = await hub_app.call(hub_app.hub.history(channel, limit=0))
            since, epoch = 0, page.position.epoch
        for _ in range(25):
            since = await resubscribe_round(hub_app, channel, since, epoch, rng)
    finally:
        stop.set()
        await pumping
    assert since > 100, "the publisher hardly published"


async def resubscribe_round(
    hub_app: HubApp, channel: str, since: int, epoch: str, rng: random.Random
) -> int:
    """Reconnect with ``since``; check the recovered and live offsets; drop the connection.

    Returns:
        The last offset the client saw.
    """
    await asyncio.sleep(rng.uniform(0, 0.02))  # publications pile up meanwhile
    async with open_wire(hub_app.url()) as client:
        result = await subscribe(client, channel, since=since, epoch=epoch)
        assert result["recovered"] is True, result
        assert result["epoch"] == epoch
        position = result["offset"]
        recovered = offsets(result["messages"])
        assert recovered == list(range(since + 1, position + 1)), (since, recovered)
        live = await live_messages(client, channel, position + rng.randint(1, 30))
        seen = recovered + offsets(live)
        assert seen == list(range(since + 1, seen[-1] + 1)), (since, position, offsets(live))
        await abort(client)
    await wait_until(lambda: hub_app.hub.connection_count == 1)
    return seen[-1]


async def test_gap_beyond_history_size_is_not_recovered(serve: Serve, backend: Backend) -> None:
    """With 10 kept of 30, since=20 recovers 21-30; since=19 or 0 gets recovered false, []."""
    hub_app = serve_hub(serve, backend)
    await hub_app.publish_range("small:feed", range(30))
    async with open_wire(hub_app.url()) as client:
        epoch = (await subscribe(client, "small:feed", request_id="pos"))["epoch"]
        for since, ok in [(20, True), (19, False), (5, False), (0, False)]:
            result = await subscribe(client, "small:feed", since, epoch, request_id=since)
            assert result["recovered"] is ok, (since, result)
            assert (result["offset"], result["epoch"]) == (30, epoch)
            assert offsets(result["messages"]) == (list(range(21, 31)) if ok else [])
            await client.request({"op": "unsubscribe", "id": "u", "channel": "small:feed"})


async def test_another_epoch_is_not_recovered(serve: Serve, backend: Backend) -> None:
    """since with an epoch the channel never had: recovered false, no messages."""
    hub_app = serve_hub(serve, backend)
    await hub_app.publish_range("hist:feed", range(5))
    async with open_wire(hub_app.url()) as client:
        result = await subscribe(client, "hist:feed", since=3, epoch="not-this-one")
        assert result["recovered"] is False and result["messages"] == []
        assert result["offset"] == 5 and result["epoch"] not in ("", "not-this-one")
        await hub_app.publish("hist:feed", {"n": 5})
        [live] = await live_messages(client, "hist:feed", 6)
        assert live["data"] == {"n": 5}


async def test_since_zero_recovers_the_whole_history_from_any_epoch(
    serve: Serve, backend: Backend
) -> None:
    """since=0 while the history still starts at offset 1: recovered true, all of it."""
    hub_app = serve_hub(serve, backend)
    await hub_app.publish_range("hist:feed", range(5))
    async with open_wire(hub_app.url()) as client:
        for request_id, epoch in enumerate([None, "", "stale-epoch"]):
            result = await subscribe(client, "hist:feed", 0, epoch, request_id=request_id)
            assert result["recovered"] is True, result
            assert result["offset"] == 5
            assert [m["data"] for m in result["messages"]] == [{"n": n} for n in range(5)]
            assert offsets(result["messages"]) == [1, 2, 3, 4, 5]
            await client.request({"op": "unsubscribe", "id": "u", "channel": "hist:feed"})


async def test_since_on_a_channel_without_history_is_not_recovered(
    serve: Serve, backend: Backend
) -> None:
    """since on a channel that keeps no history: recovered false, no messages, live follows."""
    hub_app = serve_hub(serve, backend)
    async with open_wire(hub_app.url()) as client:
        result = await subscribe(client, "plain", since=3, epoch="e")
        assert result == {"recovered": False, "messages": []}
        await hub_app.publish("plain", {"n": 1})
        [live] = await client.messages("plain", 1)
        assert live == {"op": "message", "channel": "plain", "data": {"n": 1}}


async def test_subscribe_with_since_but_no_id_is_a_bad_request(
    serve: Serve, backend: Backend
) -> None:
    """subscribe with since and no id: bad_request (the recovered batch needs a reply)."""
    hub_app = serve_hub(serve, backend)
    async with open_wire(hub_app.url()) as client:
        await client.send({"op": "subscribe", "channel": "hist:feed", "since": 0, "epoch": ""})
        message = bad_request(await client.next())
        assert "id" in message
        await hub_app.publish("hist:feed", {"n": 1})
        # Not subscribed: the next frame is the reply to this request, not a publication.
        reply = await client.request({"op": "history", "id": 1, "channel": "hist:feed"})
        assert reply["result"]["offset"] == 1 and client.buffered == []


@pytest.mark.redis
@pytest.mark.parametrize("backend", ["redis"], indirect=True)
async def test_redis_restart_with_empty_dataset_changes_the_epoch(
    serve: Serve, backend: Backend
) -> None:
    """Redis restarted empty: since/epoch gets recovered false; the next publish starts anew."""
    assert backend.redis is not None
    hub_app = serve_hub(serve, backend)
    await hub_app.publish_range("hist:feed", range(5))
    async with open_wire(hub_app.url()) as client:
        old = await subscribe(client, "hist:feed")
    assert old["offset"] == 5 and old["epoch"]
    backend.redis.restart()
    await wait_ready(hub_app)
    async with open_wire(hub_app.url()) as client:
        result = await subscribe(client, "hist:feed", since=5, epoch=old["epoch"])
        assert result["recovered"] is False and result["messages"] == []
        assert result["offset"] == 0
        assert await publish_when_up(client) == {"offset": 1}
        reply = await client.request({"op": "history", "id": "h", "channel": "hist:feed"})
        assert reply["result"]["epoch"] not in ("", old["epoch"])
        assert offsets(reply["result"]["messages"]) == [1]


async def publish_when_up(client: WireClient, within: float = 10.0) -> Any:
    """Publish ``{"n": 0}`` to hist:feed, retrying while the broker answers unavailable."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        reply = await client.publish("hist:feed", {"n": 0})
        if "result" in reply or loop.time() > deadline:
            return reply.get("result", reply)
        assert reply["error"]["code"] == "unavailable", reply
        await asyncio.sleep(0.05)
