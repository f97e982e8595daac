"""Connections that never finish their request headers are closed after ``handshake_timeout``.

``wshub serve`` runs as a user runs it (a subprocess) with a 1 s deadline; raw TCP
sockets stay silent, send half a request line, half the headers, trickle header bytes,
or stall in a second request on a kept-alive connection. Each must be closed by the
server within the deadline plus some slack, while a WebSocket client connects and
chats before, during and after. The h11 protocol is checked in process.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from websockets.asyncio.client import ClientConnection

from tests.conftest import make_app
from wshub.testing import TIME_SCALE, RunningServer

from .processes import hub_env, hub_processes
from .support import connect

pytestmark = pytest.mark.anyio

TIMEOUT = 1.0
SLACK = 2.0 * TIME_SCALE

#: What each kind of stalled client sends before it goes quiet.
PARTIAL = {
    "silent": b"",
    "half request line": b"GET /ws/ch",
    "half headers": b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: slow",
    "half upgrade": (
        b"GET /ws/chat HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
    ),
}
NEXT_REQUEST = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n"
FULL_REQUEST = NEXT_REQUEST + b"\r\n"


async def closed_after(port: int, first: bytes, trickle: bool = False) -> float:
    """Connect, send ``first`` and go quiet (or trickle header bytes); seconds until EOF."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.monotonic()
    try:
        if first:
            writer.write(first)
            await writer.drain()
        if trickle:
            # One header byte every 0.2 s: never a complete header, never silent.
            writer.write(b"GET / HTTP/1.1\r\nX-Slow: ")

            async def drip() -> None:
                while True:
                    await asyncio.sleep(0.2)
                    writer.write(b"a")
                    await writer.drain()

            dripping = asyncio.create_task(drip())
            try:
                await asyncio.wait_for(reader.read(), TIMEOUT + SLACK)
            finally:
                dripping.cancel()
                with contextlib.suppress(asyncio.CancelledError, OSError):
                    await dripping
        else:
            assert await asyncio.wait_for(reader.read(), TIMEOUT + SLACK) == b""
        return time.monotonic() - started
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def stalled_after_one_request(port: int) -> float:
    """A complete request and its response, then half the next one; seconds until EOF."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(FULL_REQUEST)
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5 * TIME_SCALE)
        assert head.startswith(b"HTTP/1.1 "), head
        length = next(
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        await reader.readexactly(length)
        writer.write(NEXT_REQUEST)
        await writer.drain()
        started = time.monotonic()
        assert await asyncio.wait_for(reader.read(), TIMEOUT + SLACK) == b""
        return time.monotonic() - started
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def chat_works(ws: ClientConnection, text: str) -> None:
    """The demo chat echoes ``text`` back to ``ws``."""
    await ws.send(json.dumps({"user": "ada", "text": text}))
    while True:
        message = json.loads(await asyncio.wait_for(ws.recv(), 5 * TIME_SCALE))
        if message.get("text") == text:
            return


@contextlib.asynccontextmanager
async def chat_client(url: str) -> AsyncIterator[ClientConnection]:
    ws = await connect(url, open_timeout=5 * TIME_SCALE)
    try:
        yield ws
    finally:
        await ws.close()


async def stall_everything(port: int) -> list[tuple[str, float]]:
    """Twenty stalled connections of every kind at once; (kind, seconds until closed)."""
    kinds: list[tuple[str, Awaitable[float]]] = []
    for _ in range(4):
        kinds += [(name, closed_after(port, first)) for name, first in PARTIAL.items()]
    for _ in range(2):
        kinds.append(("trickle", closed_after(port, b"", trickle=True)))
        kinds.append(("stalled second request", stalled_after_one_request(port)))
    results = await asyncio.gather(*(waiting for _, waiting in kinds))
    return [(name, elapsed) for (name, _), elapsed in zip(kinds, results, strict=True)]


async def test_serve_closes_connections_that_never_finish_their_headers() -> None:
    """20 stalled sockets of every kind close within 1 s + slack; a chat client is unharmed."""
    env = hub_env("memory://", WSHUB_HANDSHAKE_TIMEOUT=str(TIMEOUT))
    async with hub_processes(1, env) as [hub]:
        url = hub.ws_url("/ws/chat")
        async with chat_client(url) as before:
            await chat_works(before, "before")
            stalled = asyncio.create_task(stall_everything(hub.port))
            await asyncio.sleep(0.3)
            async with chat_client(url) as during:  # connects while 20 sockets stall
                await chat_works(during, "during")
                results = await stalled
                # Open WebSockets are not subject to the deadline: still chatting.
                await chat_works(before, "still here")
                await chat_works(during, "still here")
        async with chat_client(url) as after:
            await chat_works(after, "after")
    assert len(results) == 20
    for kind, elapsed in results:
        # Closed by the deadline: not before it (minus timer jitter), not long after.
        assert TIMEOUT * 0.8 <= elapsed <= TIMEOUT + SLACK, (kind, elapsed)


async def test_h11_protocol_has_the_deadline_too(serve: Callable[..., RunningServer]) -> None:
    """With ``http="h11"`` the guard applies as well: silent and half-sent sockets close."""
    app, hub = make_app(handshake_timeout=TIMEOUT)
    server = serve(app, settings=hub.settings, http="h11")
    results = await asyncio.gather(
        *(closed_after(server.port, first) for first in PARTIAL.values()),
        stalled_after_one_request(server.port),
    )
    for elapsed in results:
        assert TIMEOUT * 0.8 <= elapsed <= TIMEOUT + SLACK, results
    async with chat_client(server.ws_url("/ws/chat")) as ws:
        await chat_works(ws, "h11")
        await asyncio.sleep(TIMEOUT * 1.5)
        await chat_works(ws, "h11 later")
