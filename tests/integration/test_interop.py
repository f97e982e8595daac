"""Interop: every accept names an offered subprotocol, so real clients see the close codes.

Browsers, Node's WebSocket and Python's websockets fail a connection (1006, or an
InvalidHandshake) when the handshake answer lacks the subprotocol they offered; a
refusal (4001, 4003, 1013) must therefore still accept with one. Also here: app pings
only for clients that negotiated ``wshub.v1.*`` and the unpacked JSON subprotocol.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
import websockets
from fastapi import FastAPI, WebSocket

from tests.conftest import make_app
from tests.redis_support import missing_tool
from wshub import Hub, Namespace, mount
from wshub.testing import RunningServer

from .support import close_code, connect, drop_clients, scaled  # noqa: F401  (fixture)

pytestmark = pytest.mark.anyio

JSON = "wshub.v1.json"
UNPACKED = "wshub.v1.json.unpacked"
SECRET = "interop-secret-of-at-least-32-bytes!"
NODE_SCRIPT = Path(__file__).parent.parent / "js" / "interop_close.mjs"
Serve = Callable[..., RunningServer]


async def ended(ws: Any, within: float = 5.0) -> tuple[int | None, list[str | bytes]]:
    """Read until the server closes; the close code and what came before it."""
    received: list[str | bytes] = []

    async def drain() -> None:
        try:
            while True:
                received.append(await ws.recv())
        except websockets.ConnectionClosed:
            pass

    await asyncio.wait_for(drain(), scaled(within))
    return close_code(ws), received


def library_app() -> tuple[FastAPI, Hub]:
    """The test app plus a library-mode route that speaks the subprotocol ``chat.v1``."""
    app, hub = make_app()

    @app.websocket("/ws/typed")
    async def typed(ws: WebSocket) -> None:
        async with hub.connect(ws, subprotocols=["chat.v1"]) as conn:
            conn.send({"subprotocol": ws.scope.get("subprotocols")})
            async for _ in conn.iter_json():
                pass

    return app, hub


def auth_server(serve: Serve, **settings: Any) -> RunningServer:
    hub = Hub(jwt_secret=SECRET, **settings)
    app = FastAPI(lifespan=hub.lifespan)
    mount(app, hub, "/ws")
    return serve(app, settings=hub.settings)


# -- refusals name the offered subprotocol ------------------------------------------------------


async def test_foreign_origin_gets_4003_with_the_offered_subprotocol(hub_server) -> None:
    server, _ = hub_server()
    ws = await connect(server.ws_url(), subprotocols=[JSON], origin="http://evil.example")
    assert ws.subprotocol == JSON
    code, _ = await ended(ws)
    assert code == 4003 and ws.close_reason == "origin not allowed"


async def test_foreign_origin_with_a_foreign_subprotocol_still_sees_4003(hub_server) -> None:
    """The refused socket carries nothing but the close: the client's own offer is named."""
    server, _ = hub_server()
    ws = await connect(server.ws_url(), subprotocols=["graphql-ws"], origin="http://evil.example")
    assert ws.subprotocol == "graphql-ws"
    assert (await ended(ws))[0] == 4003


async def test_bad_token_gets_4001_with_the_offered_subprotocol(serve: Serve) -> None:
    server = auth_server(serve)
    ws = await connect(server.ws_url("/ws?token=garbage"), subprotocols=[UNPACKED])
    assert ws.subprotocol == UNPACKED
    code, _ = await ended(ws)
    assert code == 4001


async def test_missing_connect_frame_gets_4001_with_the_offered_subprotocol(serve: Serve) -> None:
    server = auth_server(serve, auth_timeout=0.2)
    ws = await connect(server.ws_url(), subprotocols=[JSON])
    assert ws.subprotocol == JSON
    code, _ = await ended(ws)
    assert code == 4001 and ws.close_reason == "authentication timeout"


async def test_connection_limit_gets_1013_with_the_offered_subprotocol(hub_server) -> None:
    server, _ = hub_server(max_connections=1)
    first = await connect(server.ws_url(), subprotocols=[JSON])
    await first.recv()  # welcome
    second = await connect(server.ws_url(), subprotocols=["wshub.v1.msgpack"])
    assert second.subprotocol == "wshub.v1.msgpack"
    assert (await ended(second))[0] == 1013


async def test_an_offer_of_only_unknown_subprotocols_is_closed_4002(hub_server) -> None:
    """Not a silent accept without a subprotocol (1006 in browsers): a reportable close."""
    server, hub = hub_server()
    ws = await connect(server.ws_url(), subprotocols=["mqtt", "graphql-ws"])
    assert ws.subprotocol == "mqtt"
    code, received = await ended(ws)
    assert code == 4002 and received == []
    assert ws.close_reason == (
        "unsupported subprotocol: offer one of wshub.v1.json, wshub.v1.json.unpacked, "
        "wshub.v1.msgpack"
    )
    assert hub.connection_count == 0


async def test_library_mode_accepts_the_subprotocols_it_declares(serve: Serve) -> None:
    app, hub = library_app()
    server = serve(app, settings=hub.settings)
    ws = await connect(server.ws_url("/ws/typed"), subprotocols=["other", "chat.v1"])
    assert ws.subprotocol == "chat.v1"
    assert orjson.loads(await ws.recv()) == {"subprotocol": ["other", "chat.v1"]}
    await ws.close()
    wrong = await connect(server.ws_url("/ws/typed"), subprotocols=[JSON])
    assert wrong.subprotocol == JSON
    code, _ = await ended(wrong)
    assert code == 4002 and wrong.close_reason == "unsupported subprotocol: offer one of chat.v1"
    # By default a library-mode route accepts none: the seed chat refuses wshub.v1.json.
    chat = await connect(server.ws_url("/ws/chat"), subprotocols=[JSON])
    assert (await ended(chat))[0] == 4002
    plain = await connect(server.ws_url("/ws/chat"))
    assert plain.subprotocol is None
    await plain.send('{"text":"hi"}')
    assert orjson.loads(await plain.recv()) == {"user": "anon", "text": "hi"}


# -- heartbeats: app pings only with wshub.v1.* -------------------------------------------------


async def test_a_client_without_subprotocol_gets_no_app_pings_and_stays(hub_server) -> None:
    """websocat, python -m websockets: never answer {"op":"ping"}; protocol pings keep them."""
    server, hub = hub_server(ping_interval=0.5, pong_timeout=0.5)
    ws = await connect(server.ws_url())  # websockets answers protocol pings by itself
    assert ws.subprotocol is None
    assert orjson.loads(await ws.recv())["op"] == "welcome"
    with pytest.raises(TimeoutError):
        frame = await asyncio.wait_for(ws.recv(), scaled(3.0))  # six ping intervals
        pytest.fail(f"received {frame!r}")
    await ws.send('{"op":"subscribe","id":1,"channel":"room"}')
    assert orjson.loads(await ws.recv()) == {"id": 1, "result": {}}
    assert ws.protocol.close_rcvd is None and hub.connection_count == 1


async def test_a_wshub_json_client_that_never_pongs_gets_4009(hub_server) -> None:
    server, _ = hub_server(ping_interval=0.5, pong_timeout=0.5)
    ws = await connect(server.ws_url(), subprotocols=[JSON])
    started = time.monotonic()
    code, received = await ended(ws)
    assert code == 4009 and time.monotonic() - started >= 0.9
    assert [orjson.loads(m) for m in received[1:]] == [{"op": "ping"}]


# -- packing and its opt-out ----------------------------------------------------------------------


async def subscribe_with_join(hub_server, subprotocol: str) -> list[str]:
    """The messages that bring the subscribe reply and the subscriber's own join frame."""
    server, _ = hub_server(namespaces={"chat": Namespace(join_leave=True), "*": Namespace()})
    ws = await connect(server.ws_url(), subprotocols=[subprotocol])
    await ws.recv()  # welcome
    await ws.send('{"op":"subscribe","id":1,"channel":"chat:lobby"}')
    messages: list[str] = []
    while not ('"join"' in "".join(messages) and '"result"' in "".join(messages)):
        message = await asyncio.wait_for(ws.recv(), scaled(3))
        assert isinstance(message, str)
        messages.append(message)
    return messages


async def test_json_packs_the_subscribe_reply_with_the_join(hub_server) -> None:
    """The surprise: one message, two frames; JSON.parse of the message fails."""
    [message] = await subscribe_with_join(hub_server, JSON)
    frames = [orjson.loads(line) for line in message.split("\n")]
    assert {"id": 1, "result": {}} in frames and [f.get("op") for f in frames].count("join") == 1
    with pytest.raises(json.JSONDecodeError):
        json.loads(message)


async def test_json_unpacked_sends_one_frame_per_message(hub_server) -> None:
    messages = await subscribe_with_join(hub_server, UNPACKED)
    frames = [json.loads(m) for m in messages]  # JSON.parse per message: no splitting
    assert len(frames) == 2 and {"id": 1, "result": {}} in frames
    assert [f.get("op") for f in frames].count("join") == 1


# -- Node's built-in WebSocket --------------------------------------------------------------------


def node_close(url: str, protocol: str, origin: str | None = None) -> dict[str, Any]:
    node = shutil.which("node")
    if node is None:
        missing_tool("needs node 20+ (apt-get install nodejs)")
    args = [node, "--experimental-websocket", "--no-warnings", str(NODE_SCRIPT), url, protocol]
    if origin is not None:
        args.append(origin)
    done = subprocess.run(args, capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


async def test_node_websocket_sees_4003_and_4001(serve: Serve) -> None:
    app, hub = make_app()
    server = serve(app, settings=hub.settings)
    refused = await asyncio.to_thread(node_close, server.ws_url(), JSON, "http://evil.example")
    assert refused == {
        "opened": True,
        "protocol": JSON,
        "code": 4003,
        "reason": "origin not allowed",
    }
    unknown = await asyncio.to_thread(node_close, server.ws_url(), "mqtt")
    assert unknown["code"] == 4002 and unknown["protocol"] == "mqtt"
    authed = auth_server(serve)
    unauthorized = await asyncio.to_thread(node_close, authed.ws_url("/ws?token=garbage"), JSON)
    assert unauthorized["opened"] and unauthorized["protocol"] == JSON
    assert unauthorized["code"] == 4001
