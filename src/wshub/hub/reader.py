"""Inbound: library mode's reader task and its bounded inbound buffer.

In library mode (``async with hub.connect(ws) as conn``) the socket is read in a
task of its own, so that it is always read, protocol pongs included, however
slowly the endpoint's loop consumes messages. The buffer between the two is
bounded by messages and bytes; past either bound, and past the rate limit, the
connection closes with 4029 rather than grow without end.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any, Protocol

import orjson

from wshub.core.errors import CloseCode
from wshub.core.limits import TokenBucket
from wshub.hub.stats import HubStats
from wshub.settings import Settings

Message = dict[str, Any]  # an ASGI WebSocket event

logger = logging.getLogger("wshub.connection")

_END: Message = {"type": "websocket.disconnect", "code": CloseCode.NORMAL}


class _Owner(Protocol):
    settings: Settings
    stats: HubStats


class Readable(Protocol):
    """What a reader needs of its connection (`wshub.hub.connection.Connection`)."""

    @property
    def id(self) -> str: ...
    @property
    def hub(self) -> _Owner: ...
    async def receive(self) -> Message: ...
    def close(self, code: int = ..., reason: str = ..., *, drain: bool = ...) -> None: ...
    def mark_closed(self, code: int) -> None: ...


class Inbound:
    """The reader task of one library-mode connection, and what it has read.

    Args:
        conn: the connection it reads for.
    """

    __slots__ = ("_bytes", "_conn", "_queue", "_task")

    def __init__(self, conn: Readable) -> None:
        self._conn = conn
        self._queue: asyncio.Queue[Message] = asyncio.Queue()
        self._bytes = 0
        self._task: asyncio.Task[None] | None = None

    @property
    def task(self) -> asyncio.Task[None] | None:
        """The reader task, once started."""
        return self._task

    def start(self) -> None:
        """Start reading."""
        self._task = asyncio.get_running_loop().create_task(self._run())

    def end(self) -> None:
        """Make the iterators end: the stream is over."""
        self._queue.put_nowait(_END)

    async def _run(self) -> None:
        conn, inbound = self._conn, self._queue
        s = conn.hub.settings
        clock = asyncio.get_running_loop().time
        bucket = TokenBucket(s.rate_limit, s.rate_burst, clock())
        try:
            while True:
                message = await conn.receive()
                if message["type"] == "websocket.disconnect":
                    return
                size = _size(message)
                if (
                    inbound.qsize() >= s.max_inbound_messages
                    or self._bytes + size > s.max_inbound_bytes
                ):
                    conn.close(CloseCode.RATE_LIMITED, "too many frames: the server is behind")
                    return
                if bucket.take(clock()):
                    self._bytes += size
                    inbound.put_nowait(message)
                    continue
                # Library endpoints have no error frame: drop, and close if it goes on.
                conn.hub.stats.rate_limited += 1
                if bucket.strikes >= s.rate_limit_strikes:
                    conn.close(CloseCode.RATE_LIMITED, "rate limited: too many frames")
                    return
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a transport error while reading is a lost client
            logger.debug("connection %s: receive failed: %r", conn.id, exc)
            conn.mark_closed(CloseCode.INTERNAL_ERROR)
        finally:
            inbound.put_nowait(_END)

    async def messages(self) -> AsyncIterator[Message]:
        """Yield each ``websocket.receive`` message; end cleanly when the connection ends."""
        inbound = self._queue
        while True:
            message = await inbound.get()
            if message["type"] == "websocket.disconnect":
                inbound.put_nowait(message)  # later iterators end too
                return
            self._bytes -= _size(message)
            yield message

    async def texts(self) -> AsyncIterator[str]:
        """Yield each text message; a binary message closes the connection with 1008."""
        async for message in self.messages():
            text = message.get("text")
            if text is None:
                self._conn.close(CloseCode.POLICY_VIOLATION, "expected a text message")
                return
            yield text

    async def binaries(self) -> AsyncIterator[bytes]:
        """Yield each binary message; a text message closes the connection with 1008."""
        async for message in self.messages():
            data = message.get("bytes")
            if data is None:
                self._conn.close(CloseCode.POLICY_VIOLATION, "expected a binary message")
                return
            yield data

    async def json(self) -> AsyncIterator[Any]:
        """Yield each message decoded as JSON (text or UTF-8 binary); see `Connection.iter_json`."""
        async for message in self.messages():
            raw = message.get("text")
            try:
                yield orjson.loads(raw if raw is not None else message.get("bytes") or b"")
            except orjson.JSONDecodeError:
                self._conn.close(CloseCode.POLICY_VIOLATION, "invalid JSON")
                return


def _size(message: Message) -> int:
    """Bytes (or characters, for text) an incoming message holds."""
    return len(message.get("text") or message.get("bytes") or "")
