"""The Python client (`wshub.client`) against a real server: requests, recovery, reconnects."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from importlib.resources import files
from typing import Any

import anyio
import httpx
import jwt
import orjson
import pytest
import websockets
from fastapi import FastAPI
from websockets.asyncio.server import ServerConnection

from tests.serving import RestartableServer
from wshub import Hub, Namespace, mount
from wshub.client import Client, ClientError, ClientState, Message, Recovery, StateChange
from wshub.testing import TIME_SCALE, RunningServer, wait_until

pytestmark = pytest.mark.anyio

SECRET = "client-test-secret-long-enough-for-hs256-0123456789abcdef"


def make_app(history_size: int = 100, **settings: Any) -> tuple[FastAPI, Hub]:
    """The protocol endpoint at /ws; ``chat:`` keeps history and presence, like the demo."""
    chat = Namespace(history_size=history_size, history_ttl=300, presence=True, join_leave=True)
    hub = Hub(namespaces={"chat": chat, "*": Namespace()}, **settings)
    app = FastAPI(lifespan=hub.lifespan)
    mount(app, hub, "/ws")
    return app, hub


def client(url: str, **options: Any) -> Client:
    """A client with test-sized timeouts and no proxy."""
    options.setdefault("request_timeout", 5 * TIME_SCALE)
    options.setdefault("backoff_base", 0.05)
    options.setdefault("backoff_cap", 0.3)
    return Client(url, proxy=None, **options)


def token(sub: str = "ada", ttl: float = 3600) -> str:
    """An HS256 token the test hub accepts."""
    return jwt.encode({"sub": sub, "exp": int(time.time() + ttl)}, SECRET, algorithm="HS256")


@pytest.fixture
def server(serve: Callable[..., RunningServer]) -> tuple[RunningServer, Hub]:
    """The test app on a real server."""
    app, hub = make_app()
    return serve(app, settings=hub.settings), hub


@pytest.fixture
async def restartable() -> AsyncIterator[tuple[RestartableServer, Hub]]:
    """The test app on a server that can be restarted on its port (stopped in a thread)."""
    app, hub = make_app(history_size=5)
    server = RestartableServer(app, hub.settings)
    await anyio.to_thread.run_sync(server.start)
    try:
        yield server, hub
    finally:
        await anyio.to_thread.run_sync(server.stop)


async def test_subscribe_publish_presence_history(server: tuple[RunningServer, Hub]) -> None:
    """Two clients: messages with offsets and origin, join events, presence and history."""
    running, hub = server
    url = running.ws_url("/ws")
    joins: list[str] = []
    async with client(url) as alice, client(url) as bob:
        sub = await alice.subscribe("chat:lobby", on_join=lambda e: joins.append(e.client))
        assert sub.result is not None and sub.result["offset"] == 0
        assert len(sub.result["epoch"]) == 8  # every subscribe reply carries the epoch
        bobs = await bob.subscribe("chat:lobby")
        assert await bob.publish("chat:lobby", {"text": "hi"}) == 1
        assert await bob.publish("chat:lobby", {"text": "again"}) == 2
        first = await asyncio.wait_for(anext(sub), 5)
        assert first == Message("chat:lobby", {"text": "hi"}, 1, bob.welcome["client"])  # type: ignore[index]
        assert (await asyncio.wait_for(anext(sub), 5)).offset == 2
        assert (await asyncio.wait_for(anext(bobs), 5)).data == {"text": "hi"}
        clients = await alice.presence("chat:lobby")
        assert set(clients) == {alice.welcome["client"], bob.welcome["client"]}  # type: ignore[index]
        page = await alice.history("chat:lobby", limit=1)
        assert [m.data for m in page.messages] == [{"text": "again"}] and page.offset == 2
        assert joins[-1] == bob.welcome["client"]  # type: ignore[index]
        assert await bob.publish("plain", 1) is None  # no history: no offset
    await wait_until(lambda: hub.connection_count == 0)


async def test_errors_come_back_as_client_errors(server: tuple[RunningServer, Hub]) -> None:
    """A refused subscribe and a bad request raise ClientError with the server's code."""
    running, _ = server
    async with client(running.ws_url("/ws"), on_error=lambda e: None) as c:
        with pytest.raises(ClientError) as refused:
            await c.subscribe("user:bob")
        assert refused.value.code == "forbidden"
        with pytest.raises(ClientError) as bad:
            await c.history("plain")
        assert bad.value.code == "bad_request"
        assert "user:bob" not in c._channels


async def test_callbacks_and_packed_bursts_keep_order(serve: Callable[..., RunningServer]) -> None:
    """A burst the server packs several frames a message arrives whole and in order."""
    app, hub = make_app(rate_limit=1e9, rate_burst=10**9)
    running = serve(app, settings=hub.settings)
    got: list[int] = []
    async with client(running.ws_url("/ws")) as reader, client(running.ws_url("/ws")) as writer:
        await reader.subscribe("burst", on_message=lambda m: got.append(m.data))
        await asyncio.gather(*(writer.publish("burst", n) for n in range(300)))
        await wait_until(lambda: len(got) == 300)
    assert got == sorted(got) and len(set(got)) == 300


async def test_pings_are_answered(serve: Callable[..., RunningServer]) -> None:
    """With fast server pings and a short pong timeout the client stays connected."""
    app, hub = make_app(ping_interval=0.1, pong_timeout=0.3)
    running = serve(app, settings=hub.settings)
    async with client(running.ws_url("/ws")) as c:
        assert c.welcome is not None and c.welcome["ping"] == 0.1
        await asyncio.sleep(1.0)
        assert c.state is ClientState.CONNECTED
        assert await c.publish("x", 1) is None
    assert hub.stats.connections == 1


async def test_reconnects_after_restart_and_recovers(
    restartable: tuple[RestartableServer, Hub],
) -> None:
    """Stopped and restarted on its port, the server is rejoined; missed messages come first."""
    server, hub = restartable
    states: list[StateChange] = []
    recoveries: list[Recovery] = []
    got: list[Message] = []
    c = client(server.ws_url("/ws"), on_state=states.append)
    async with c:
        await c.subscribe("chat:r", on_message=got.append, on_recover=recoveries.append)
        await c.publish("chat:r", "before")
        await wait_until(lambda: len(got) == 1)
        await anyio.to_thread.run_sync(server.stop)
        await wait_until(lambda: c.state is not ClientState.CONNECTED)
        for text in ("missed-1", "missed-2"):
            await hub.publish("chat:r", text)  # the memory broker keeps history while stopped
        await anyio.to_thread.run_sync(server.start)
        await asyncio.wait_for(c.wait_for_state(ClientState.CONNECTED), 10 * TIME_SCALE)
        await wait_until(lambda: len(recoveries) == 1)
        await c.publish("chat:r", "after")
        await wait_until(lambda: len(got) == 4)
    assert [(m.data, m.offset, m.recovered) for m in got] == [
        ("before", 1, False),
        ("missed-1", 2, True),
        ("missed-2", 3, True),
        ("after", 4, False),
    ]
    assert recoveries == [Recovery("chat:r", True, 2, 3, recoveries[0].epoch)]
    closes = [s for s in states if s.state is ClientState.DISCONNECTED]
    assert closes[0].code == 1001 and closes[0].reconnect


async def test_lost_history_is_reported_as_failed_recovery(
    restartable: tuple[RestartableServer, Hub],
) -> None:
    """More missed messages than the history keeps: on_recover gets recovered=False."""
    server, hub = restartable
    recoveries: list[Recovery] = []
    got: list[Any] = []
    async with client(server.ws_url("/ws")) as c:
        await c.subscribe(
            "chat:lossy", on_message=lambda m: got.append(m.data), on_recover=recoveries.append
        )
        await c.publish("chat:lossy", 0)
        await wait_until(lambda: got == [0])
        await anyio.to_thread.run_sync(server.stop)
        for n in range(1, 9):  # the namespace keeps 5
            await hub.publish("chat:lossy", n)
        await anyio.to_thread.run_sync(server.start)
        await wait_until(lambda: len(recoveries) == 1, within=10)
    assert recoveries[0].recovered is False and recoveries[0].offset == 9
    assert got == [0]


async def test_backoff_grows_with_jitter_while_the_server_is_down(
    restartable: tuple[RestartableServer, Hub],
) -> None:
    """Refused reconnects wait longer and longer, up to the cap, then one succeeds."""
    server, _ = restartable
    states: list[StateChange] = []
    async with client(server.ws_url("/ws"), on_state=states.append) as c:
        await anyio.to_thread.run_sync(server.stop)
        await wait_until(lambda: sum(s.reconnect for s in states) >= 6, within=10)
        await anyio.to_thread.run_sync(server.start)
        await asyncio.wait_for(c.wait_for_state(ClientState.CONNECTED), 10 * TIME_SCALE)
    waits = [s for s in states if s.reconnect]
    assert [s.attempt for s in waits[:6]] == [1, 2, 3, 4, 5, 6]
    ceilings = [(s.delay or 0.0, min(0.3, 0.05 * 2 ** (s.attempt - 1))) for s in waits]
    assert all(0 <= delay < ceiling for delay, ceiling in ceilings), ceilings


async def test_4001_is_not_retried_with_the_same_token(serve: Callable[..., RunningServer]) -> None:
    """A static bad token: connect raises, and no second attempt reaches the server."""
    app, hub = make_app(jwt_secret=SECRET)
    running = serve(app, settings=hub.settings)
    errors: list[ClientError] = []
    c = client(running.ws_url("/ws"), token="not-a-token", on_error=errors.append)
    with pytest.raises(ClientError) as refused:
        await c.connect()
    assert refused.value.code == "unauthorized" and refused.value.close_code == 4001
    await asyncio.sleep(0.5)
    assert hub.stats.auth_failures == 1 and c.state is ClientState.DISCONNECTED
    assert [e.code for e in errors] == ["unauthorized"]
    await c.close()


async def test_4001_asks_get_token_for_a_new_one(serve: Callable[..., RunningServer]) -> None:
    """get_token is asked again after 4001; a new, valid token connects as that user."""
    app, hub = make_app(jwt_secret=SECRET)
    running = serve(app, settings=hub.settings)
    handed: list[bool] = []
    tokens = ["expired", token("ada")]

    async def get_token(rejected: bool) -> str:
        handed.append(rejected)
        return tokens.pop(0)

    async with client(running.ws_url("/ws"), get_token=get_token) as c:
        assert c.welcome is not None and c.welcome["user"] == "ada"
        assert handed == [False, True]
        assert await c.refresh(token("ada")) is not None
    assert hub.stats.auth_failures == 1


async def test_get_token_repeating_a_refused_token_stops(
    serve: Callable[..., RunningServer],
) -> None:
    """get_token that keeps handing out the refused token stops the client after one retry."""
    app, hub = make_app(jwt_secret=SECRET)
    running = serve(app, settings=hub.settings)
    c = client(running.ws_url("/ws"), get_token=lambda rejected: "bad", on_error=lambda e: None)
    with pytest.raises(ClientError, match="unauthorized"):
        await c.connect()
    assert hub.stats.auth_failures == 1
    await c.close()


async def test_watchdog_drops_a_silent_server() -> None:
    """A server that stops talking after welcome is dropped and reconnected."""
    accepted: list[ServerConnection] = []

    async def silent(ws: ServerConnection) -> None:
        accepted.append(ws)
        await ws.recv()  # the connect frame
        welcome = {"op": "welcome", "client": "x", "user": None, "ping": 0.1, "version": 1}
        await ws.send(orjson.dumps(welcome).decode())
        await ws.wait_closed()

    states: list[StateChange] = []
    async with websockets.serve(silent, "127.0.0.1", 0, ping_interval=None) as ws_server:
        port = ws_server.sockets[0].getsockname()[1]
        async with client(f"ws://127.0.0.1:{port}/", ping_grace=0.2, on_state=states.append):
            await wait_until(lambda: len(accepted) >= 2, within=5)
    drops = [s for s in states if s.state is ClientState.DISCONNECTED and s.reconnect]
    assert drops[0].reason.startswith("heartbeat timeout")


async def test_close_ends_iteration_and_fails_requests(server: tuple[RunningServer, Hub]) -> None:
    """After close, iterating subscriptions stop and requests raise 'closed'."""
    running, hub = server
    c = client(running.ws_url("/ws"))
    await c.connect()
    sub = await c.subscribe("chat:end")
    await c.close()
    assert [m async for m in sub] == []
    with pytest.raises(ClientError, match="closed"):
        await c.publish("chat:end", 1)
    await wait_until(lambda: hub.connection_count == 0)


async def test_mount_serves_the_browser_client(server: tuple[RunningServer, Hub]) -> None:
    """GET /wshub/client.js answers the packaged wshub.js as JavaScript, 304 when unchanged."""
    running, _ = server
    async with httpx.AsyncClient() as http:
        response = await http.get(running.http_url("/wshub/client.js"))
        etag = response.headers["etag"]
        again = await http.get(
            running.http_url("/wshub/client.js"), headers={"If-None-Match": etag}
        )
    assert again.status_code == 304
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/javascript")
    assert "export class Client" in response.text
    shipped = files("wshub") / "static" / "wshub.js"
    assert response.content == shipped.read_bytes()
