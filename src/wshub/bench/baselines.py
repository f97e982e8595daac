"""Baseline servers that ``wshub bench compare`` measures wshub against.

- `seed_app`: the seed tutorial's ConnectionManager, as printed: a list, and
  ``await send_json`` one client after another;
- `seed_once_app`: the same manager encoding each message once (``send_text``);
- `bare_app`: an endpoint that only accepts and waits (memory per connection);
- `socketio_app`: python-socketio broadcasting to a room (one task per recipient),
  optionally on its Redis manager;
- `serve_websockets`: a raw ``websockets`` server using ``websockets.broadcast()``,
  the practical ceiling for one Python process writing one frame per delivery.

They speak the seed chat's wire format (``{"user","text"}`` in and out) except
socket.io (its own framing) and the raw server (echoes the text to everyone).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from fastapi import FastAPI, WebSocket, WebSocketDisconnect


def _seed_app(encode_once: bool) -> FastAPI:
    app = FastAPI()
    active: list[WebSocket] = []

    async def broadcast(message: dict[str, Any]) -> None:
        dead = []
        text = json.dumps(message, separators=(",", ":"), ensure_ascii=False)
        for ws in active:
            try:
                if encode_once:
                    await ws.send_text(text)
                else:
                    await ws.send_json(message)
            except Exception:
                dead.append(ws)
        for ws in dead:
            if ws in active:
                active.remove(ws)

    @app.websocket("/ws/chat")
    async def chat(ws: WebSocket) -> None:
        await ws.accept()
        active.append(ws)
        try:
            while True:
                data = await ws.receive_json()
                await broadcast({"user": data.get("user", "anon"), "text": data.get("text", "")})
        except WebSocketDisconnect:
            if ws in active:
                active.remove(ws)

    return app


seed_app = _seed_app(encode_once=False)
seed_once_app = _seed_app(encode_once=True)

bare_app = FastAPI()


@bare_app.websocket("/ws/chat")
async def _bare(ws: WebSocket) -> None:
    await ws.accept()
    try:
        while True:
            await ws.receive()
    except (WebSocketDisconnect, RuntimeError):
        return


def _socketio_app(redis_url: str | None) -> Any:
    import socketio

    # With Redis, python-socketio's own multi-process setup: AsyncRedisManager.
    manager = None if redis_url is None else socketio.AsyncRedisManager(redis_url)
    sio = socketio.AsyncServer(async_mode="asgi", cors_allowed_origins="*", client_manager=manager)

    @sio.event
    async def connect(sid: str, environ: dict[str, Any]) -> None:
        await sio.enter_room(sid, "bench")

    @sio.event
    async def publish(sid: str, data: Any) -> None:
        await sio.emit("message", data, room="bench")

    return socketio.ASGIApp(sio)


def socketio_app(redis_url: str | None = None) -> Any:
    """The python-socketio baseline as an ASGI app (built lazily: optional dependency).

    Args:
        redis_url: run on ``AsyncRedisManager`` over this Redis, as python-socketio
            does past one process; None: its in-process manager.
    """
    return _socketio_app(redis_url)


async def serve_websockets(host: str, port: int) -> None:
    """Run the raw websockets baseline until cancelled: every text is broadcast to all."""
    from websockets.asyncio.server import ServerConnection, broadcast, serve

    clients: set[ServerConnection] = set()

    async def handler(ws: ServerConnection) -> None:
        clients.add(ws)
        try:
            async for message in ws:
                broadcast(clients, message)
        finally:
            clients.discard(ws)

    async with serve(handler, host, port, compression=None, max_queue=None):
        await asyncio.Future()
