"""The demo app: the seed tutorial's chat at /ws/chat, the protocol endpoint at /ws, a page at /.

Run it with ``make run`` or ``wshub serve wshub.demo:app``.
"""

from __future__ import annotations

from importlib.resources import files
from typing import Annotated

from fastapi import Depends, FastAPI, WebSocket
from fastapi.responses import HTMLResponse

from wshub.auth import Identity
from wshub.errors import BrokerUnavailable, CloseCode
from wshub.fastapi import add_health_routes, mount
from wshub.hub import Hub
from wshub.permissions import Namespace

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


@app.websocket("/ws/chat")
async def chat(ws: WebSocket, who: Annotated[Identity, Depends(hub.authenticate)]) -> None:
    """The seed tutorial's chat, unchanged on the wire: ``{"user","text"}`` in and out."""
    async with hub.connect(ws, identity=who) as conn:
        await conn.subscribe("chat")
        async for data in conn.iter_json():
            if not isinstance(data, dict):
                conn.close(CloseCode.POLICY_VIOLATION, "expected a JSON object")
                break
            message = {"user": data.get("user", "anon"), "text": data.get("text", "")}
            try:
                await hub.publish("chat", message)
            except BrokerUnavailable:
                # The seed's wire format has no error frame; the broker logs the outage.
                continue


@app.get("/", response_class=HTMLResponse)
async def index() -> str:
    """The demo chat page."""
    return (files("wshub.demo") / "static" / "index.html").read_text()
