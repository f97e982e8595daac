"""Apps, fixtures and client helpers shared by the history, recovery and presence tests.

`backend` is parametrised over the memory broker and Redis (a fresh redis-server and a
key prefix per test, never port 6379). `serve_hub` serves a hub on it with the test
namespaces on a real uvicorn server: the protocol endpoint at ``/ws`` and a library-mode
endpoint at ``/ws/lib/{channel}?user=...``. `HubApp.call` runs server-side code
(``hub.publish``, ``hub.history``, ``hub.presence``) in the server's own event loop.
Import the fixtures (``backend_fixture``, named ``backend``, and ``drop_clients``) into
a test module to use them.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any, TypeVar

import pytest
import websockets
from fastapi import FastAPI, WebSocket

from tests.redis_support import RedisServer
from wshub import Hub, mount
from wshub.hub.permissions import Namespace
from wshub.testing import RunningServer, wait_until

from .support import NO_RATE_LIMIT, connect
from .wire import Frame, WireClient

T = TypeVar("T")

#: The namespaces of every test hub. Each test has its own hub (and Redis, and prefix).
NAMESPACES = {
    "hist": Namespace(history_size=1000, history_ttl=60),
    "small": Namespace(history_size=10, history_ttl=60),
    "bulk": Namespace(history_size=3000, history_ttl=60),
    "brief": Namespace(history_size=100, history_ttl=1),
    "live": Namespace(history_size=100_000, history_ttl=60, presence=True, join_leave=True),
    "room": Namespace(presence=True, join_leave=True),
    "chat": Namespace(history_size=100, history_ttl=300, presence=True, join_leave=True),
    "*": Namespace(),
}


@dataclasses.dataclass(frozen=True)
class Backend:
    """Where a test's hubs meet: the broker URL, the Redis prefix and the redis-server."""

    name: str
    url: str
    prefix: str
    redis: RedisServer | None = None


@pytest.fixture(name="backend", params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
def backend_fixture(request: pytest.FixtureRequest, prefix: str) -> Backend:
    """The broker each test runs on: ``memory``, then ``redis`` (its own redis-server)."""
    if request.param == "memory":
        return Backend("memory", "memory://", prefix)
    server: RedisServer = request.getfixturevalue("redis_server")
    return Backend("redis", server.url, prefix, server)


class HubApp:
    """A hub served on a real uvicorn server (see `serve_hub`).

    Attributes:
        hub: the hub.
        app: its FastAPI app.
        server: the running server (set by `serve_hub`).
        loop: the server's event loop, once it started.
    """

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.loop: asyncio.AbstractEventLoop | None = None
        self.app = FastAPI(lifespan=self._lifespan)
        mount(self.app, hub, "/ws")
        self.app.add_api_websocket_route("/ws/lib/{channel}", self._library)
        self.server: RunningServer

    @contextlib.asynccontextmanager
    async def _lifespan(self, app: object) -> AsyncIterator[None]:
        self.loop = asyncio.get_running_loop()
        async with self.hub.lifespan(app):
            yield

    async def _library(self, ws: WebSocket, channel: str, user: str | None = None) -> None:
        """Library mode: a member of ``channel`` receiving its data only; reads till close."""
        async with self.hub.connect(ws, user=user) as conn:
            await conn.subscribe(channel)
            async for _ in conn.iter_json():
                pass

    async def call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` in the server's event loop and return its result."""
        assert self.loop is not None, "the server has not started"
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self.loop))

    async def publish(self, channel: str, data: object) -> int | None:
        """``hub.publish`` in the server's loop; return the offset."""
        return (await self.call(self.hub.publish(channel, data))).offset

    async def publish_range(self, channel: str, numbers: range) -> list[int | None]:
        """Publish ``{"n": n}`` for each number, one after the other; return the offsets."""

        async def run() -> list[int | None]:
            return [(await self.hub.publish(channel, {"n": n})).offset for n in numbers]

        return await self.call(run())

    def url(self, path: str = "/ws") -> str:
        """The ``ws://`` URL of ``path``."""
        return self.server.ws_url(path)


def serve_hub(serve: Callable[..., RunningServer], backend: Backend, **options: Any) -> HubApp:
    """Build a hub on ``backend`` with `NAMESPACES`, serve it, return it running.

    Args:
        serve: the ``serve`` fixture.
        backend: the broker.
        **options: more `Hub` arguments and settings (``auth=...``, ``queue_max_messages=...``).
    """
    options = {**NO_RATE_LIMIT, "namespaces": NAMESPACES, **options}
    hub = Hub(broker=backend.url, redis_prefix=backend.prefix, **options)
    hub_app = HubApp(hub)
    hub_app.server = serve(hub_app.app, settings=hub.settings)
    assert hub_app.loop is not None
    return hub_app


@contextlib.asynccontextmanager
async def open_wire(url: str, *, hello: bool = False, **kwargs: Any) -> AsyncIterator[WireClient]:
    """A protocol client on ``url`` that has read its welcome; closed (or dropped) on exit.

    Args:
        url: the protocol endpoint's URL.
        hello: send ``{"op":"connect"}`` first: an anonymous client of a hub with an
            authenticator is welcomed at once instead of after ``auth_timeout``.
        **kwargs: `websockets.connect` options.
    """
    ws = await connect(url, **kwargs)
    client = WireClient(ws, binary=False)
    try:
        if hello:
            await client.send({"op": "connect"})
        client.welcome = await client.next()
        assert client.welcome["op"] == "welcome", client.welcome
        yield client
    finally:
        if ws.transport.is_closing():
            await ws.wait_closed()
        else:
            await ws.close()


async def abort(client: WireClient) -> None:
    """Drop the client's TCP connection without a close frame (a network failure)."""
    client.ws.transport.abort()
    await client.ws.wait_closed()


async def subscribe(
    client: WireClient,
    channel: str,
    since: int | None = None,
    epoch: str | None = None,
    request_id: object = "sub",
) -> Frame:
    """Subscribe, with recovery when ``since`` is given; return the result.

    Asserts that no publication of ``channel`` arrives before the reply: held-back
    live messages must follow it. Other frames met before it (join/leave) stay
    buffered for `WireClient.next`, in order.
    """
    frame: Frame = {"op": "subscribe", "id": request_id, "channel": channel}
    if since is not None:
        frame.update(since=since, epoch=epoch)
    await client.send(frame)
    skipped: list[Frame] = []
    while True:
        got = await client.next()
        assert not (got.get("op") == "message" and got.get("channel") == channel), got
        if got.get("id") == request_id:
            assert "result" in got, got
            result: Frame = got["result"]
            client._pending.extendleft(reversed(skipped))
            return result
        skipped.append(got)


async def live_messages(
    client: WireClient, channel: str, until_offset: int, within: float = 10.0
) -> list[Frame]:
    """Read publications of ``channel`` until the one with ``until_offset``; return them all."""
    found: list[Frame] = []
    while not found or found[-1]["offset"] < until_offset:
        frame = await client.next(within)
        if frame.get("op") == "message" and frame.get("channel") == channel:
            found.append(frame)
    return found


def offsets(messages: list[Frame]) -> list[int]:
    """The offsets of publication frames or objects, in order."""
    return [m["offset"] for m in messages]


async def history(client: WireClient, channel: str, **fields: Any) -> Frame:
    """Send a ``history`` op (``since``, ``limit``) and return the whole reply."""
    return await client.request({"op": "history", "id": "hist", "channel": channel, **fields})


async def presence(client: WireClient, channel: str) -> dict[str, Any]:
    """Send a ``presence`` op and return its ``clients``, asserting success."""
    reply = await client.request({"op": "presence", "id": "pres", "channel": channel})
    assert "result" in reply, reply
    clients: dict[str, Any] = reply["result"]["clients"]
    return clients


async def wait_presence(
    client: WireClient, channel: str, expected: set[str], within: float = 5.0
) -> dict[str, Any]:
    """Poll the ``presence`` op until its client ids are ``expected``; return the last answer."""
    seen: dict[str, Any] = {}

    async def poll() -> None:
        nonlocal seen
        while True:
            seen = await presence(client, channel)
            if set(seen) == expected:
                return
            await asyncio.sleep(0.05)

    try:
        await asyncio.wait_for(poll(), within)
    except TimeoutError:
        raise AssertionError(f"presence {sorted(seen)}, wanted {sorted(expected)}") from None
    return seen


async def wait_ready(hub_app: HubApp, within: float = 10.0) -> None:
    """Wait until the hub's broker is connected (after a Redis restart, say)."""
    await wait_until(lambda: hub_app.hub.ready, within)


async def closed_quietly(client: WireClient) -> list[Frame]:
    """Read every frame left until the server closes; return them."""
    frames: list[Frame] = []
    with contextlib.suppress(websockets.ConnectionClosed):
        while True:
            frames.append(await client.next())
    return frames
