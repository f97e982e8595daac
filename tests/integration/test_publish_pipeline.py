"""Pipelined publishes: a connection's burst is in flight together and keeps its order.

A client sends many publishes without waiting for replies. On both brokers, and
with the lane at depth 1 (answered in turn) and 16, every reply comes back in
frame order, each channel's subscriber gets every publication once and in
publish order, and history offsets are contiguous. On Redis the burst survives
a ``SCRIPT FLUSH`` in the middle: EVALSHA commands that meet NOSCRIPT run again
with EVAL, in their order.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
import redis.asyncio

from wshub.testing import RunningServer

from .history_support import (  # noqa: F401 (backend_fixture: the backend fixture)
    Backend,
    backend_fixture,
    open_wire,
    serve_hub,
    subscribe,
)
from .support import drop_clients  # noqa: F401 (drop_clients: autouse)

pytestmark = pytest.mark.anyio

Serve = Callable[..., RunningServer]
N = 300  # publishes in the burst, alternating between a history and a plain channel


async def burst(serve: Serve, backend: Backend, depth: int, flush_scripts: bool) -> None:
    hub_app = serve_hub(serve, backend, publish_pipeline_depth=depth)
    kept, plain = "hist:burst", "room:burst"
    async with open_wire(hub_app.url()) as reader, open_wire(hub_app.url()) as writer:
        for channel in (kept, plain):
            await subscribe(reader, channel, request_id=channel)
        for i in range(N):
            channel = kept if i % 2 == 0 else plain
            await writer.send({"op": "publish", "id": i, "channel": channel, "data": {"i": i}})
            if flush_scripts and i == N // 2:
                admin = redis.asyncio.Redis.from_url(backend.url)
                await admin.script_flush()
                await admin.aclose()
        replies = [await writer.reply(i, within=10) for i in range(N)]
        assert all("result" in r for r in replies), [r for r in replies if "result" not in r]
        assert [r["result"].get("offset") for r in replies[::2]] == list(range(1, N // 2 + 1))
        got: dict[str, list[int]] = {kept: [], plain: []}
        while len(got[kept]) + len(got[plain]) < N:
            frame = await reader.next(within=10)
            if frame.get("op") == "message":
                got[frame["channel"]].append(frame["data"]["i"])
        assert got[kept] == list(range(0, N, 2))
        assert got[plain] == list(range(1, N, 2))
        page = await hub_app.call(hub_app.hub.history(kept))
        assert [p.offset for p in page.publications] == list(range(1, N // 2 + 1))


@pytest.mark.parametrize("depth", [1, 16])
async def test_a_burst_keeps_its_order_replies_and_offsets(
    serve: Serve, backend: Backend, depth: int
) -> None:
    """300 un-awaited publishes: replies in frame order, delivery in order, offsets 1..150."""
    await burst(serve, backend, depth, flush_scripts=False)


@pytest.mark.redis
@pytest.mark.parametrize("backend", ["redis"], indirect=True)
async def test_a_script_flush_mid_burst_loses_and_reorders_nothing(
    serve: Serve, backend: Backend
) -> None:
    """Redis forgets its scripts halfway: the history publishes still land once, in order."""
    await burst(serve, backend, 16, flush_scripts=True)


async def test_other_ops_wait_for_the_publishes_before_them(serve: Serve, backend: Backend) -> None:
    """An unsubscribe sent after 20 publishes is answered after all 20 of them."""
    hub_app = serve_hub(serve, backend)
    async with open_wire(hub_app.url()) as client:
        await subscribe(client, "room:order")
        for i in range(20):
            await client.send({"op": "publish", "id": i, "channel": "room:order", "data": i})
        await client.send({"op": "unsubscribe", "id": "u", "channel": "room:order"})
        order: list[object] = []
        while "u" not in order:
            frame = await client.next(within=10)
            if "id" in frame:
                order.append(frame["id"])
        assert order == [*range(20), "u"]
    await asyncio.sleep(0)
