"""Typed namespaces and publish hooks, end to end on a real server.

``Namespace(model=...)`` validates at every entry point (protocol client, hub.publish,
HTTP API, Publisher) and publishes the model's JSON dump; ``@hub.on_publish`` hooks
change or refuse publications (``conn`` None for server code), keep one connection's
publishes in order however long they take, and what they return is what history keeps
and every subscriber gets.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import Callable
from typing import Annotated, Any

import httpx
import pytest
from fastapi import FastAPI
from pydantic import BaseModel, Field, StringConstraints

from tests.redis_support import RedisServer
from wshub import Hub, Namespace, PublishError, mount
from wshub.core.errors import RPCError
from wshub.hub.connection import Connection
from wshub.hub.permissions import InvalidPublication
from wshub.ops.api import add_api
from wshub.publisher import Publisher
from wshub.testing import RunningServer

from .wire import WireClient, bad_request, open_client

pytestmark = pytest.mark.anyio

API_KEY = "test-key-typed"
AUTH = {"Authorization": f"apikey {API_KEY}"}


class Point(BaseModel):
    """Coordinates: ``x`` required, the rest defaulted; strings of digits become ints."""

    x: int
    y: int = 0
    label: str = "pt"


class Note(BaseModel):
    """A note whose text is stripped and may not be empty."""

    text: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=50)]
    tags: list[str] = Field(default_factory=list)


class Recorder:
    """What the hooks saw: the connection (id, or None) of each hooked publication."""

    def __init__(self) -> None:
        self.conns: list[str | None] = []


def typed_app(broker: str | None = None, **settings: Any) -> tuple[FastAPI, Hub, Recorder]:
    """A hub with typed namespaces and hooks; /server-publish calls hub.publish."""
    hub = Hub(
        broker,
        namespaces={
            "pt": Namespace(model=Point, history_size=50, history_ttl=60),
            "note": Namespace(model=Note, history_size=50, history_ttl=60),
            "slow": Namespace(model=Note),
            "*": Namespace(),
        },
        api_key=API_KEY,
        **settings,
    )
    recorder = Recorder()

    @hub.on_publish("note")
    async def shout(conn: Connection | None, channel: str, data: dict[str, Any]) -> Any:
        recorder.conns.append(None if conn is None else conn.id)
        if data["text"] == "refuse":
            raise RPCError("no_refuse", "that word is not welcome")
        await asyncio.sleep(0)  # a hook may await (a database, say)
        return {**data, "text": data["text"].upper(), "by": "server" if conn is None else conn.id}

    @hub.on_publish("slow")
    async def dawdle(conn: Connection | None, channel: str, data: dict[str, Any]) -> Any:
        await asyncio.sleep(random.uniform(0, 0.004))
        return {**data, "seen": True}

    app = FastAPI(lifespan=hub.lifespan)
    mount(app, hub, "/ws")
    add_api(app, hub)

    @app.post("/server-publish")
    async def server_publish(body: dict[str, Any]) -> dict[str, Any]:
        try:
            result = await hub.publish(body["channel"], body["data"])
        except InvalidPublication as exc:
            return {"error": "invalid", "message": exc.message, "fields": exc.errors}
        except RPCError as exc:
            return {"error": exc.code, "message": exc.message}
        except PublishError as exc:  # pragma: no cover - not expected here
            return {"error": "publish", "message": str(exc)}
        return {"offset": result.offset}

    return app, hub, recorder


@pytest.fixture
def typed(serve: Callable[..., RunningServer]) -> tuple[RunningServer, Hub, Recorder]:
    app, hub, recorder = typed_app()
    return serve(app, settings=hub.settings), hub, recorder


async def server_publish(server: RunningServer, channel: str, data: object) -> dict[str, Any]:
    async with httpx.AsyncClient(trust_env=False) as http:
        response = await http.post(
            server.http_url("/server-publish"), json={"channel": channel, "data": data}
        )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def api_publish(server: RunningServer, channel: str, data: object) -> httpx.Response:
    async with httpx.AsyncClient(trust_env=False) as http:
        return await http.post(
            server.http_url("/api/publish"), json={"channel": channel, "data": data}, headers=AUTH
        )


async def subscribe(client: WireClient, channel: str, request_id: object = "sub") -> None:
    """Subscribe, asserting success (with or without history)."""
    reply = await client.request({"op": "subscribe", "id": request_id, "channel": channel})
    assert "result" in reply, reply


async def history_data(client: WireClient, channel: str) -> list[Any]:
    reply = await client.request({"op": "history", "id": "h", "channel": channel})
    return [m["data"] for m in reply["result"]["messages"]]


# -- validation -------------------------------------------------------------------------


async def test_a_client_publish_that_does_not_fit_the_model_is_refused_naming_the_field(
    typed: tuple[RunningServer, Hub, Recorder],
) -> None:
    """bad_request names the field; nothing reaches subscribers or history."""
    server, _, _ = typed
    async with open_client(server) as sub, open_client(server) as pub:
        await subscribe(sub, "pt:a")
        reply = await pub.publish("pt:a", {"y": 1}, "p1")
        message = bad_request(reply, "p1")
        assert "x" in message and "Field required" in message and "Point" in message
        reply = await pub.publish("pt:a", {"x": "three"}, "p2")
        assert "x: Input should be a valid integer" in bad_request(reply, "p2")
        reply = await pub.publish("note:a", {"text": "   "}, "p3")
        assert "text: String should have at least 1 character" in bad_request(reply, "p3")
        reply = await pub.publish("pt:a", [1, 2], "p4")
        assert "Point" in bad_request(reply, "p4")
        # Without an id, the refusal is an error frame without id.
        await pub.send({"op": "publish", "channel": "pt:a", "data": {"x": None}})
        assert "x" in bad_request(await pub.next())
        assert (await pub.publish("pt:a", {"x": 1}, "ok"))["result"] == {"offset": 1}
        [only] = await sub.messages("pt:a", 1)
        assert only["data"] == {"x": 1, "y": 0, "label": "pt"}
        assert await history_data(sub, "pt:a") == [{"x": 1, "y": 0, "label": "pt"}]


async def test_a_client_publish_is_normalised_defaults_filled_and_types_coerced(
    typed: tuple[RunningServer, Hub, Recorder],
) -> None:
    """What subscribers and history get is ``model_dump(mode="json")``."""
    server, _, _ = typed
    async with open_client(server) as sub, open_client(server, msgpack_=True) as pub:
        await subscribe(sub, "pt:n")
        assert (await pub.publish("pt:n", {"x": "7", "extra": "dropped"}))["result"] == {
            "offset": 1
        }
        [message] = await sub.messages("pt:n", 1)
        assert message["data"] == {"x": 7, "y": 0, "label": "pt"}
        assert message["from"] == pub.id
        assert await history_data(sub, "pt:n") == [{"x": 7, "y": 0, "label": "pt"}]
        # Untyped namespaces are untouched.
        await subscribe(sub, "free:n", "s2")
        await pub.publish("free:n", {"x": "7"})
        [free] = await sub.messages("free:n", 1)
        assert free["data"] == {"x": "7"}


async def test_hub_publish_validates_and_normalises(
    typed: tuple[RunningServer, Hub, Recorder],
) -> None:
    """hub.publish raises InvalidPublication (a PublishError) naming the field."""
    server, _, _ = typed
    async with open_client(server) as sub:
        await subscribe(sub, "pt:s")
        refused = await server_publish(server, "pt:s", {"x": [1]})
        assert refused["error"] == "invalid"
        assert refused["message"].startswith("invalid data for 'pt:s' (Point): x: ")
        assert refused["fields"][0]["loc"] == ["x"]
        assert await server_publish(server, "pt:s", {"x": 2.0, "y": "5"}) == {"offset": 1}
        [message] = await sub.messages("pt:s", 1)
        assert message["data"] == {"x": 2, "y": 5, "label": "pt"}
        assert "from" not in message


async def test_the_http_api_validates_with_the_same_message(
    typed: tuple[RunningServer, Hub, Recorder],
) -> None:
    """POST /api/publish: 400 bad_request with the message a client gets; valid data normalised."""
    server, _, _ = typed
    async with open_client(server) as sub:
        await subscribe(sub, "pt:h")
        response = await api_publish(server, "pt:h", {"label": "no x"})
        assert response.status_code == 400
        detail = response.json()["detail"]
        assert detail["code"] == "bad_request"
        client_reply = await sub.publish("pt:h", {"label": "no x"}, "c")
        assert detail["message"] == bad_request(client_reply, "c")
        assert "x: Field required" in detail["message"]
        response = await api_publish(server, "pt:h", {"x": "4"})
        assert response.status_code == 200 and response.json()["offset"] == 1
        [message] = await sub.messages("pt:h", 1)
        assert message["data"] == {"x": 4, "y": 0, "label": "pt"}
        # /api/broadcast goes through hub.publish too.
        async with httpx.AsyncClient(trust_env=False) as http:
            response = await http.post(
                server.http_url("/api/broadcast"),
                json={"channels": ["pt:h"], "data": {"y": 1}},
                headers=AUTH,
            )
        assert response.status_code == 400
        assert "x: Field required" in response.json()["detail"]["message"]


async def test_publisher_validates_with_the_hubs_namespaces(
    serve: Callable[..., RunningServer], redis_server: RedisServer, prefix: str
) -> None:
    """Publisher(namespaces=...) refuses bad data before Redis and sends the dump; hubs
    trust what arrives from Redis (a Publisher without namespaces is not re-validated)."""
    app, hub, _ = typed_app(redis_server.url, redis_prefix=prefix)
    server = serve(app, settings=hub.settings)
    namespaces = hub.permissions.namespaces
    assert namespaces is not None
    async with open_client(server) as sub:
        await subscribe(sub, "pt:r")
        async with Publisher(redis_server.url, prefix=prefix, namespaces=namespaces) as pub:
            with pytest.raises(InvalidPublication, match=r"x: Field required") as caught:
                await pub.publish("pt:r", {"y": 2})
            assert isinstance(caught.value, PublishError)
            with pytest.raises(InvalidPublication, match=r"text: String should have at least"):
                pub.publish_sync("note:r", {"text": " "})
            assert await pub.publish("pt:r", {"x": "9"}) == 1
            assert pub.publish_sync("pt:r", {"x": 10, "label": "sync"}) == 1
        async with Publisher(redis_server.url, prefix=prefix) as unchecked:
            await unchecked.publish("pt:r", {"anything": "goes"})
        messages = await sub.messages("pt:r", 3)
        assert [m["data"] for m in messages] == [
            {"x": 9, "y": 0, "label": "pt"},
            {"x": 10, "y": 0, "label": "sync"},
            {"anything": "goes"},  # from Redis: trusted, not validated again
        ]


# -- hooks ------------------------------------------------------------------------------


async def test_on_publish_changes_what_history_and_every_subscriber_get(
    typed: tuple[RunningServer, Hub, Recorder],
) -> None:
    """The hook runs after validation; its result is published, kept and delivered."""
    server, _, recorder = typed
    async with open_client(server) as ada, open_client(server) as bob, open_client(server) as pub:
        await subscribe(ada, "note:x")
        await subscribe(bob, "note:x")
        assert (await pub.publish("note:x", {"text": "  hello  "}))["result"] == {"offset": 1}
        expected = {"text": "HELLO", "tags": [], "by": pub.id}
        for client in (ada, bob):
            [message] = await client.messages("note:x", 1)
            assert message["data"] == expected and message["from"] == pub.id
        assert await history_data(ada, "note:x") == [expected]
        async with open_client(server) as late:
            reply = await late.request(
                {"op": "subscribe", "id": 1, "channel": "note:x", "since": 0}
            )
            assert [m["data"] for m in reply["result"]["messages"]] == [expected]
    assert recorder.conns == [pub.id]


async def test_a_hook_raising_rpc_error_refuses_with_its_code(
    typed: tuple[RunningServer, Hub, Recorder],
) -> None:
    """RPCError(code, message) from a hook: the client gets that code; nothing is published."""
    server, hub, _ = typed
    async with open_client(server) as sub, open_client(server) as pub:
        await subscribe(sub, "note:r")
        reply = await pub.publish("note:r", {"text": " refuse "}, "r1")
        assert reply == {
            "id": "r1",
            "error": {"code": "no_refuse", "message": "that word is not welcome"},
        }
        assert await server_publish(server, "note:r", {"text": "refuse"}) == {
            "error": "no_refuse",
            "message": "that word is not welcome",
        }
        response = await api_publish(server, "note:r", {"text": "refuse"})
        assert response.status_code == 400
        assert response.json()["detail"] == {
            "code": "no_refuse",
            "message": "that word is not welcome",
        }
        await pub.publish("note:r", {"text": "fine"})
        [message] = await sub.messages("note:r", 1)
        assert message["data"]["text"] == "FINE" and message["offset"] == 1
    assert hub.stats.publications >= 1


async def test_hooks_get_no_connection_for_server_side_publishes(
    typed: tuple[RunningServer, Hub, Recorder],
) -> None:
    """hub.publish and the HTTP API run the hook with conn None."""
    server, _, recorder = typed
    async with open_client(server) as sub:
        await subscribe(sub, "note:s")
        assert await server_publish(server, "note:s", {"text": "from code"}) == {"offset": 1}
        assert (await api_publish(server, "note:s", {"text": "from http "})).status_code == 200
        messages = await sub.messages("note:s", 2)
    assert [m["data"] for m in messages] == [
        {"text": "FROM CODE", "tags": [], "by": "server"},
        {"text": "FROM HTTP", "tags": [], "by": "server"},
    ]
    assert recorder.conns == [None, None]


@pytest.mark.parametrize("with_ids", [True, False])
async def test_a_slow_async_hook_keeps_each_connections_order(
    typed: tuple[RunningServer, Hub, Recorder], with_ids: bool
) -> None:
    """50 publishes sent at once through a hook sleeping 0-4 ms arrive in the order sent."""
    server, _, _ = typed
    count = 50
    async with open_client(server) as sub, open_client(server) as pub:
        await subscribe(sub, "slow:o")
        for n in range(count):
            frame: dict[str, Any] = {"op": "publish", "channel": "slow:o", "data": {"text": f"{n}"}}
            if with_ids:
                frame["id"] = n
            await pub.send(frame)
        messages = await sub.messages("slow:o", count, within=20)
        assert [m["data"] for m in messages] == [
            {"text": str(n), "tags": [], "seen": True} for n in range(count)
        ]
        if with_ids:
            replies = [await pub.next() for _ in range(count)]
            assert [r["id"] for r in replies] == list(range(count))
            assert all(r["result"] == {} for r in replies)


async def test_hooks_for_the_wildcard_and_several_hooks_in_order(
    serve: Callable[..., RunningServer],
) -> None:
    """``"*"`` hooks cover unlisted namespaces; a namespace's hooks chain in order."""
    hub = Hub(namespaces={"a": Namespace(), "*": Namespace()})
    calls: list[str] = []

    @hub.on_publish("a")
    async def first(conn: Connection | None, channel: str, data: Any) -> Any:
        calls.append("first")
        return [*data, 1]

    @hub.on_publish("a")
    async def second(conn: Connection | None, channel: str, data: Any) -> Any:
        calls.append("second")
        return [*data, 2]

    @hub.on_publish("*")
    async def other(conn: Connection | None, channel: str, data: Any) -> Any:
        return {"wrapped": data, "channel": channel}

    with pytest.raises(ValueError, match="namespace name"):
        hub.on_publish("a:b")
    app = FastAPI(lifespan=hub.lifespan)
    mount(app, hub, "/ws")
    server = serve(app, settings=hub.settings)
    room = f"b:{uuid.uuid4().hex[:6]}"
    async with open_client(server) as client:
        await subscribe(client, "a:1")
        await subscribe(client, room, "s2")
        await client.publish("a:1", [0])
        await client.publish(room, 5)
        [a] = await client.messages("a:1", 1)
        [b] = await client.messages(room, 1)
    assert a["data"] == [0, 1, 2] and calls == ["first", "second"]
    assert b["data"] == {"wrapped": 5, "channel": room}
