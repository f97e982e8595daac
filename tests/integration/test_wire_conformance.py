"""The AsyncAPI document matches the server: real frames fit it, refused frames don't.

Every frame a `WireClient` exchanges during the session is recorded (see
`tests.integration.frame_log`, installed by tests/integration/conftest.py); the last
test here checks the sample recorded so far, and the session's end checks the rest.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import jwt
import pytest
from fastapi import FastAPI

from tests.integration import frame_log
from wshub import Connection, Hub, Namespace, RPCError, mount
from wshub.core.errors import ProtocolError
from wshub.core.protocol import parse_command
from wshub.testing import RunningServer

from .wire import open_client

pytestmark = pytest.mark.anyio

SECRET = "conformance-secret-of-at-least-32-bytes"


def conformance_app() -> tuple[FastAPI, Hub]:
    """History, presence and join/leave on chat:, auth with anonymous allowed, hooks, rpc."""
    hub = Hub(
        jwt_secret=SECRET,
        allow_anonymous=True,
        auth_timeout=0.3,  # a token-less client is welcomed as anonymous this soon
        namespaces={
            "chat": Namespace(history_size=10, history_ttl=60, presence=True, join_leave=True),
            "*": Namespace(),
        },
    )
    app = FastAPI(lifespan=hub.lifespan)
    mount(app, hub, "/ws")

    @hub.on_connect
    async def feeds(conn: Connection) -> None:
        if conn.user is not None:
            await conn.subscribe("chat:feed")

    @hub.rpc("shout")
    async def shout(conn: Connection, params: Any) -> dict[str, Any]:
        await hub.broadcast({"all": params})
        if conn.user is not None:
            await hub.send_to_user(conn.user, {"you": params})
        return {"shouted": params}

    @hub.rpc("refuse")
    async def refuse(conn: Connection) -> None:
        raise RPCError("too_far", "an application's own code")

    return app, hub


def token(user: str = "ada") -> str:
    return jwt.encode({"sub": user, "exp": int(time.time()) + 300}, SECRET, algorithm="HS256")


async def test_a_session_of_every_frame_kind_fits_the_document(
    serve: Callable[..., RunningServer],
) -> None:
    """Welcome (with hooks' subscriptions), replies of every op, errors, #all and #user:ada."""
    app, hub = conformance_app()
    server = serve(app, settings=hub.settings)
    url_token = {"additional_headers": {"Authorization": f"Bearer {token()}"}}
    async with open_client(server, **url_token) as ada, open_client(server) as anon:
        assert ada.welcome["subscribed"][0]["channel"] == "chat:feed"
        await anon.send({"op": "connect"})
        sub = await ada.request({"op": "subscribe", "id": 1, "channel": "chat:lobby"})
        assert sub["result"]["epoch"]
        await anon.request({"op": "subscribe", "id": "a", "channel": "chat:lobby", "epoch": None})
        await ada.request({"op": "publish", "id": 2, "channel": "chat:lobby", "data": {"t": 1}})
        key = {"idempotency_key": "k1"}
        await ada.request({"op": "publish", "id": 3, "channel": "news", "data": None, **key})
        await ada.request({"op": "history", "id": 4, "channel": "chat:lobby", "since": 0})
        await ada.request({"op": "history", "id": 5, "channel": "chat:lobby", "limit": 0})
        recovered = {"op": "subscribe", "id": 6, "channel": "chat:lobby", "since": 0}
        assert (await ada.request(recovered))["result"]["recovered"] is True
        await ada.request({"op": "presence", "id": 7, "channel": "chat:lobby"})
        await ada.request({"op": "refresh", "id": 8, "token": token()})
        await ada.request({"op": "connect", "id": 9})
        await ada.request({"op": "unsubscribe", "id": 10, "channel": "chat:lobby"})
        while (await anon.next()).get("op") != "leave":
            pass
        await ada.request({"op": "rpc", "id": 11, "method": "shout", "params": "hi"})
        channels = set()
        while not {"#all", "#user:ada"} <= channels:
            frame = await ada.next()
            if frame.get("op") == "message":
                channels.add(frame["channel"])
        assert (await ada.request({"op": "rpc", "id": 12, "method": "nope"}))["error"][
            "code"
        ] == "not_found"
        assert (await ada.request({"op": "rpc", "id": 13, "method": "refuse"}))["error"][
            "code"
        ] == "too_far"
        await ada.request({"op": "history", "id": 14, "channel": "news"})  # bad_request
        await ada.send({"op": "pong"})
        await ada.request({"op": "subscribe", "id": 15, "channel": "x", "since": None})
    names = {name for name, _ in frame_log.SAMPLES}
    expected = {"welcome", "message", "join", "leave", "error", "connect", "subscribe"}
    expected |= {"subscribeReply", "publishReply", "historyReply", "presenceReply", "pong"}
    expected |= {"refreshReply", "connectReply", "unsubscribeReply", "rpc"}
    assert expected <= names, expected - names
    assert frame_log.problems() == []


def test_the_document_refuses_what_the_server_refuses() -> None:
    """1.0 ids and offsets, since without id, unknown error codes; null ids are fine."""
    cases: list[tuple[dict[str, Any], bool]] = [
        ({"op": "publish", "id": None, "channel": "x", "data": 1}, True),
        ({"op": "publish", "id": 1.0, "channel": "x", "data": 1}, False),
        ({"op": "publish", "id": True, "channel": "x", "data": 1}, False),
        ({"op": "publish", "id": "x" * 65, "channel": "x", "data": 1}, False),
        ({"op": "publish", "channel": "x", "data": 1, "idempotency_key": ""}, False),
        ({"op": "subscribe", "channel": "x", "since": 3}, False),
        ({"op": "subscribe", "id": None, "channel": "x", "since": 3}, False),
        ({"op": "subscribe", "id": 1, "channel": "x", "since": 3}, True),
        ({"op": "subscribe", "channel": "x", "since": None}, True),
        ({"op": "subscribe", "id": 1, "channel": "x", "since": 1.0}, False),
        ({"op": "history", "id": 1, "channel": "x", "limit": -1}, False),
        ({"op": "subscribe", "id": 1, "channel": "#all"}, False),
    ]
    for frame, ok in cases:
        fits = frame_log.validate(str(frame["op"]), frame) == []
        try:
            command = parse_command(frame)
            accepted = not (command.since is not None and command.id is None)  # the endpoint's
        except ProtocolError:
            accepted = False
        assert (fits, accepted) == (ok, ok), frame
    server_frames = [
        ("message", {"op": "message", "channel": "#all", "data": 1}, True),
        ("message", {"op": "message", "channel": "#user:ada", "data": 1}, True),
        ("message", {"op": "message", "channel": "#nope", "data": 1}, False),
        ("error", {"error": {"code": "too_far", "message": "app"}}, True),
        ("error", {"error": {"code": "Too Far", "message": "not a code"}}, False),
        ("gap", {"op": "gap", "channel": "chat:lobby", "epoch": "9a1b2c3d", "offset": 0}, True),
    ]
    for name, frame, ok in server_frames:
        assert (frame_log.validate(name, frame) == []) is ok, frame


def test_every_frame_recorded_so_far_fits_the_document() -> None:
    """What the integration tests before this one exchanged (the session's end checks all)."""
    assert frame_log.problems() == []
