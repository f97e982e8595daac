"""The transport fast path is used under uvicorn, and the ASGI fallback delivers the same."""

from __future__ import annotations

import orjson
import pytest
import websockets

from wshub.settings import Settings
from wshub.testing import wait_until

pytestmark = pytest.mark.anyio

FAST_PATH_OFF = "WSHUB_TRANSPORT_FAST_PATH is off here (make test-asgi runs so)"


async def fan_out(server, hub, clients: int, messages: int) -> list[list[int]]:  # type: ignore[no-untyped-def]
    """Subscribe ``clients`` protocol clients, publish ``messages``, return what each got."""
    sockets = [await websockets.connect(server.ws_url("/ws")) for _ in range(clients)]
    try:
        for ws in sockets:
            await ws.recv()  # welcome
            await ws.send('{"op":"subscribe","id":1,"channel":"t"}')
            await ws.recv()
        publisher = sockets[0]
        for n in range(messages):
            await publisher.send(
                orjson.dumps({"op": "publish", "channel": "t", "data": n}).decode()
            )
        got: list[list[int]] = []
        for ws in sockets:
            seen: list[int] = []
            while len(seen) < messages:
                for line in (await ws.recv()).split("\n"):
                    frame = orjson.loads(line)
                    if frame.get("op") == "message":
                        seen.append(frame["data"])
            got.append(seen)
        return got
    finally:
        for ws in sockets:
            await ws.close()


@pytest.mark.parametrize("fast", [True, False])
async def test_fan_out_is_complete_and_ordered_with_and_without_fast_path(hub_server, fast):  # type: ignore[no-untyped-def]
    """Every client gets every message in order, on the fast path and on plain ASGI."""
    server, hub = hub_server(transport_fast_path=fast, rate_burst=10_000)
    got = await fan_out(server, hub, clients=5, messages=300)
    assert got == [list(range(300))] * 5
    await wait_until(lambda: hub.connection_count == 0)


async def attached(hub_server, **settings) -> bool:  # type: ignore[no-untyped-def]
    """Whether a connection to a server started with ``settings`` gets the fast path."""
    server, hub = hub_server(**settings)
    async with websockets.connect(server.ws_url("/ws")) as ws:
        await ws.recv()
        await wait_until(lambda: hub.connection_count == 1)
        (conn,) = hub.connections()
        return conn.fast_path is not None


@pytest.mark.skipif(not Settings().transport_fast_path, reason=FAST_PATH_OFF)
async def test_fast_path_is_found_under_uvicorn_sansio(hub_server) -> None:  # type: ignore[no-untyped-def]
    """Under uvicorn's default WebSocket implementation, connections use the fast path.

    So the installed uvicorn's protocol object passes `FastPath.find`'s guard.
    """
    assert await attached(hub_server)


async def test_setting_turns_the_fast_path_off(hub_server) -> None:  # type: ignore[no-untyped-def]
    """transport_fast_path=False keeps every send on ASGI."""
    server, hub = hub_server(transport_fast_path=False)
    async with websockets.connect(server.ws_url("/ws")) as ws:
        await ws.recv()
        await wait_until(lambda: hub.connection_count == 1)
        (conn,) = hub.connections()
        assert conn.fast_path is None


async def test_environment_variable_turns_the_fast_path_off(hub_server, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """WSHUB_TRANSPORT_FAST_PATH=false reaches hubs built without that setting."""
    monkeypatch.setenv("WSHUB_TRANSPORT_FAST_PATH", "false")
    assert not await attached(hub_server)


async def test_connections_follow_the_environment(hub_server) -> None:  # type: ignore[no-untyped-def]
    """Test servers use the fast path exactly when the environment's settings say so.

    `make test-asgi` runs this next to the suites it repeats without the fast path:
    there, it checks that those suites' servers really are on plain ASGI.
    """
    assert await attached(hub_server) is Settings().transport_fast_path
