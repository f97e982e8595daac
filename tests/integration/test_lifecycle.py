"""Connection lifecycle against a real server: abrupt TCP loss, heartbeat timeout, handler errors.

Whatever way a connection ends, it leaves every registry (connections, channels,
users) and the other connections carry on.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import time

import orjson
import pytest
import websockets
from fastapi import FastAPI, WebSocket

from wshub import Hub, mount
from wshub.testing import wait_until

from .support import (
    NO_RATE_LIMIT,
    close_code,
    collect_messages,
    connect,
    drain_until_closed,
    drop_clients,  # noqa: F401 (an autouse fixture)
    open_protocol,
    publish_all,
    recv_frames,
    registries_empty,
    small_socket,
)

pytestmark = pytest.mark.anyio


def lifecycle_app(**settings: object) -> tuple[FastAPI, Hub]:
    """The protocol endpoint at /ws, and library-mode endpoints for users and failures.

    - ``/ws/user/{name}``: connects as user ``name``, joins "room" and "lobby",
      publishes each JSON message it receives to "room".
    - ``/ws/boom``: joins "room"; raises RuntimeError when it receives "boom".
    """
    hub = Hub(**settings)
    app = FastAPI(lifespan=hub.lifespan)
    mount(app, hub, "/ws")

    @app.websocket("/ws/user/{name}")
    async def user(ws: WebSocket, name: str) -> None:
        async with hub.connect(ws, user=name) as conn:
            await conn.subscribe("room")
            await conn.subscribe("lobby")
            async for data in conn.iter_json():
                await hub.publish("room", data)

    @app.websocket("/ws/boom")
    async def boom(ws: WebSocket) -> None:
        async with hub.connect(ws, user="bomber") as conn:
            await conn.subscribe("room")
            async for text in conn.iter_text():
                if text == "boom":
                    raise RuntimeError("user code failed")
                conn.send_text(f"ok {text}")

    return app, hub


def kill_transport(ws: websockets.ClientConnection, reset: bool) -> None:
    """Drop the client's TCP connection without a close frame: FIN, or RST with ``reset``."""
    if reset:
        sock = ws.transport.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    ws.transport.abort()


@pytest.mark.parametrize("reset", [False, True], ids=["fin", "rst"])
async def test_abrupt_tcp_close_removes_the_connection_from_every_registry(
    serve, reset: bool
) -> None:
    """Clients whose TCP connection vanishes without a close frame leave every registry."""
    app, hub = lifecycle_app()
    server = serve(app, settings=hub.settings)
    watcher, _ = await open_protocol(server, "room")
    protocol_clients = [await open_protocol(server, "room", "news", f"own{i}") for i in range(3)]
    users = [await connect(server.ws_url(f"/ws/user/{name}")) for name in ("ann", "ann", "bob")]
    await wait_until(lambda: len(hub.user_connections("ann")) == 2 and hub.user_connections("bob"))
    await wait_until(lambda: len(hub.subscribers("room")) == 7)
    # Some traffic in flight while the clients vanish.
    await users[0].send('{"n": 0}')
    for ws, _ in protocol_clients:
        kill_transport(ws, reset)
    for ws in users:
        kill_transport(ws, reset)
    await wait_until(lambda: hub.connection_count == 1, within=3)
    assert hub.user_connections("ann") == [] and hub.user_connections("bob") == []
    assert hub.channel_count == 1 and [c.id for c in hub.subscribers("room")] == [
        c.id for c in hub.connections()
    ]
    # The survivor still gets what is published after the others vanished.
    publisher, _ = await open_protocol(server)
    await publish_all(publisher, "room", [{"after": True}])
    received: list[object] = []
    while {"after": True} not in received:  # {"n": 0} may or may not have gone out first
        received += await collect_messages(watcher, "room", 1, within=3)
    await publisher.close()
    await watcher.close()
    await wait_until(lambda: registries_empty(hub))


async def test_stalled_client_reset_with_a_full_queue_is_removed(serve) -> None:
    """A client that stopped reading, with the server's writes blocked on it, can still vanish."""
    app, hub = lifecycle_app(queue_max_messages=20, overflow_policy="drop_oldest", **NO_RATE_LIMIT)
    server = serve(app, settings=hub.settings)
    stalled, welcome = await open_protocol(server, "room", sock=small_socket(server), max_queue=1)
    [conn] = hub.connections()
    publisher, _ = await open_protocol(server)
    pad = "x" * 8000
    n = 0
    while conn.queue.dropped == 0:  # until its queue is full and the writer is stuck
        assert n < 5000, "the queue never filled"
        await publish_all(publisher, "room", [{"n": i, "pad": pad} for i in range(n, n + 10)])
        n += 10
    kill_transport(stalled, reset=True)
    await wait_until(lambda: hub.connection_count == 1, within=3)
    assert conn.state.value == "closed" and hub.channel_count == 0
    await publisher.close()
    await wait_until(lambda: registries_empty(hub))


@pytest.mark.parametrize("reads", [True, False], ids=["reads", "half-open"])
async def test_client_that_never_pongs_is_closed_4009_within_the_heartbeat(
    hub_server, reads: bool
) -> None:
    """A client that never answers {"op":"ping"} is closed 4009 and removed in time.

    Half-open: the client reads nothing at all either (a peer that vanished without
    a FIN); the server must not wait for it to echo the close frame.
    """
    server, hub = hub_server(ping_interval=0.3, pong_timeout=0.3)
    ws, welcome = await open_protocol(server, "room", subprotocols=["wshub.v1.json"])
    opened = time.monotonic()
    assert welcome["ping"] == 0.3
    if not reads:
        ws.transport.pause_reading()
    # First ping after ping_interval, close after pong_timeout more, plus the hub's tick.
    await wait_until(lambda: registries_empty(hub), within=0.3 + 0.3 + 0.4)
    removed = time.monotonic() - opened
    assert removed > 0.3 + 0.3 - 0.1  # not before the pong was due
    if not reads:
        ws.transport.resume_reading()
    messages = await drain_until_closed(ws, within=3)
    assert close_code(ws) == 4009 and ws.close_reason == "heartbeat timeout"
    assert [orjson.loads(m) for m in messages] == [{"op": "ping"}]


async def test_client_that_answers_pings_stays_connected(hub_server) -> None:
    """A protocol client answering every ping stays connected over many heartbeat intervals."""
    server, hub = hub_server(ping_interval=0.3, pong_timeout=0.3)
    ws, welcome = await open_protocol(server, "room", subprotocols=["wshub.v1.json"])
    pings = 0
    while pings < 5:  # five intervals: 1.5 s, three times what a silent client survives
        for frame in await recv_frames(ws, within=1):
            assert frame == {"op": "ping"}
            pings += 1
            await ws.send('{"op":"pong"}')
    assert ws.protocol.close_rcvd is None
    [conn] = hub.connections()
    assert conn.id == welcome["client"] and conn.state.value == "open"
    await ws.close()
    await wait_until(lambda: registries_empty(hub))


async def test_exception_in_user_code_closes_1011_and_spares_the_others(serve) -> None:
    """A handler that raises closes its client with 1011; other connections carry on."""
    app, hub = lifecycle_app()
    server = serve(app, settings=hub.settings)
    bystander, _ = await open_protocol(server, "room")
    neighbour = await connect(server.ws_url("/ws/boom"))
    victim = await connect(server.ws_url("/ws/boom"))
    await victim.send("hello")
    assert await asyncio.wait_for(victim.recv(), 5) == "ok hello"
    await wait_until(lambda: len(hub.subscribers("room")) == 3)
    await victim.send("boom")
    await drain_until_closed(victim)
    assert close_code(victim) == 1011
    await wait_until(lambda: len(hub.subscribers("room")) == 2, within=2)
    assert len(hub.user_connections("bomber")) == 1
    # The others still talk and receive.
    await neighbour.send("still here")
    assert await asyncio.wait_for(neighbour.recv(), 5) == "ok still here"
    publisher, _ = await open_protocol(server)
    await publish_all(publisher, "room", [{"n": 1}])
    assert await collect_messages(bystander, "room", 1) == [{"n": 1}]
    assert await asyncio.wait_for(neighbour.recv(), 5) == '{"n":1}'
    await asyncio.gather(bystander.close(), neighbour.close(), publisher.close())
    await wait_until(lambda: registries_empty(hub))
