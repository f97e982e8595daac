"""WebSocket clients that record everything they receive, for the multi-process tests.

A `ProtocolClient` speaks wire protocol v1 (JSON): a reader task splits every message
on ``\\n``, files publications per channel, answers pings, and hands replies to the
request waiting for them, so that thousands of publications can arrive while a test
awaits one reply. A `RawClient` (library-mode endpoints such as the seed chat) keeps
every text message exactly as it came. Both remember how the connection ended, so a
test can check that nothing reconnected or closed.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
from collections.abc import AsyncIterator, Sequence
from typing import Any

import orjson
import websockets
from websockets.asyncio.client import ClientConnection

from wshub.testing import TIME_SCALE, wait_until

Frame = dict[str, Any]


async def _connect(url: str) -> ClientConnection:
    return await websockets.connect(
        url, proxy=None, compression=None, max_queue=None, open_timeout=5 * TIME_SCALE
    )


class RawClient:
    """A client that records every message a library-mode endpoint sends.

    Attributes:
        ws: the websockets connection.
        messages: every message received, as it came.
        ended: the exception that ended the reader (None while it runs).
    """

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.messages: list[str | bytes] = []
        self.ended: BaseException | None = None
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def open(cls, url: str) -> RawClient:
        """Connect to ``url`` and start recording."""
        return cls(await _connect(url))

    async def _read(self) -> None:
        try:
            async for message in self.ws:
                self.on_message(message)
            self.ended = EOFError("the connection closed")
        except BaseException as exc:
            self.ended = exc
            raise

    def on_message(self, message: str | bytes) -> None:
        """Record one message."""
        self.messages.append(message)

    @property
    def open_still(self) -> bool:
        """True while the connection is open and no close frame came from either side."""
        protocol = self.ws.protocol
        return self.ended is None and protocol.close_rcvd is None and protocol.close_sent is None

    async def close(self) -> None:
        """Close the connection and stop the reader."""
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.ws.close(), 5 * TIME_SCALE)
        self._reader.cancel()
        with contextlib.suppress(BaseException):
            await self._reader


class ProtocolClient(RawClient):
    """A wire-protocol client; see the module docstring.

    Attributes:
        welcome: the welcome frame.
        received: publication data per channel, in arrival order.
        origins: the ``from`` of each publication per channel (None when absent).
    """

    def __init__(self, ws: ClientConnection) -> None:
        self.welcome: Frame = {}
        self.received: dict[str, list[Any]] = collections.defaultdict(list)
        self.origins: dict[str, list[str | None]] = collections.defaultdict(list)
        self._welcomed = asyncio.Event()
        self._waiting: dict[object, asyncio.Future[Frame]] = {}
        self._ids = itertools.count()
        self._pongs: set[asyncio.Task[None]] = set()
        super().__init__(ws)

    @classmethod
    async def open(cls, url: str) -> ProtocolClient:
        """Connect to a protocol endpoint and wait for the welcome."""
        client = cls(await _connect(url))
        await asyncio.wait_for(client._welcomed.wait(), 5 * TIME_SCALE)
        return client

    @property
    def id(self) -> str:
        """The client id from the welcome."""
        return str(self.welcome["client"])

    def on_message(self, message: str | bytes) -> None:
        """Split a message into frames and dispatch each."""
        assert isinstance(message, str), message
        for line in message.split("\n"):
            self._dispatch(orjson.loads(line))

    def _dispatch(self, frame: Frame) -> None:
        op = frame.get("op")
        if op == "message":
            self.received[frame["channel"]].append(frame["data"])
            self.origins[frame["channel"]].append(frame.get("from"))
        elif op == "ping":
            pong = asyncio.create_task(self.ws.send('{"op":"pong"}'))
            self._pongs.add(pong)
            pong.add_done_callback(self._pongs.discard)
        elif op == "welcome":
            self.welcome = frame
            self._welcomed.set()
        elif "id" in frame:
            future = self._waiting.pop(frame["id"], None)
            if future is not None and not future.done():
                future.set_result(frame)

    async def request(self, frame: Frame, within: float = 5.0) -> Frame:
        """Send ``frame`` with a fresh ``id``; return the reply carrying it."""
        request_id = f"r{next(self._ids)}"
        future: asyncio.Future[Frame] = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = future
        await self.ws.send(orjson.dumps({**frame, "id": request_id}).decode())
        return await asyncio.wait_for(future, within * TIME_SCALE)

    async def subscribe(self, channel: str) -> None:
        """Subscribe to ``channel``, asserting success."""
        reply = await self.request({"op": "subscribe", "channel": channel})
        assert "result" in reply, reply

    async def unsubscribe(self, channel: str) -> None:
        """Unsubscribe from ``channel``, asserting success."""
        reply = await self.request({"op": "unsubscribe", "channel": channel})
        assert "result" in reply, reply

    async def publish(self, channel: str, data: object) -> Frame:
        """Publish and return the reply (a result or an error)."""
        return await self.request({"op": "publish", "channel": channel, "data": data})

    async def publish_many(self, channel: str, items: Sequence[object]) -> list[Frame]:
        """Publish every item pipelined, in order; return the replies in the same order."""
        loop = asyncio.get_running_loop()
        futures = []
        for data in items:
            request_id = f"r{next(self._ids)}"
            future: asyncio.Future[Frame] = loop.create_future()
            self._waiting[request_id] = future
            futures.append(future)
            frame = {"op": "publish", "id": request_id, "channel": channel, "data": data}
            await self.ws.send(orjson.dumps(frame).decode())
        return list(await asyncio.wait_for(asyncio.gather(*futures), 20 * TIME_SCALE))


async def open_clients(urls: Sequence[str], *channels: str) -> list[ProtocolClient]:
    """Open one protocol client per URL (concurrently) and subscribe each to ``channels``."""

    async def one(url: str) -> ProtocolClient:
        client = await ProtocolClient.open(url)
        for channel in channels:
            await client.subscribe(channel)
        return client

    return list(await asyncio.gather(*(one(url) for url in urls)))


@contextlib.asynccontextmanager
async def closing(clients: list[Any]) -> AsyncIterator[list[Any]]:
    """Close every client in ``clients`` (which may still grow) when the block ends."""
    try:
        yield clients
    finally:
        await asyncio.gather(*(client.close() for client in clients))


async def wait_received(
    clients: Sequence[ProtocolClient], channel: str, count: int, within: float = 10.0
) -> None:
    """Wait until every client got at least ``count`` publications on ``channel``.

    Raises:
        TimeoutError: with how many each client got.
    """
    try:
        await wait_until(
            lambda: all(len(c.received[channel]) >= count for c in clients), within, 0.02
        )
    except TimeoutError:
        counts = sorted(len(c.received[channel]) for c in clients)
        raise TimeoutError(f"wanted {count} on {channel!r} at every client, got {counts}") from None
