"""The ``history`` op and ``hub.history`` against a real server, on the memory broker and Redis.

Offsets count 1, 2, 3, ... per channel; a channel's epoch starts with its first
publication and is forgotten with its history after ``history_ttl`` seconds
without publications, so that the next publication starts a new one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from wshub.brokers.history import HistoryPage
from wshub.core.errors import ProtocolError
from wshub.testing import RunningServer

from .history_support import (  # noqa: F401 (backend_fixture: the backend fixture)
    Backend,
    backend_fixture,
    history,
    offsets,
    open_wire,
    serve_hub,
    subscribe,
)
from .support import drop_clients  # noqa: F401 (an autouse fixture)
from .wire import bad_request

pytestmark = pytest.mark.anyio

Serve = Callable[..., RunningServer]


async def test_history_op_reads_with_since_and_limit(serve: Serve, backend: Backend) -> None:
    """history: all kept, after since, the first limit after since, or the newest limit."""
    hub_app = serve_hub(serve, backend)
    async with open_wire(hub_app.url()) as client:
        for n in range(10):
            reply = await client.publish("hist:log", {"n": n}, n)
            assert reply == {"id": n, "result": {"offset": n + 1}}
        whole = await history(client, "hist:log")
        assert set(whole["result"]) == {"offset", "epoch", "messages"}
        epoch = whole["result"]["epoch"]
        assert whole["result"]["offset"] == 10 and isinstance(epoch, str) and epoch
        assert whole["result"]["messages"] == [
            {"channel": "hist:log", "data": {"n": n}, "offset": n + 1, "from": client.id}
            for n in range(10)
        ]
        cases = [
            ({"since": 3, "limit": 4}, [4, 5, 6, 7]),
            ({"since": 3}, list(range(4, 11))),
            ({"since": 8, "limit": 5}, [9, 10]),
            ({"since": 10}, []),
            ({"limit": 3}, [8, 9, 10]),
            ({"limit": 0}, []),
            ({"since": 0, "limit": 2}, [1, 2]),
        ]
        for fields, expected in cases:
            result = (await history(client, "hist:log", **fields))["result"]
            assert (result["offset"], result["epoch"]) == (10, epoch), fields
            assert offsets(result["messages"]) == expected, fields
        assert client.buffered == []


async def test_history_op_on_a_channel_without_history_is_a_bad_request(
    serve: Serve, backend: Backend
) -> None:
    """history on a channel whose namespace keeps none: error bad_request with the id."""
    hub_app = serve_hub(serve, backend)
    async with open_wire(hub_app.url()) as client:
        await client.publish("plain", {"n": 1})
        for channel in ("plain", "room:lobby"):
            message = bad_request(await history(client, channel), "hist")
            assert channel in message
        # The connection is fine afterwards. A first read creates the epoch.
        result = (await history(client, "hist:log"))["result"]
        assert result["offset"] == 0 and result["messages"] == []
        assert isinstance(result["epoch"], str) and len(result["epoch"]) == 8


async def test_history_expires_after_its_ttl_and_the_next_publish_starts_a_new_epoch(
    serve: Serve, backend: Backend
) -> None:
    """1 s without publications: no messages, offset 0, a new epoch; then offset 1 in it."""
    hub_app = serve_hub(serve, backend)
    async with open_wire(hub_app.url()) as client:
        for n in range(3):
            await client.publish("brief:news", {"n": n}, n)
        first = (await history(client, "brief:news"))["result"]
        assert first["offset"] == 3 and offsets(first["messages"]) == [1, 2, 3]
        loop = asyncio.get_running_loop()
        published = loop.time()
        while (result := (await history(client, "brief:news"))["result"])["offset"]:
            assert loop.time() - published < 4, "the history outlived its 1 s ttl by 3 s"
            await asyncio.sleep(0.05)
        assert loop.time() - published > 0.9, "the history expired before its ttl"
        # The read that found it gone started a new epoch, at offset 0.
        assert result["messages"] == [] and result["epoch"] not in ("", first["epoch"])
        recovery = await subscribe(client, "brief:news", since=3, epoch=first["epoch"])
        assert recovery["recovered"] is False and recovery["messages"] == []
        assert recovery["epoch"] not in ("", first["epoch"])
        reply = await client.publish("brief:news", {"n": 3})
        assert reply == {"id": "pub", "result": {"offset": 1}}
        again = (await history(client, "brief:news"))["result"]
        assert again["offset"] == 1 and again["epoch"] not in ("", first["epoch"])
        assert [m["data"] for m in again["messages"]] == [{"n": 3}]


async def test_server_side_hub_history_reads_what_the_op_reads(
    serve: Serve, backend: Backend
) -> None:
    """hub.history(channel, since=, limit=) returns the offsets, epoch and data of the op."""
    hub_app = serve_hub(serve, backend)
    hub = hub_app.hub
    assert await hub_app.publish_range("hist:log", range(6)) == [1, 2, 3, 4, 5, 6]
    page: HistoryPage = await hub_app.call(hub.history("hist:log", since=2, limit=3))
    assert page.position.offset == 6 and page.complete
    assert [p.offset for p in page.publications] == [3, 4, 5]
    assert [p.data for p in page.publications] == [b'{"n":2}', b'{"n":3}', b'{"n":4}']
    assert all(p.origin is None and p.event is None for p in page.publications)
    newest = await hub_app.call(hub.history("hist:log", limit=2))
    assert [p.offset for p in newest.publications] == [5, 6]
    async with open_wire(hub_app.url()) as client:
        reply = (await history(client, "hist:log", since=2, limit=3))["result"]
    assert reply["epoch"] == page.position.epoch
    assert offsets(reply["messages"]) == [3, 4, 5]
    with pytest.raises(ProtocolError, match="keeps no history"):
        await hub_app.call(hub.history("plain"))
