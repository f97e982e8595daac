"""The demo app: the seed tutorial's chat at /ws/chat, the protocol endpoint at /ws, a page at /.

Run it with ``make run`` or ``wshub serve wshub.demo:app``.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from importlib.resources import files
from typing import Annotated, Any

from fastapi import Depends, FastAPI, WebSocket
from fastapi.responses import HTMLResponse

from wshub.core.errors import BrokerUnavailable, CloseCode, PublishError
from wshub.hub.connection import Connection
from wshub.hub.facade import Hub
from wshub.hub.permissions import Namespace
from wshub.ops.api import add_api
from wshub.ops.asyncapi import add_asyncapi
from wshub.ops.metrics import add_metrics
from wshub.server.auth import Identity
from wshub.server.fastapi import add_health_routes, mount

logger = logging.getLogger("wshub.demo")

# chat:<room> keeps 100 messages for 5 minutes (recovery on reconnect) and shows
# who is there; every other channel is open, without history or presence.
hub = Hub(
    namespaces={
        "chat": Namespace(history_size=100, history_ttl=300, presence=True, join_leave=True),
        "*": Namespace(),
    }
)
app = FastAPI(title="wshub demo", lifespan=hub.lifespan)
mount(app, hub, "/ws")
add_health_routes(app, hub)
add_metrics(app, hub)  # /metrics
add_asyncapi(app, "/ws")  # /asyncapi.json
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
            except BrokerUnavailable:
                # The seed's wire format has no error frame; the broker logs the outage.
                continue
            except PublishError:  # parsed, but JSON cannot carry it back: too deep
                _refuse(conn, "message nested too deeply")
                break


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
        "stats": {  # the plain counters (HubStats also holds histograms)
            field.name: value
            for field in dataclasses.fields(hub.stats)
            if isinstance(value := getattr(hub.stats, field.name), int)
        },
    }
