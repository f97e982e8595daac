"""Backpressure against a real server: a client that stops reading, among 20 that keep up.

The slow client stops calling ``recv``. Its websockets client stops reading the socket
once one message is buffered (``max_queue=1``) and its socket has a 4 KiB receive buffer,
so the server's writes stall after a few hundred kilobytes and its send queue fills.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from websockets.asyncio.client import ClientConnection

from wshub import Connection, Hub
from wshub.testing import RunningServer, wait_until

from .support import (
    NO_RATE_LIMIT,
    close_code,
    drain_until_closed,
    drop_clients,  # noqa: F401 (an autouse fixture)
    frame_numbers,
    open_protocol,
    publish_all,
    recv_frames,
    registries_empty,
    small_socket,
)

pytestmark = pytest.mark.anyio

CHANNEL = "feed"
PAD = 8000  # every publication's data is {"n": n, "pad": ...} of constant size


def item(n: int) -> dict[str, Any]:
    """Publication number ``n``, padded so that every frame has the same size."""
    return {"n": n, "pad": "x" * (PAD - len(str(n)))}


class Reader:
    """A fast client reading every publication of the channel as it arrives."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.numbers: list[int] = []
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        while True:
            for frame in await recv_frames(self.ws, within=60):
                if frame.get("op") == "message":
                    self.numbers.append(frame["data"]["n"])


class Watch:
    """Samples a server-side connection's queue while the test runs: the most it ever held."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.max_messages = 0
        self.max_bytes = 0
        self.task = asyncio.create_task(self._sample())

    async def _sample(self) -> None:
        queue = self.conn.queue
        while True:
            self.max_messages = max(self.max_messages, len(queue))
            self.max_bytes = max(self.max_bytes, queue.bytes)
            await asyncio.sleep(0.0005)


async def start_scene(
    server: RunningServer, hub: Hub
) -> tuple[list[Reader], ClientConnection, Connection, ClientConnection]:
    """20 fast readers, one slow client (returned with its server-side connection), a publisher."""
    fast = await asyncio.gather(*(open_protocol(server, CHANNEL) for _ in range(20)))
    slow, welcome = await open_protocol(server, CHANNEL, sock=small_socket(server), max_queue=1)
    [conn] = [c for c in hub.connections() if c.id == welcome["client"]]
    publisher, _ = await open_protocol(server)
    return [Reader(ws) for ws, _ in fast], slow, conn, publisher


async def publish_checked(
    publisher: ClientConnection, readers: list[Reader], start: int, count: int, batch: int = 10
) -> int:
    """Publish ``count`` items from number ``start``, ``batch`` at a time (less than any
    reader's queue holds); after each batch every fast reader must have it all, promptly.

    Returns:
        The number of the next publication.
    """
    end = start + count
    for first in range(start, end, batch):
        last = min(first + batch, end)
        await publish_all(publisher, CHANNEL, [item(i) for i in range(first, last)])
        await wait_until(lambda: all(len(r.numbers) >= last for r in readers), within=2)  # noqa: B023
        for r in readers:
            assert r.numbers == list(range(last))
    return end


async def publish_until(
    publisher: ClientConnection,
    readers: list[Reader],
    done: Callable[[], bool],
    start: int = 0,
    limit: int = 5_000,
) -> int:
    """Publish batches of 10 until ``done()`` (checking the fast readers after each).

    Returns:
        The number of the next publication.
    """
    n = start
    while not done():
        assert n < limit, "the slow client's queue never filled"
        n = await publish_checked(publisher, readers, n, 10)
    return n


async def stop_scene(
    readers: list[Reader], slow: ClientConnection, publisher: ClientConnection, hub: Hub
) -> None:
    """Close every client and check the hub forgot them all."""
    for r in readers:
        r.task.cancel()
    await asyncio.gather(*(r.task for r in readers), return_exceptions=True)
    await asyncio.gather(slow.close(), publisher.close(), *(r.ws.close() for r in readers))
    await wait_until(lambda: registries_empty(hub))


async def test_slow_consumer_is_closed_4008_while_others_get_everything(hub_server) -> None:
    """Under `disconnect` a stalled client gets 4008 after what was sent; 20 others miss nothing."""
    server, hub = hub_server(queue_max_messages=50, **NO_RATE_LIMIT)
    readers, slow, conn, publisher = await start_scene(server, hub)
    watch = Watch(conn)
    try:
        total = await publish_until(publisher, readers, lambda: hub.stats.overflows > 0)
        assert conn.close_code == 4008
        # Publishing goes on, undisturbed, for everybody else.
        total = await publish_checked(publisher, readers, total, 100)
        # The slow client reads again: what was in flight, then the close frame with 4008.
        numbers = frame_numbers(await drain_until_closed(slow), CHANNEL)
        assert close_code(slow) == 4008
        assert numbers == list(range(len(numbers))) and len(numbers) < total
        assert hub.stats.overflows == 1
        assert watch.max_messages <= 50 and watch.max_bytes <= hub.settings.queue_max_bytes
    finally:
        watch.task.cancel()
        await stop_scene(readers, slow, publisher, hub)


def frame_size() -> int:
    """The size of one publication's frame as the protocol endpoint sends it."""
    data = orjson.dumps(item(0))
    return len(b'{"op":"message","channel":"feed","data":%s,"from":"%s"}' % (data, b"0" * 16))


@pytest.mark.parametrize("bound", ["messages", "bytes"])
@pytest.mark.parametrize("policy", ["drop_oldest", "drop_newest"])
async def test_drop_policy_keeps_the_expected_messages_and_counts_drops(
    hub_server, policy: str, bound: str
) -> None:
    """drop_oldest keeps the newest, drop_newest the oldest; drops counted, queue stays bounded."""
    size = frame_size()
    if bound == "messages":
        limits = {"queue_max_messages": 50}
    else:  # room for 20 frames and a half
        limits = {"queue_max_messages": 1000, "queue_max_bytes": 20 * size + size // 2}
    capacity = 50 if bound == "messages" else 20
    server, hub = hub_server(overflow_policy=policy, **limits, **NO_RATE_LIMIT)
    readers, slow, conn, publisher = await start_scene(server, hub)
    watch = Watch(conn)
    try:
        # Until the stalled client's queue is full and drops begin...
        stalled = await publish_until(publisher, readers, lambda: conn.queue.dropped > 0)
        assert len(conn.queue) == capacity
        # ...then three queues' worth more, none of which can be written.
        total = await publish_checked(publisher, readers, stalled, 3 * capacity)
        assert len(conn.queue) == capacity
        # The slow client reads again; once its queue drained, a last publication marks the end.
        reading = asyncio.create_task(collect_until(slow, total))
        await wait_until(lambda: len(conn.queue) == 0)
        await publish_checked(publisher, readers, total, 1)
        numbers = await asyncio.wait_for(reading, 5)
        assert numbers[-1] == total
        numbers.pop()
        if policy == "drop_oldest":  # what was in flight, then the newest `capacity`
            head = numbers[: len(numbers) - capacity]
            assert head == list(range(len(head))) and len(head) <= stalled
            assert numbers[len(head) :] == list(range(total - capacity, total))
        else:  # what was in flight and what was queued first: a prefix, nothing after it
            assert numbers == list(range(len(numbers))) and len(numbers) <= stalled
        assert conn.queue.dropped == total - len(numbers)
        assert hub.stats.overflows == 0 and conn.state.value == "open"
        assert watch.max_messages <= capacity and watch.max_bytes <= hub.settings.queue_max_bytes
    finally:
        watch.task.cancel()
        await stop_scene(readers, slow, publisher, hub)
    assert hub.stats.dropped == conn.queue.dropped


async def collect_until(ws: ClientConnection, last: int) -> list[int]:
    """Read publications until number ``last`` arrives; return the numbers in arrival order."""
    numbers: list[int] = []
    while not numbers or numbers[-1] != last:
        numbers += frame_numbers([await ws.recv()], CHANNEL)
    return numbers
