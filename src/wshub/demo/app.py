"""The demo app: the seed tutorial's chat at /ws/chat, the protocol endpoint at /ws, a page at /.

The page's rooms are ``chat:<room>`` channels, typed: a message is a `ChatMessage`
(``text`` of 1 to 500 characters, stripped), and the `stamp` hook sets ``user`` and
``ts`` on the server. Run it with ``make run`` or ``wshub serve wshub.demo:app``;
``wshub types --ts wshub.demo:app`` prints its types for TypeScript.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from importlib.resources import files
from typing import Annotated, Any

from fastapi import Depends, FastAPI, WebSocket
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, Field, StringConstraints

from wshub.core.errors import BrokerUnavailable, CloseCode, PublishError
from wshub.hub.connection import Connection
from wshub.hub.facade import Hub
from wshub.hub.permissions import Namespace
from wshub.ops.api import add_api
from wshub.ops.asyncapi import add_asyncapi
from wshub.ops.metrics import add_metrics
from wshub.server.auth import Identity
from wshub.server.fastapi import add_health_routes, mount
from wshub.server.sse import mount_sse

logger = logging.getLogger("wshub.demo")


class ChatMessage(BaseModel):
    """A message in a chat room: the client sends ``text``; the server stamps the rest."""

    text: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=500)]
    user: str | None = Field(None, max_length=100, description="the author (set by the server)")
    ts: float | None = Field(None, description="ms since the Unix epoch (set by the server)")


# chat:<room> carries ChatMessages, keeps 100 of them for 5 minutes (recovery on
# reconnect) and shows who is there; every other channel is open and untyped.
hub = Hub(
    namespaces={
        "chat": Namespace(
            history_size=100, history_ttl=300, presence=True, join_leave=True, model=ChatMessage
        ),
        "*": Namespace(),
    }
)
app = FastAPI(title="wshub demo", lifespan=hub.lifespan)
mount(app, hub, "/ws")
mount_sse(app, hub, "/sse")  # GET /sse?channel=..., POST /sse/publish
add_health_routes(app, hub)
add_metrics(app, hub)  # /metrics
add_asyncapi(app, "/ws", hub=hub)  # /asyncapi.json, with ChatMessage and the RPCs
add_api(app, hub)  # /api/publish, ... when WSHUB_API_KEY is set


@app.websocket("/ws/chat")
async def chat(ws: WebSocket, who: Annotated[Identity, Depends(hub.authenticate)]) -> None:
    """The seed tutorial's chat, unchanged on the wire: ``{"user","text"}`` in and out.

    As in the seed, ``user`` and ``text`` may be any JSON values. A message that is
    not a JSON object, or one nested too deeply to send back (past the encoder's 255
    levels), closes the connection with 1008 and one short log line: the seed's
    wire format has no error frame.
    """
    async with hub.connect(ws, identity=who) as conn:
        await conn.subscribe("chat")
        async for data in conn.iter_json():
            if not isinstance(data, dict):
                _refuse(conn, "expected a JSON object")
                break
            message = {"user": data.get("user", "anon"), "text": data.get("text", "")}
            try:
                await hub.publish("chat", message)
                _seed_published[0] += 1  # for the dashboard: "chat" keeps no history offsets
            except BrokerUnavailable:
                # The seed's wire format has no error frame; the broker logs the outage.
                continue
            except PublishError:  # parsed, but JSON cannot carry it back: too deep
                _refuse(conn, "message nested too deeply")
                break


@hub.on_publish("chat")
async def stamp(conn: Connection | None, channel: str, data: dict[str, Any]) -> dict[str, Any]:
    """Stamp ``user`` and ``ts`` on every chat message, on the server.

    A connection's message gets its authenticated user (anonymous ones keep the nick
    they sent, or "anon") and the server's clock; server code (``hub.publish``, the
    HTTP API) may set both itself. ``data`` is `ChatMessage`'s dump, validated already.
    """
    if conn is not None:
        data["user"] = conn.user or data.get("user") or "anon"
        data["ts"] = round(time.time() * 1000)
    else:
        data["user"] = data.get("user") or "server"
        data["ts"] = data.get("ts") or round(time.time() * 1000)
    return data


class Room(BaseModel):
    """A chat room with members."""

    name: str = Field(description="the room, without its 'chat:' prefix")
    members: int = Field(description="connections subscribed to it in this process")


class RoomsResult(BaseModel):
    """The active rooms, busiest first."""

    rooms: list[Room]


@hub.rpc("rooms")
async def rooms(conn: Connection) -> RoomsResult:
    """List the active chat rooms (with members in this process), busiest first."""
    active = [
        Room(name=channel.partition(":")[2], members=count)
        for channel, count in hub.channel_counts().items()
        if channel.startswith("chat:")
    ]
    active.sort(key=lambda room: (-room.members, room.name))
    return RoomsResult(rooms=active)


def _refuse(conn: Connection, reason: str) -> None:
    """Close a chat connection for a bad message with 1008, logging one short line."""
    logger.warning("chat connection %s: %s; closed with 1008", conn.id, reason)
    conn.close(CloseCode.POLICY_VIOLATION, reason)


@app.get("/", response_class=HTMLResponse)
async def index() -> str:
    """The demo chat page."""
    return (files("wshub.demo") / "static" / "index.html").read_text()


@app.get("/dashboard", response_class=HTMLResponse)
async def dashboard() -> str:
    """A live view of the hub: connections, subscriptions, traffic, drops, broker."""
    return (files("wshub.demo") / "static" / "dashboard.html").read_text()


#: Publications of the seed chat (channel "chat", no history, so no offsets to read).
_seed_published = [0]
#: Rows of the dashboard's tables.
_TOP = 8


def _published(channel: str) -> int | None:
    """Publications to ``channel`` so far, where the process knows: None where it doesn't.

    Channels with history carry offsets, and the hub remembers the last one delivered
    (read here, no I/O); the seed chat is counted by its endpoint. Other channels keep
    no count, so the dashboard shows their subscribers only.
    """
    if channel == "chat":
        return _seed_published[0]
    positions = getattr(getattr(hub, "delivery", None), "positions", None)
    if isinstance(positions, dict):
        last = positions.get(channel)
        return last if isinstance(last, int) else None
    return None


def _busiest_channels() -> list[dict[str, Any]]:
    """The channels with the most local subscribers, with their publication counters."""
    counts = sorted(hub.channel_counts().items(), key=lambda item: (-item[1], item[0]))
    return [
        {"channel": channel, "subscribers": members, "published": _published(channel)}
        for channel, members in counts[:_TOP]
    ]


def _slowest_connections(connections: list[Connection]) -> list[dict[str, Any]]:
    """The connections with the deepest send queues (frames and bytes waiting)."""
    deepest = sorted(connections, key=lambda conn: (-len(conn.queue), -conn.queue.bytes))[:_TOP]
    return [
        {
            "id": conn.id,
            "user": conn.user,
            "queued": len(conn.queue),
            "queued_bytes": conn.queue.bytes,
            "dropped": conn.queue.dropped,
            "channels": len(conn.channels),
        }
        for conn in deepest
    ]


def _rpc_stats() -> dict[str, Any]:
    """RPC calls since start and their mean latency in ms (None before the first)."""
    stats = hub.stats
    calls = getattr(stats, "rpc_calls", 0)
    latency = getattr(stats, "rpc_latency", None)
    timed = latency.count if latency is not None else 0
    mean = latency.sum / timed * 1000 if latency is not None and timed else None
    return {"calls": calls, "latency_ms": mean}


@app.get("/dashboard/stats")
async def dashboard_stats() -> dict[str, Any]:
    """The dashboard's data: gauges now, and counters since start (the page takes rates)."""
    connections = hub.connections()
    return {
        "time": time.time(),
        "connections": hub.connection_count,
        "channels": hub.channel_count,
        "subscriptions": sum(len(conn.channels) for conn in connections),
        "drops": hub.stats.overflows
        + hub.stats.dropped
        + sum(conn.queue.dropped for conn in connections),
        "broker": hub.broker_state.value,
        "ready": hub.ready,
        "rpc": _rpc_stats(),
        "busiest_channels": _busiest_channels(),
        "slowest_connections": _slowest_connections(connections),
        "stats": {  # the plain counters (HubStats also holds histograms)
            field.name: value
            for field in dataclasses.fields(hub.stats)
            if isinstance(value := getattr(hub.stats, field.name), int)
        },
    }
