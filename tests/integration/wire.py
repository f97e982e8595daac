"""A small wire-protocol v1 client for the protocol and bad-input tests.

`WireClient` wraps a real `websockets` connection to the protocol endpoint, speaks
JSON (text, frames packed with ``\\n``) or MessagePack (binary), and keeps the frames
it has read but not consumed yet, so a test can wait for one reply while
publications and other replies arrive around it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import msgpack
import orjson
import websockets
from websockets.asyncio.client import ClientConnection

from wshub.core.codecs import MSGPACK_SUBPROTOCOL
from wshub.testing import RunningServer

from .support import close_code, connect, scaled

Frame = dict[str, Any]


class WireClient:
    """One protocol client. Use `open_client` to get one that has read its welcome.

    Attributes:
        ws: the websockets connection.
        binary: True on the MessagePack subprotocol.
        welcome: the welcome frame.
        raw: every WebSocket message received so far, as it came.
    """

    def __init__(self, ws: ClientConnection, binary: bool) -> None:
        self.ws = ws
        self.binary = binary
        self.welcome: Frame = {}
        self.raw: list[str | bytes] = []
        self._pending: collections.deque[Frame] = collections.deque()

    @property
    def id(self) -> str:
        """The client id the server gave this connection."""
        return str(self.welcome["client"])

    async def send(self, frame: object) -> None:
        """Encode ``frame`` with this client's codec and send it as one message."""
        if self.binary:
            await self.ws.send(msgpack.packb(frame, use_bin_type=True))
        else:
            await self.ws.send(orjson.dumps(frame).decode())

    async def send_raw(self, message: str | bytes) -> None:
        """Send a message exactly as given (text for ``str``, binary for ``bytes``)."""
        await self.ws.send(message)

    async def next(self, within: float = 5.0) -> Frame:
        """The next server frame, reading a message when none is buffered."""
        if not self._pending:
            message = await asyncio.wait_for(self.ws.recv(), scaled(within))
            self.raw.append(message)
            self._pending.extend(decode(message))
        return self._pending.popleft()

    async def request(self, frame: Frame, within: float = 5.0) -> Frame:
        """Send a frame carrying an ``id`` and return the reply with that id.

        Frames arriving before the reply (publications, other replies) stay buffered
        for `next`, in order.
        """
        await self.send(frame)
        return await self.reply(frame["id"], within)

    async def reply(self, request_id: object, within: float = 5.0) -> Frame:
        """Wait for the reply carrying ``request_id``; keep every other frame buffered."""
        skipped: list[Frame] = []
        try:
            while True:
                frame = await self.next(within)
                if "id" in frame and frame["id"] == request_id:
                    return frame
                skipped.append(frame)
        finally:
            self._pending.extendleft(reversed(skipped))

    async def subscribe(self, channel: str, request_id: object = "sub") -> None:
        """Subscribe to ``channel``, asserting success."""
        reply = await self.request({"op": "subscribe", "id": request_id, "channel": channel})
        assert reply == {"id": request_id, "result": {}}, reply

    async def publish(self, channel: str, data: object, request_id: object = "pub") -> Frame:
        """Publish and return the reply."""
        return await self.request(
            {"op": "publish", "id": request_id, "channel": channel, "data": data}
        )

    async def messages(self, channel: str, count: int, within: float = 5.0) -> list[Frame]:
        """Consume frames until ``count`` publications on ``channel`` came; return them.

        Other frames met on the way are dropped.
        """
        found: list[Frame] = []
        while len(found) < count:
            frame = await self.next(within)
            if frame.get("op") == "message" and frame.get("channel") == channel:
                found.append(frame)
        return found

    async def closed(self, within: float = 5.0) -> int | None:
        """Read until the server closes the connection; return the close code it sent."""

        async def drain() -> None:
            with contextlib.suppress(websockets.ConnectionClosed):
                while True:
                    self.raw.append(await self.ws.recv())

        await asyncio.wait_for(drain(), scaled(within))
        return close_code(self.ws)

    @property
    def buffered(self) -> list[Frame]:
        """Frames read but not consumed yet."""
        return list(self._pending)


def decode(message: str | bytes) -> list[Frame]:
    """Split and decode one server message: ``\\n``-packed JSON text or one MessagePack frame."""
    if isinstance(message, bytes):
        return [msgpack.unpackb(message, raw=False)]
    return [orjson.loads(line) for line in message.split("\n")]


@contextlib.asynccontextmanager
async def open_client(
    server: RunningServer, *, msgpack_: bool = False, path: str = "/ws", **kwargs: Any
) -> AsyncIterator[WireClient]:
    """Connect to the protocol endpoint, read the welcome, close on exit.

    Args:
        server: the running server.
        msgpack_: offer only the MessagePack subprotocol.
        path: the endpoint's path.
        **kwargs: websockets.connect options (``subprotocols=...`` wins over ``msgpack_``).
    """
    if msgpack_:
        kwargs.setdefault("subprotocols", [MSGPACK_SUBPROTOCOL])
    ws = await connect(server.ws_url(path), **kwargs)
    try:
        client = WireClient(ws, binary=ws.subprotocol == MSGPACK_SUBPROTOCOL)
        client.welcome = await client.next()
        assert client.welcome["op"] == "welcome", client.welcome
        yield client
    finally:
        await ws.close()


def bad_request(frame: Frame, request_id: object = None) -> str:
    """Assert ``frame`` is a bad_request error with ``request_id`` (or none); return its text."""
    assert set(frame) == ({"error"} if request_id is None else {"id", "error"}), frame
    if request_id is not None:
        assert frame["id"] == request_id, frame
    assert frame["error"]["code"] == "bad_request", frame
    message = frame["error"]["message"]
    assert isinstance(message, str) and message
    return message
