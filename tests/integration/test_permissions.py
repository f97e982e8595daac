"""Channel permissions against a real server: a denied operation answers `forbidden`, nothing more.

The server runs JWT auth with anonymous access allowed, so anonymous clients and users
ada and bob meet on one hub configured with namespaces and both hooks.
"""

import asyncio
import itertools
import time
from collections.abc import Callable
from typing import Any

import httpx
import jwt
import orjson
import pytest
import websockets
from fastapi import FastAPI
from websockets.asyncio.client import ClientConnection

from wshub import Hub, mount
from wshub.hub.permissions import Access, Namespace
from wshub.testing import TIME_SCALE, RunningServer, wait_until

pytestmark = pytest.mark.anyio

SECRET = "permissions-test-secret-long-enough-for-any-hmac-algorithm-0123456789"
Serve = Callable[..., RunningServer]
NAMESPACES = {
    "chat": Namespace(),
    "news": Namespace(publish=Access.NOBODY),
    "members": Namespace(subscribe=Access.AUTHENTICATED, publish=Access.AUTHENTICATED),
}


class Recorder:
    """The hooks: only ada may join `chat:staff`; nobody may publish ``{"text": "spam"}``."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    async def can_subscribe(self, user: str | None, channel: str) -> bool:
        self.calls.append(("subscribe", user, channel))
        await asyncio.sleep(0)  # a real hook would await a database
        return channel != "chat:staff" or user == "ada"

    async def can_publish(self, user: str | None, channel: str, data: object) -> bool:
        self.calls.append(("publish", user, channel, data))
        return data != {"text": "spam"}


def start(serve: Serve) -> tuple[RunningServer, Hub, Recorder]:
    """Serve /ws with NAMESPACES and the hooks, and ``POST /server-publish/{channel}``.

    The HTTP route publishes its JSON body with ``hub.publish``, as server code would.
    """
    hooks = Recorder()
    hub = Hub(
        jwt_secret=SECRET,
        allow_anonymous=True,
        namespaces=NAMESPACES,
        can_subscribe=hooks.can_subscribe,
        can_publish=hooks.can_publish,
    )
    app = FastAPI(lifespan=hub.lifespan)
    mount(app, hub, "/ws")

    @app.post("/server-publish/{channel}")
    async def server_publish(channel: str, data: dict[str, Any]) -> dict[str, bool]:
        await hub.publish(channel, data)
        return {"ok": True}

    return serve(app, settings=hub.settings), hub, hooks


async def server_publish(server: RunningServer, channel: str, data: dict[str, Any]) -> None:
    """Publish from server code (``hub.publish``), through the test app's HTTP route."""
    async with httpx.AsyncClient(trust_env=False) as client:
        response = await client.post(server.http_url(f"/server-publish/{channel}"), json=data)
    assert response.status_code == 200, response.text


class Client:
    """A protocol client that matches replies to requests and keeps publications aside."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.messages: list[dict[str, Any]] = []
        self._ids = itertools.count(1)

    async def frames(self) -> list[dict[str, Any]]:
        message = await asyncio.wait_for(self.ws.recv(), 5 * TIME_SCALE)
        assert isinstance(message, str)
        return [orjson.loads(line) for line in message.split("\n")]

    async def request(self, op: str, **fields: Any) -> dict[str, Any]:
        """Send a request; return its reply (publications arriving meanwhile are kept)."""
        request_id = next(self._ids)
        await self.ws.send(orjson.dumps({"op": op, "id": request_id, **fields}).decode())
        while True:
            for frame in await self.frames():
                if frame.get("id") == request_id:
                    return frame
                if frame.get("op") == "message":
                    self.messages.append(frame)

    async def ok(self, op: str, **fields: Any) -> dict[str, Any]:
        """A request that must succeed; return its result."""
        reply = await self.request(op, **fields)
        assert "result" in reply, reply
        result: dict[str, Any] = reply["result"]
        return result

    async def forbidden(self, op: str, **fields: Any) -> str:
        """A request that must be refused with `forbidden` under its own id; return the message."""
        reply = await self.request(op, **fields)
        assert set(reply) == {"id", "error"}, reply
        assert reply["error"]["code"] == "forbidden", reply
        message: str = reply["error"]["message"]
        return message

    async def next_message(self) -> dict[str, Any]:
        """The next publication received."""
        while not self.messages:
            self.messages += [f for f in await self.frames() if f.get("op") == "message"]
        return self.messages.pop(0)


async def open_client(server: RunningServer, user: str | None) -> Client:
    """Connect as ``user`` (a token in the query) or anonymously (a bare connect frame)."""
    url = server.ws_url("/ws")
    if user is not None:
        token = jwt.encode({"sub": user, "exp": int(time.time()) + 300}, SECRET, "HS256")
        url += f"?token={token}"
    ws = await websockets.connect(url, proxy=None, compression=None)
    if user is None:
        await ws.send('{"op":"connect"}')
    client = Client(ws)
    [welcome] = await client.frames()
    assert welcome["op"] == "welcome" and welcome["user"] == user
    return client


async def test_denied_subscribe_is_forbidden_and_the_connection_stays(serve: Serve) -> None:
    """An anonymous subscribe to an AUTHENTICATED namespace gets `forbidden`; the client goes on."""
    server, hub, _ = start(serve)
    anon = await open_client(server, None)
    async with anon.ws:
        assert "members:board" in await anon.forbidden("subscribe", channel="members:board")
        assert hub.subscribers("members:board") == []
        await anon.ok("subscribe", channel="chat:lobby")
        await anon.ok("publish", channel="chat:lobby", data={"n": 1})
        assert (await anon.next_message())["data"] == {"n": 1}
    await wait_until(lambda: hub.connection_count == 0 and hub.channel_count == 0)


async def test_denied_publish_is_forbidden_and_never_delivered(serve: Serve) -> None:
    """An anonymous publish to an AUTHENTICATED namespace is refused and reaches nobody."""
    server, hub, _ = start(serve)
    ada, anon = await open_client(server, "ada"), await open_client(server, None)
    async with ada.ws, anon.ws:
        await ada.ok("subscribe", channel="members:board")
        await anon.forbidden("publish", channel="members:board", data={"n": "denied"})
        await anon.ok("subscribe", channel="chat:lobby")  # still usable
        await ada.ok("publish", channel="members:board", data={"n": "allowed"})
        assert (await ada.next_message())["data"] == {"n": "allowed"}
        assert ada.messages == []


async def test_unknown_namespace_is_refused(serve: Serve) -> None:
    """With namespaces configured, channels outside them are refused, to users as well."""
    server, _, _ = start(serve)
    ada = await open_client(server, "ada")
    async with ada.ws:
        assert "unknown namespace 'typo'" in await ada.forbidden("subscribe", channel="typo:x")
        assert "unknown namespace ''" in await ada.forbidden("subscribe", channel="lobby")
        await ada.forbidden("publish", channel="typo:x", data=1)
        await ada.ok("subscribe", channel="chat:x")


async def test_nobody_namespace_refuses_clients_but_server_publishes_reach_subscribers(
    serve: Serve,
) -> None:
    """Access.NOBODY: client publishes are refused; `hub.publish` from server code is delivered."""
    server, _, _ = start(serve)
    ada, anon = await open_client(server, "ada"), await open_client(server, None)
    async with ada.ws, anon.ws:
        await anon.ok("subscribe", channel="news:today")
        await ada.ok("subscribe", channel="news:today")
        await ada.forbidden("publish", channel="news:today", data={"fake": True})
        await anon.forbidden("publish", channel="news:today", data={"fake": True})
        await server_publish(server, "news:today", {"headline": "real"})
        for client in (anon, ada):
            message = await client.next_message()
            assert message["channel"] == "news:today" and message["data"] == {"headline": "real"}
            assert client.messages == []


async def test_personal_channel_of_another_user_is_refused(serve: Serve) -> None:
    """`user:bob` is refused to ada and to anonymous clients; bob may read it but not publish."""
    server, _, _ = start(serve)
    ada, bob = await open_client(server, "ada"), await open_client(server, "bob")
    anon = await open_client(server, None)
    async with ada.ws, bob.ws, anon.ws:
        assert "personal" in await ada.forbidden("subscribe", channel="user:bob")
        await anon.forbidden("subscribe", channel="user:bob")
        await anon.forbidden("subscribe", channel="user:None")
        await bob.ok("subscribe", channel="user:bob")
        await bob.forbidden("publish", channel="user:bob", data={"self": "note"})
        await ada.forbidden("publish", channel="user:bob", data={"from": "ada"})
        await server_publish(server, "user:bob", {"for": "bob"})
        assert (await bob.next_message())["data"] == {"for": "bob"}
        await ada.ok("subscribe", channel="user:ada")  # own channel, after all that
        assert ada.messages == [] and anon.messages == []


async def test_hooks_decide_after_the_rules(serve: Serve) -> None:
    """`can_subscribe` / `can_publish` see user, channel and data; False answers `forbidden`."""
    server, _, hooks = start(serve)
    ada, bob = await open_client(server, "ada"), await open_client(server, "bob")
    async with ada.ws, bob.ws:
        await ada.ok("subscribe", channel="chat:staff")
        await bob.forbidden("subscribe", channel="chat:staff")
        await bob.forbidden("publish", channel="chat:staff", data={"text": "spam"})
        await bob.ok("publish", channel="chat:staff", data={"text": "hello"})
        assert (await ada.next_message())["data"] == {"text": "hello"}
        await bob.forbidden("publish", channel="news:x", data={"text": "hi"})  # rule first
    assert hooks.calls == [
        ("subscribe", "ada", "chat:staff"),
        ("subscribe", "bob", "chat:staff"),
        ("publish", "bob", "chat:staff", {"text": "spam"}),
        ("publish", "bob", "chat:staff", {"text": "hello"}),
    ]


async def test_pipelined_denials_keep_order_and_ids(serve: Serve) -> None:
    """Requests sent at once are answered in order, each denial under its own id."""
    server, _, _ = start(serve)
    anon = await open_client(server, None)
    async with anon.ws:
        frames = [
            {"op": "subscribe", "id": "a", "channel": "members:x"},
            {"op": "subscribe", "id": "b", "channel": "chat:x"},
            {"op": "publish", "id": "c", "channel": "news:x", "data": 1},
            {"op": "subscribe", "id": "d", "channel": "user:ada"},
        ]
        for frame in frames:
            await anon.ws.send(orjson.dumps(frame).decode())
        replies: list[dict[str, Any]] = []
        while len(replies) < len(frames):
            replies += await anon.frames()
        assert [r["id"] for r in replies] == ["a", "b", "c", "d"]
        assert [r.get("error", {}).get("code") for r in replies] == [
            "forbidden",
            None,
            "forbidden",
            "forbidden",
        ]
