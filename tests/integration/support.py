"""Client-side helpers shared by the fan-out, backpressure, lifecycle and shutdown tests.

Everything here talks to a real server through real `websockets` clients. Timeouts
are multiplied by ``WSHUB_TEST_TIME_SCALE`` (see `wshub.testing.TIME_SCALE`).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
import websockets
from websockets.asyncio.client import ClientConnection

from wshub import Hub
from wshub.core.channels import BROADCAST_CHANNEL
from wshub.testing import TIME_SCALE, RunningServer

#: Hub settings for tests whose publisher client sends thousands of frames in a burst.
NO_RATE_LIMIT = {"rate_limit": 1e9, "rate_burst": 1_000_000_000}


def scaled(seconds: float) -> float:
    """``seconds`` multiplied by the test time scale."""
    return seconds * TIME_SCALE


_clients: list[ClientConnection] = []


async def connect(url: str, **kwargs: Any) -> ClientConnection:
    """Open a websockets client with no proxy and no compression (unless asked).

    Clients still open when the test ends are dropped by the `drop_clients` fixture.
    """
    kwargs.setdefault("proxy", None)
    kwargs.setdefault("compression", None)
    ws = await websockets.connect(url, **kwargs)
    _clients.append(ws)
    return ws


@pytest.fixture(autouse=True)
async def drop_clients() -> AsyncIterator[None]:
    """Drop every client a test opened with `connect` and left open (a failed test, say).

    Import it into a test module to use it there. Modules that don't leave their
    clients here until the next test that does, which forgets them first.
    """
    _clients.clear()
    yield
    for ws in _clients:
        if not ws.transport.is_closing():
            ws.transport.abort()
    await asyncio.gather(*(ws.wait_closed() for ws in _clients))
    _clients.clear()


async def recv_frames(ws: ClientConnection, within: float = 5.0) -> list[dict[str, Any]]:
    """Receive one WebSocket message from the protocol endpoint and split it into frames."""
    message = await asyncio.wait_for(ws.recv(), scaled(within))
    assert isinstance(message, str)
    return [orjson.loads(line) for line in message.split("\n")]


async def open_protocol(
    server: RunningServer, *channels: str, **kwargs: Any
) -> tuple[ClientConnection, dict[str, Any]]:
    """Connect to /ws, read the welcome and subscribe to ``channels`` (awaiting each reply).

    Returns:
        The client and its welcome frame.
    """
    ws = await connect(server.ws_url("/ws"), **kwargs)
    [welcome] = await recv_frames(ws)
    assert welcome["op"] == "welcome"
    for i, channel in enumerate(channels):
        request = {"op": "subscribe", "id": f"sub{i}", "channel": channel}
        await ws.send(orjson.dumps(request).decode())
        frames = await recv_frames(ws)
        assert frames == [{"id": f"sub{i}", "result": {}}], frames
    return ws, welcome


async def publish_all(ws: ClientConnection, channel: str, items: list[Any]) -> None:
    """Publish every item of ``items`` on ``channel``, pipelined, and await every reply.

    The publisher must not be subscribed to ``channel``. With the memory broker a
    publication has been queued for every subscriber by the time its reply is sent,
    so when this returns every subscriber's queue holds (or has sent) every item.
    """
    for i, data in enumerate(items):
        frame = {"op": "publish", "id": i, "channel": channel, "data": data}
        await ws.send(orjson.dumps(frame).decode())
    pending = set(range(len(items)))
    while pending:
        for frame in await recv_frames(ws):
            if frame == {"op": "ping"}:  # a slow run can last a heartbeat interval
                await ws.send('{"op":"pong"}')
                continue
            assert "result" in frame, frame
            pending.discard(frame["id"])


async def collect_messages(
    ws: ClientConnection, channel: str, count: int, within: float = 10.0
) -> list[Any]:
    """Receive until ``count`` publications on ``channel`` arrived; return their data in order.

    Pings are answered. One deadline covers the whole collection (a timeout per
    message would cost a task per message, which adds up over 200,000 of them).
    """
    received: list[Any] = []
    try:
        async with asyncio.timeout(scaled(within)):
            while len(received) < count:
                message = await ws.recv()
                assert isinstance(message, str)
                for line in message.split("\n"):
                    frame = orjson.loads(line)
                    if frame.get("op") == "message" and frame["channel"] == channel:
                        received.append(frame["data"])
                    elif frame == {"op": "ping"}:  # a slow run can last a heartbeat interval
                        await ws.send('{"op":"pong"}')
    except TimeoutError:
        raise TimeoutError(f"got {len(received)} of {count} messages") from None
    return received


async def drain_until_closed(ws: ClientConnection, within: float = 5.0) -> list[str | bytes]:
    """Read every remaining message until the server's close arrives; return the messages.

    Raises:
        TimeoutError: the connection did not close in time.
    """
    messages: list[str | bytes] = []

    async def read() -> None:
        try:
            while True:
                messages.append(await ws.recv())
        except websockets.ConnectionClosed:
            pass

    await asyncio.wait_for(read(), scaled(within))
    return messages


def close_code(ws: ClientConnection) -> int | None:
    """The close code the client received from the server (None: no close frame came)."""
    rcvd = ws.protocol.close_rcvd
    return None if rcvd is None else rcvd.code


def small_socket(server: RunningServer, rcvbuf: int = 4096) -> socket.socket:
    """A TCP socket connected to ``server`` with a small receive buffer.

    With it, a client that stops reading stalls the server's writes after a few
    kilobytes instead of the megabytes the kernel would otherwise buffer.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.connect((server.host, server.port))
    sock.setblocking(False)
    return sock


def registries_empty(hub: Hub) -> bool:
    """True when the hub holds no connection, channel member or user, and nothing else of one.

    Also checks the hub's private books (heartbeats, expiries, broker subscriptions other
    than the broadcast channel), where a leaked connection would show too.
    """
    return (
        hub.connection_count == 0
        and hub.channel_count == 0
        and not hub.registry.users
        and not hub.lifecycle.heartbeats
        and not hub.lifecycle.expiring
        and hub.membership.subscribed <= {BROADCAST_CHANNEL}
    )


def frame_numbers(messages: list[str | bytes], channel: str) -> list[int]:
    """The ``data["n"]`` of every publication on ``channel`` in raw protocol messages."""
    numbers = []
    for message in messages:
        assert isinstance(message, str)
        for line in message.split("\n"):
            frame = orjson.loads(line)
            if frame.get("op") == "message" and frame["channel"] == channel:
                numbers.append(frame["data"]["n"])
    return numbers
