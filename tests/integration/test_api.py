"""The HTTP server API under /api: the key, every endpoint, bad bodies, and two processes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import jwt
import psutil
import pytest
import redis.asyncio
from fastapi import FastAPI

from tests.redis_support import RedisServer
from wshub import Hub, mount
from wshub.core.channels import MAX_CHANNEL_LENGTH
from wshub.hub.permissions import Namespace
from wshub.ops.api import ENVELOPE_BYTES, MAX_BROADCAST_CHANNELS, add_api, max_body_size
from wshub.settings import Settings
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


# -- the key and the size, before the body ----------------------------------------------

MIB = 1024 * 1024


class PeakRSS:
    """The highest resident set size of this process (where the test server runs), sampled."""

    def __init__(self) -> None:
        self.process = psutil.Process()
        self.start = self.peak = self.process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.process.memory_info().rss)

    @property
    def growth(self) -> int:
        return self.peak - self.start


class Body:
    """A streamed body of ``size`` bytes in 64 KiB chunks, counting what the client sent."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.sent = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        chunk = b"x" * (64 * 1024)
        while self.sent < self.size:
            piece = chunk[: self.size - self.sent]
            self.sent += len(piece)
            yield piece


async def raw_exchange(
    server: RunningServer, head: bytes, body: bytes = b""
) -> tuple[int, dict[str, str], Any]:
    """Send a request head (and the start of a body), NOT the rest; read the response."""
    reader, writer = await asyncio.open_connection(server.host, server.port)
    try:
        writer.write(head + body)
        await writer.drain()
        raw = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5 * TIME_SCALE)
        status_line, *lines = raw.decode().split("\r\n")
        headers = {k.lower(): v.strip() for k, _, v in (x.partition(":") for x in lines if x)}
        content = await reader.readexactly(int(headers["content-length"]))
        return int(status_line.split()[1]), headers, json.loads(content)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


def request_head(*headers: str) -> bytes:
    """A POST /api/publish head with ``headers`` (``"Name: value"``)."""
    lines = ["POST /api/publish HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/json"]
    return ("\r\n".join([*lines, *headers]) + "\r\n\r\n").encode()


def chunked(data: bytes) -> bytes:
    """``data`` as one HTTP/1.1 chunk (no last chunk: more could follow)."""
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


def publish_body(size: int) -> bytes:
    """A valid publish body of exactly ``size`` bytes."""
    empty = len(b'{"channel":"news","data":""}')
    return b'{"channel":"news","data":"' + b"x" * (size - empty) + b'"}'


@pytest.fixture
def limit(api_server: RunningServer) -> int:
    """The API's body limit on `api_server` (default ``max_message_size``)."""
    return max_body_size(Settings())


@pytest.mark.parametrize("framing", ["Content-Length: 314572800", "Transfer-Encoding: chunked"])
@pytest.mark.parametrize("authorization", [None, "Authorization: apikey wrong"])
async def test_a_request_without_the_key_gets_401_before_its_body_is_sent(
    api_server: RunningServer, framing: str, authorization: str | None
) -> None:
    """A 300 MB body announced without the key: 401 comes while none of it was sent."""
    head = request_head(framing, *([authorization] if authorization else []))
    started = time.monotonic()
    status, headers, body = await raw_exchange(api_server, head)
    assert time.monotonic() - started < 2 * TIME_SCALE
    assert status == 401
    assert headers["www-authenticate"] == "apikey"
    assert body["detail"]["code"] == "unauthorized"


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
async def test_a_large_streamed_body_without_the_key_is_never_buffered(
    http: httpx.AsyncClient, declared: bool
) -> None:
    """50 MB streamed without the key: 401, and the server's memory barely moves."""
    body = Body(50 * MIB)
    headers = {"Content-Length": str(body.size)} if declared else {}
    with PeakRSS() as rss:
        started = time.monotonic()
        response = await http.post("/api/publish", content=body, headers=headers)
        elapsed = time.monotonic() - started
    assert response.status_code == 401, response.text
    assert response.json()["detail"]["code"] == "unauthorized"
    assert elapsed < 5 * TIME_SCALE
    # httpx sends everything before it reads; uvicorn discards it without keeping it.
    assert rss.growth < 10 * MIB, f"peak RSS grew by {rss.growth / MIB:.1f} MiB"


async def test_a_content_length_over_the_limit_gets_413_before_the_body_is_sent(
    api_server: RunningServer, limit: int
) -> None:
    """With the key, a declared length one byte over the limit: 413 at once."""
    head = request_head(f"Content-Length: {limit + 1}", f"Authorization: apikey {KEY}")
    status, _, body = await raw_exchange(api_server, head)
    assert status == 413
    assert body["detail"]["code"] == "too_large"


async def test_a_chunked_body_gets_413_as_soon_as_it_passes_the_limit(
    api_server: RunningServer, limit: int
) -> None:
    """With the key, chunks one byte past the limit (and no end): 413 while streaming."""
    head = request_head("Transfer-Encoding: chunked", f"Authorization: apikey {KEY}")
    prefix = publish_body(limit)[:-2]
    pieces = [prefix[i : i + 65536] for i in range(0, len(prefix), 65536)] + [b"xxx"]
    status, _, body = await raw_exchange(api_server, head, b"".join(map(chunked, pieces)))
    assert status == 413
    assert body["detail"]["code"] == "too_large"


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
async def test_a_streamed_body_over_the_limit_gets_413(
    http: httpx.AsyncClient, declared: bool
) -> None:
    """With the key, 50 MB streamed: 413, without the server buffering it."""
    body = Body(50 * MIB)
    headers = {**GOOD, **({"Content-Length": str(body.size)} if declared else {})}
    with PeakRSS() as rss:
        response = await http.post("/api/publish", content=body, headers=headers)
    assert response.status_code == 413, response.text
    assert response.json()["detail"]["code"] == "too_large"
    assert rss.growth < 10 * MIB, f"peak RSS grew by {rss.growth / MIB:.1f} MiB"


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
async def test_a_body_at_the_limit_is_published_and_one_byte_more_is_not(
    api_server: RunningServer, http: httpx.AsyncClient, limit: int, declared: bool
) -> None:
    """Exactly ``max_message_size`` + the envelope allowance: 200; one byte more: 413."""
    async with closing(await open_clients([user_url(api_server, "viewer")], "news")) as clients:
        for size, status in ((limit, 200), (limit + 1, 413)):
            data = publish_body(size)
            content: Any = data if declared else _stream(data)
            headers = {**GOOD, "Content-Type": "application/json"}
            response = await http.post("/api/publish", content=content, headers=headers)
            assert response.status_code == status, response.text
        await wait_received(clients, "news", 1)
    assert len(clients[0].received["news"][0]) == limit - len(b'{"channel":"news","data":""}')


async def _stream(data: bytes) -> AsyncIterator[bytes]:
    for i in range(0, len(data), 65536):
        yield data[i : i + 65536]


async def test_the_limit_follows_max_message_size() -> None:
    """The body limit is ``max_message_size`` plus an allowance for channel names."""
    assert max_body_size(Settings(max_message_size=1000)) == 1000 + ENVELOPE_BYTES
    # A broadcast to the most channels, with the longest names, fits the allowance.
    body = {"channels": ["c" * MAX_CHANNEL_LENGTH] * MAX_BROADCAST_CHANNELS, "data": ""}
    assert len(json.dumps(body).encode()) < ENVELOPE_BYTES


async def test_a_refused_body_that_never_ends_is_dropped_after_the_handshake_timeout(
    serve: Callable[..., RunningServer],
) -> None:
    """After an early 401, uvicorn discards the body; a client that stalls is closed."""
    app, hub = api_app(api_key=KEY, handshake_timeout=1.0)
    server = serve(app, settings=hub.settings)
    reader, writer = await asyncio.open_connection(server.host, server.port)
    try:
        writer.write(request_head("Content-Length: 314572800") + b"x" * 100_000)
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5 * TIME_SCALE)
        assert head.startswith(b"HTTP/1.1 401 ")
        started = time.monotonic()
        for _ in range(5):  # keeps sending for a while, then stalls
            writer.write(b"x" * 100_000)
            await writer.drain()
            await asyncio.sleep(0.05)
        with contextlib.suppress(ConnectionError):
            while await asyncio.wait_for(reader.read(65536), 3 * TIME_SCALE):
                pass
        assert time.monotonic() - started < 1.0 + 2 * TIME_SCALE
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
