"""Traps of the FastAPI + uvicorn + websockets stack that wshub must keep users out of."""

from __future__ import annotations

import asyncio
import logging
import os
import struct

import pytest
from fastapi import FastAPI, WebSocket, WebSocketDisconnect

from wshub import Hub
from wshub.demo import app as demo_app
from wshub.demo import hub as demo_hub
from wshub.testing import wait_until

from .support import (
    close_code,
    connect,
    drain_until_closed,
    drop_clients,  # noqa: F401 (an autouse fixture)
    open_protocol,
    recv_frames,
    registries_empty,
)

pytestmark = pytest.mark.anyio


def traps_app(**settings: object) -> tuple[FastAPI, Hub]:
    """Library-mode endpoints that are slow, and one that closes with a long reason."""
    hub = Hub(**settings)
    app = FastAPI(lifespan=hub.lifespan)

    @app.websocket("/slow")
    async def slow(ws: WebSocket) -> None:
        async with hub.connect(ws) as conn:
            async for text in conn.iter_text():
                if text == "slow":
                    await asyncio.sleep(1.2)  # slow work between two reads
                conn.send_text(f"done {text}")

    @app.websocket("/seed-slow")
    async def seed_slow(ws: WebSocket) -> None:
        # The control: the same handler in the seed's style, reading the socket itself.
        await ws.accept()
        try:
            while True:
                text = await ws.receive_text()
                if text == "slow":
                    await asyncio.sleep(1.2)
                await ws.send_text(f"done {text}")
        except (WebSocketDisconnect, RuntimeError):
            pass  # uvicorn closed it while we slept

    @app.websocket("/lagging")
    async def lagging(ws: WebSocket) -> None:
        async with hub.connect(ws) as conn:
            async for _ in conn.iter_text():
                await asyncio.sleep(0.05)

    @app.websocket("/long-reason/{index}")
    async def long_reason(ws: WebSocket, index: int) -> None:
        async with hub.connect(ws) as conn:
            conn.close(4000, LONG_REASONS[index])

    return app, hub


LONG_REASONS = ["é" * 200, "😀" * 40, "a" * 122 + "é", "z" * 500]


async def test_slow_library_handler_is_not_killed_by_protocol_ping_timeout(serve) -> None:
    """Slow work between reads does not stop pongs being read: uvicorn's keepalive holds."""
    app, hub = traps_app(ws_ping_interval=0.2, ws_ping_timeout=0.5)
    server = serve(app, settings=hub.settings)
    ours = await connect(server.ws_url("/slow"))
    seed = await connect(server.ws_url("/seed-slow"))
    for ws in (ours, seed):
        await ws.send("slow")
        await ws.send("fast")  # sits unread while the handler works
    # The seed-style handler leaves the socket unread, so pongs are not seen: 1011.
    await drain_until_closed(seed, within=3)
    assert close_code(seed) == 1011 and seed.close_reason == "keepalive ping timeout"
    assert await asyncio.wait_for(ours.recv(), 3) == "done slow"
    assert await asyncio.wait_for(ours.recv(), 3) == "done fast"
    await ours.send("again")
    assert await asyncio.wait_for(ours.recv(), 3) == "done again"
    assert ours.protocol.close_rcvd is None
    await ours.close()
    await wait_until(lambda: registries_empty(hub))


async def test_client_outrunning_a_library_handler_is_closed_4029(serve) -> None:
    """A client flooding faster than its handler consumes is closed with 4029, not buffered."""
    app, hub = traps_app(max_inbound_messages=5)
    server = serve(app, settings=hub.settings)
    ws = await connect(server.ws_url("/lagging"))
    for i in range(50):
        await ws.send(f"flood {i}")
    await drain_until_closed(ws)
    assert close_code(ws) == 4029
    assert ws.close_reason == "too many frames: the server is behind"
    await wait_until(lambda: registries_empty(hub))


async def test_seed_chat_never_receives_app_pings(hub_server) -> None:
    """{"op":"ping"} goes to protocol clients only; the seed chat sees nothing but chat."""
    server, hub = hub_server(ping_interval=0.02, pong_timeout=1)
    protocol, _ = await open_protocol(server, subprotocols=["wshub.v1.json"])
    chat = await connect(server.ws_url("/ws/chat"))
    await wait_until(lambda: len(hub.subscribers("chat")) == 1)
    await chat.send('{"text":"first"}')
    pings = 0
    while pings < 10:  # ten heartbeat intervals go by
        for frame in await recv_frames(protocol):
            if frame == {"op": "ping"}:
                pings += 1
                await protocol.send('{"op":"pong"}')
    await chat.send('{"text":"second"}')
    received = [await asyncio.wait_for(chat.recv(), 3) for _ in range(2)]
    assert received == ['{"user":"anon","text":"first"}', '{"user":"anon","text":"second"}']
    await asyncio.gather(chat.close(), protocol.close())
    await wait_until(lambda: registries_empty(hub))


@pytest.mark.parametrize("path", ["/ws", "/ws/chat"])
async def test_message_over_64_kib_closes_1009(serve, path: str) -> None:
    """The default limit: 64 KiB goes through, one byte more closes 1009, on both endpoints."""
    server = serve(demo_app)
    ws = await connect(server.ws_url(path))
    if path == "/ws":
        await recv_frames(ws)  # welcome
    frame = '{"op":"publish","id":1,"channel":"big","data":"' if path == "/ws" else '{"text":"'
    fill = 64 * 1024 - len(frame) - 2
    await ws.send(frame + "x" * fill + '"}')  # exactly 64 KiB: accepted
    reply = await asyncio.wait_for(ws.recv(), 5)
    if path == "/ws":
        assert reply == '{"id":1,"result":{}}'
    else:
        assert reply == '{"user":"anon","text":"' + "x" * fill + '"}'
    await ws.send(frame + "x" * (fill + 1) + '"}')
    await drain_until_closed(ws)
    assert close_code(ws) == 1009
    await wait_until(lambda: registries_empty(demo_hub))


@pytest.mark.parametrize("path", ["/ws", "/ws/chat"])
async def test_oversized_frame_header_closes_1009_before_the_payload(serve, path: str) -> None:
    """A frame announcing 1 GiB is refused on its header: 1009 without waiting for the bytes."""
    server = serve(demo_app)
    ws = await connect(server.ws_url(path))
    # FIN + text, masked, 64-bit length of 1 GiB, a mask key, then only 3 bytes of payload.
    ws.transport.write(b"\x81\xff" + struct.pack("!Q", 1 << 30) + os.urandom(4) + b"abc")
    await drain_until_closed(ws, within=3)
    assert close_code(ws) == 1009
    await wait_until(lambda: registries_empty(demo_hub))


async def test_per_message_deflate_is_not_negotiated_by_default(serve) -> None:
    """A client offering permessage-deflate gets no compression from either endpoint."""
    server = serve(demo_app)
    for path in ("/ws", "/ws/chat"):
        ws = await connect(server.ws_url(path), compression="deflate")
        assert "Sec-WebSocket-Extensions" not in ws.response.headers
        assert ws.protocol.extensions == []
        await ws.close()
    await wait_until(lambda: registries_empty(demo_hub))


@pytest.mark.parametrize("index", range(len(LONG_REASONS)))
async def test_close_reason_over_123_bytes_is_cut_not_raised(serve, caplog, index: int) -> None:
    """conn.close() with a long (multi-byte) reason sends it cut to 123 bytes on a boundary."""
    app, hub = traps_app()
    server = serve(app, settings=hub.settings)
    caplog.set_level(logging.WARNING)
    ws = await connect(server.ws_url(f"/long-reason/{index}"))
    await drain_until_closed(ws)
    reason = LONG_REASONS[index]
    assert close_code(ws) == 4000
    assert ws.close_reason == reason.encode()[:123].decode(errors="ignore")
    assert reason.startswith(ws.close_reason) and len(ws.close_reason.encode()) >= 120
    await wait_until(lambda: registries_empty(hub))
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
