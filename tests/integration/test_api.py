"""The HTTP server API under /api: the key, every endpoint, bad bodies, and two processes."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import jwt
import pytest
import redis.asyncio
from fastapi import FastAPI

from tests.redis_support import RedisServer
from wshub import Hub, mount
from wshub.hub.permissions import Namespace
from wshub.ops.api import add_api
from wshub.testing import TIME_SCALE, RunningServer, wait_until

from .processes import NO_RATE_LIMIT, hub_env, hub_processes, numsub, stop
from .recorders import ProtocolClient, closing, open_clients, wait_received
from .support import close_code, drain_until_closed, drop_clients
from .wire import open_client

__all__ = ["drop_clients"]

pytestmark = pytest.mark.anyio

KEY = "test-api-key-6f1d2c"
SECRET = "api-test-jwt-secret-0123456789abcdef"
GOOD = {"Authorization": f"apikey {KEY}"}

#: Every endpoint with a valid request: (method, path, JSON body or None).
ENDPOINTS: list[tuple[str, str, Any]] = [
    ("POST", "/api/publish", {"channel": "news", "data": {"n": 1}}),
    ("POST", "/api/broadcast", {"channels": ["news", "sport"], "data": 1}),
    ("GET", "/api/channels", None),
    ("GET", "/api/presence/chat:room", None),
    ("GET", "/api/history/chat:room", None),
    ("POST", "/api/disconnect", {"user": "ada"}),
]


def api_app(broker: str = "memory://", **settings: Any) -> tuple[FastAPI, Hub]:
    """The protocol endpoint and the API; ``chat:`` keeps history and presence."""
    namespaces = {
        "chat": Namespace(history_size=10, history_ttl=60, presence=True),
        "*": Namespace(),
    }
    hub = Hub(broker, namespaces=namespaces, **settings)
    app = FastAPI(lifespan=hub.lifespan)
    mount(app, hub, "/ws")
    add_api(app, hub)
    return app, hub


@pytest.fixture
def api_server(serve: Callable[..., RunningServer]) -> RunningServer:
    """A server with the API on (key `KEY`) and JWT auth that lets anonymous clients in."""
    app, hub = api_app(api_key=KEY, jwt_secret=SECRET, allow_anonymous=True)
    return serve(app, settings=hub.settings)


@pytest.fixture
async def http(api_server: RunningServer) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client on `api_server`."""
    base = api_server.http_url("")
    async with httpx.AsyncClient(base_url=base, trust_env=False, timeout=5 * TIME_SCALE) as c:
        yield c


def token(user: str) -> str:
    """A JWT for ``user`` signed with `SECRET`."""
    return jwt.encode({"sub": user}, SECRET, algorithm="HS256")


def user_url(server: RunningServer, user: str) -> str:
    """The /ws URL of ``server`` with a token for ``user`` in the query string."""
    return server.ws_url(f"/ws?token={token(user)}")


@pytest.mark.parametrize(("method", "path", "body"), ENDPOINTS)
@pytest.mark.parametrize(
    "authorization",
    [None, "apikey wrong-key", f"Bearer {KEY}", "apikey", f"apikey {KEY}x", f"{KEY}"],
)
async def test_every_endpoint_refuses_a_missing_or_wrong_key(
    http: httpx.AsyncClient, method: str, path: str, body: Any, authorization: str | None
) -> None:
    """No key, a wrong key or another scheme: 401 with the unauthorized code."""
    headers = {} if authorization is None else {"Authorization": authorization}
    response = await http.request(method, path, json=body, headers=headers)
    assert response.status_code == 401, response.text
    assert response.json() == {
        "detail": {"code": "unauthorized", "message": "missing or wrong API key"}
    }
    assert response.headers["www-authenticate"] == "apikey"


@pytest.mark.parametrize(("method", "path", "body"), ENDPOINTS)
async def test_every_endpoint_answers_the_right_key(
    http: httpx.AsyncClient, method: str, path: str, body: Any
) -> None:
    """With the key (scheme in any case), each endpoint answers 200 or 202."""
    headers = {"Authorization": f"ApiKey {KEY}"}
    response = await http.request(method, path, json=body, headers=headers)
    assert response.status_code in (200, 202), response.text


@pytest.mark.parametrize(
    ("path", "body", "where"),
    [
        ("/api/publish", {"channel": "news"}, ["body", "data"]),
        ("/api/publish", {"data": 1}, ["body", "channel"]),
        ("/api/publish", {"channel": "#all", "data": 1}, ["body", "channel"]),
        ("/api/publish", {"channel": "x" * 201, "data": 1}, ["body", "channel"]),
        ("/api/publish", [1, 2], ["body"]),
        ("/api/broadcast", {"channels": [], "data": 1}, ["body", "channels"]),
        ("/api/broadcast", {"channels": "news", "data": 1}, ["body", "channels"]),
        ("/api/broadcast", {"channels": ["ok", "bad channel"], "data": 1}, ["body", "channels", 1]),
        ("/api/disconnect", {"user": ""}, ["body", "user"]),
        ("/api/disconnect", {"user": "ada", "code": 1005}, ["body", "code"]),
        ("/api/disconnect", {"user": "ada", "reason": "é" * 62}, ["body", "reason"]),
    ],
)
async def test_bad_bodies_get_422_with_fastapi_detail(
    http: httpx.AsyncClient, path: str, body: Any, where: list[Any]
) -> None:
    """A body that breaks the model: 422, ``detail`` naming the field."""
    response = await http.post(path, json=body, headers=GOOD)
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, list) and detail, detail
    assert detail[0]["loc"] == where, detail


async def test_a_body_that_is_not_json_gets_422(http: httpx.AsyncClient) -> None:
    """Invalid JSON is refused like any bad body."""
    headers = {**GOOD, "Content-Type": "application/json"}
    response = await http.post("/api/publish", content=b"{nope", headers=headers)
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["type"] == "json_invalid"


async def test_bad_query_parameters_get_422(http: httpx.AsyncClient) -> None:
    """A negative ``since`` or a huge ``limit`` is refused by the query model."""
    for query in ("since=-1", "limit=-1", "limit=100000", "since=abc"):
        response = await http.get(f"/api/history/chat:room?{query}", headers=GOOD)
        assert response.status_code == 422, (query, response.text)


async def test_publish_and_broadcast_reach_websocket_clients(
    api_server: RunningServer, http: httpx.AsyncClient
) -> None:
    """POST /api/publish reaches a channel's members; /api/broadcast each channel's once."""
    async with closing(
        await open_clients([user_url(api_server, "viewer")] * 2, "news", "sport")
    ) as clients:
        response = await http.post(
            "/api/publish", json={"channel": "news", "data": "hi"}, headers=GOOD
        )
        assert response.json() == {"offset": None, "epoch": None}
        await wait_received(clients, "news", 1)
        body = {"channels": ["news", "sport", "news"], "data": {"b": 1}}
        response = await http.post("/api/broadcast", json=body, headers=GOOD)
        assert sorted(response.json()["results"]) == ["news", "sport"]
        await wait_received(clients, "sport", 1)
        await wait_received(clients, "news", 2)
        for client in clients:
            assert client.received["news"] == ["hi", {"b": 1}]
            assert client.received["sport"] == [{"b": 1}]


async def test_channels_lists_local_members(
    api_server: RunningServer, http: httpx.AsyncClient
) -> None:
    """GET /api/channels shows each channel with its member count in this process."""
    async with closing(await open_clients([user_url(api_server, "viewer")] * 2, "a")) as clients:
        await clients[0].subscribe("b")
        response = await http.get("/api/channels", headers=GOOD)
    assert response.json() == {
        "channels": [{"channel": "a", "subscribers": 2}, {"channel": "b", "subscribers": 1}]
    }


async def test_presence_and_history_read_what_clients_did(
    api_server: RunningServer, http: httpx.AsyncClient
) -> None:
    """Presence lists a subscribed user; history pages with since and limit."""
    async with closing([await ProtocolClient.open(user_url(api_server, "ada"))]) as [ada]:
        await ada.subscribe("chat:room")
        for n in range(3):
            assert "result" in await ada.publish("chat:room", {"n": n})
        response = await http.get("/api/presence/chat:room", headers=GOOD)
        assert response.json() == {"clients": {ada.id: {"user": "ada", "info": None}}}
        response = await http.get("/api/history/chat:room?since=1&limit=1", headers=GOOD)
    page = response.json()
    assert page["offset"] == 3 and isinstance(page["epoch"], str)
    assert page["messages"] == [
        {"channel": "chat:room", "data": {"n": 1}, "offset": 2, "from": ada.id}
    ]


async def test_presence_and_history_of_a_plain_channel_are_bad_requests(
    http: httpx.AsyncClient,
) -> None:
    """A channel whose namespace keeps neither answers 400 with the bad_request code."""
    for path in ("/api/presence/news", "/api/history/news"):
        response = await http.get(path, headers=GOOD)
        assert response.status_code == 400, response.text
        assert response.json()["detail"]["code"] == "bad_request"


async def test_disconnect_closes_every_connection_of_the_user(
    api_server: RunningServer, http: httpx.AsyncClient
) -> None:
    """POST /api/disconnect closes ada's two connections with the code and reason; bob stays."""
    async with (
        open_client(api_server, path=f"/ws?token={token('ada')}") as ada1,
        open_client(api_server, path=f"/ws?token={token('ada')}") as ada2,
        open_client(api_server, path=f"/ws?token={token('bob')}") as bob,
    ):
        body = {"user": "ada", "code": 4003, "reason": "banned"}
        response = await http.post("/api/disconnect", json=body, headers=GOOD)
        assert response.status_code == 202, response.text
        assert response.json() == {"user": "ada", "code": 4003}
        for client in (ada1, ada2):
            await drain_until_closed(client.ws)
            assert close_code(client.ws) == 4003
            assert client.ws.close_reason == "banned"
        assert (await bob.publish("news", 1))["id"] == "pub"


async def test_api_is_off_without_a_key(serve: Callable[..., RunningServer]) -> None:
    """No WSHUB_API_KEY: every /api path is 404 and the OpenAPI document has none."""
    app, hub = api_app()
    server = serve(app, settings=hub.settings)
    async with httpx.AsyncClient(trust_env=False) as client:
        for method, path, body in ENDPOINTS:
            response = await client.request(method, server.http_url(path), json=body, headers=GOOD)
            assert response.status_code == 404, (path, response.text)
        paths = (await client.get(server.http_url("/openapi.json"))).json()["paths"]
    assert not [path for path in paths if path.startswith("/api")]


async def test_openapi_describes_the_api(http: httpx.AsyncClient) -> None:
    """The OpenAPI document has every route, the request models and the apikey scheme."""
    spec = (await http.get("/openapi.json")).json()
    assert {
        "/api/publish",
        "/api/broadcast",
        "/api/channels",
        "/api/presence/{channel}",
        "/api/history/{channel}",
        "/api/disconnect",
    } <= set(spec["paths"])
    schemas = spec["components"]["schemas"]
    assert {"PublishRequest", "BroadcastRequest", "DisconnectRequest", "HistoryResponse"} <= set(
        schemas
    )
    assert spec["components"]["securitySchemes"]["apikey"]["name"] == "Authorization"
    publish = spec["paths"]["/api/publish"]["post"]
    assert publish["security"] == [{"apikey": []}]


@pytest.mark.redis
async def test_broker_down_gets_503_unavailable(
    serve: Callable[..., RunningServer], redis_server: RedisServer
) -> None:
    """With Redis gone, publishing through the API answers 503 with the unavailable code."""
    app, hub = api_app(redis_server.url, api_key=KEY, redis_probe_interval=0.2)
    server = serve(app, settings=hub.settings)
    redis_server.stop()
    async with httpx.AsyncClient(trust_env=False) as client:
        for path, body in (
            ("/api/publish", {"channel": "news", "data": 1}),
            ("/api/broadcast", {"channels": ["news"], "data": 1}),
            ("/api/disconnect", {"user": "ada"}),
        ):
            response = await client.post(server.http_url(path), json=body, headers=GOOD)
            assert response.status_code == 503, response.text
            assert response.json()["detail"]["code"] == "unavailable"


@pytest.mark.redis
async def test_api_reaches_clients_on_two_worker_processes(
    redis_server: RedisServer, admin: redis.asyncio.Redis, prefix: str
) -> None:
    """Behind --workers 2, an API publish reaches clients on both; disconnect closes both."""
    env = hub_env(
        redis_server.url, prefix, WSHUB_API_KEY=KEY, WSHUB_JWT_SECRET=SECRET, **NO_RATE_LIMIT
    )
    async with hub_processes(1, env, "--workers", "2") as [hub], closing([]) as clients:
        url = hub.ws_url(f"/ws?token={token('ada')}")
        while await numsub(admin, f"{prefix}room") < 2:
            assert len(clients) < 60, "every client landed on the same worker"
            clients += await open_clients([url] * 5, "room")
        async with httpx.AsyncClient(trust_env=False, timeout=5 * TIME_SCALE) as http:
            body: dict[str, Any] = {"channel": "room", "data": {"via": "api"}}
            response = await http.post(hub.http_url("/api/publish"), json=body, headers=GOOD)
            assert response.status_code == 200, response.text
            await wait_received(clients, "room", 1)
            assert all(client.received["room"] == [{"via": "api"}] for client in clients)
            body = {"user": "ada", "code": 4003, "reason": "bye"}
            response = await http.post(hub.http_url("/api/disconnect"), json=body, headers=GOOD)
            assert response.status_code == 202, response.text
        await wait_until(lambda: not any(client.open_still for client in clients), 10)
        assert {close_code(client.ws) for client in clients} == {4003}
        assert await stop(hub) == 0, hub.log()
