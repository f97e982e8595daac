"""RPC over the protocol endpoint (``@hub.rpc``): real uvicorn, raw websockets and `Client`.

Typed params are validated (errors name the field), ``RPCError`` gives its code and
message, a crashing handler is answered ``internal`` and logged once with its traceback
while its connection and the others go on, unknown methods are ``not_found``, a slow
handler delays neither pings nor deliveries nor other frames, and the per-connection
in-flight limit holds at exactly ``max_rpc_in_flight`` and refuses one more.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi import FastAPI
from pydantic import BaseModel, Field

from wshub import Connection, Hub, RPCError, mount
from wshub.client import Client, ClientError
from wshub.testing import RunningServer, wait_until

from .support import NO_RATE_LIMIT, drop_clients  # noqa: F401 (an autouse fixture)
from .wire import open_client

pytestmark = pytest.mark.anyio


class Move(BaseModel):
    room: str
    steps: int = Field(ge=1)


class Moved(BaseModel):
    room: str
    total: int
    user: str | None


class RpcApp:
    """A hub with RPC methods, served; ``gate`` holds the ``slow`` calls until opened."""

    def __init__(self, **settings: Any) -> None:
        self.hub = hub = Hub(**{**NO_RATE_LIMIT, **settings})
        self.app = FastAPI(lifespan=hub.lifespan)
        mount(self.app, hub, "/ws")
        self.loop: asyncio.AbstractEventLoop | None = None
        self.gate: asyncio.Event | None = None
        self.cancelled: list[object] = []
        self.started: list[object] = []

        @hub.rpc("move")
        async def move(conn: Connection, params: Move) -> Moved:
            """Move in a room."""
            return Moved(room=params.room, total=params.steps * 10, user=conn.user)

        @hub.rpc("echo")
        async def echo(conn: Connection, params: Any) -> Any:
            return params

        @hub.rpc("nothing")
        async def nothing(conn: Connection) -> None:
            return None

        @hub.rpc("refuse")
        async def refuse(conn: Connection, params: Any) -> None:
            raise RPCError("out_of_stock", f"no more {params}")

        @hub.rpc("crash")
        async def crash(conn: Connection, params: Any) -> None:
            raise ZeroDivisionError("boom")

        @hub.rpc("slow")
        async def slow(conn: Connection, params: Any) -> Any:
            self.loop = asyncio.get_running_loop()
            if self.gate is None:
                self.gate = asyncio.Event()
            self.started.append(params)
            try:
                await self.gate.wait()
            except asyncio.CancelledError:
                self.cancelled.append(params)
                raise
            return {"done": params}

        @hub.rpc("publish")
        async def publish(conn: Connection, params: Any) -> Any:
            return (await hub.publish(params["channel"], params["data"])).offset

    def open_gate(self) -> None:
        """Let every ``slow`` call (running or to come) finish."""
        assert self.loop is not None and self.gate is not None
        self.loop.call_soon_threadsafe(self.gate.set)


@pytest.fixture
def rpc_app(
    serve: Callable[..., RunningServer],
) -> Iterator[Callable[..., tuple[RpcApp, RunningServer]]]:
    def start(**settings: Any) -> tuple[RpcApp, RunningServer]:
        app = RpcApp(**settings)
        return app, serve(app.app, settings=app.hub.settings)

    yield start


async def test_rpc_methods_are_introspectable() -> None:
    """``hub.rpc_methods()``: each method's handler, params and result models, docstring."""
    app = RpcApp()
    methods = app.hub.rpc_methods()
    assert list(methods)[:3] == ["move", "echo", "nothing"]
    move = methods["move"]
    assert (move.name, move.params_model, move.result_model) == ("move", Move, Moved)
    assert move.summary == "Move in a room."
    assert move.handler.__name__ == "move"
    assert (methods["echo"].params_model, methods["echo"].result_model) == (None, None)
    with pytest.raises(ValueError, match="registered already"):
        app.hub.rpc("echo")(methods["echo"].handler)
    with pytest.raises(TypeError, match="async def"):
        app.hub.rpc("sync")(lambda conn, params: None)  # type: ignore[arg-type,return-value]
    with pytest.raises(ValueError, match="must match"):
        RPCError("Not-An-Id", "x")


async def test_typed_params_are_validated_and_errors_name_the_field(
    rpc_app: Callable[..., tuple[RpcApp, RunningServer]],
) -> None:
    """A model in ``params``: valid ones are the model, invalid ones ``bad_request`` naming it."""
    _, server = rpc_app()
    async with open_client(server) as client:
        frame = {"op": "rpc", "id": 1, "method": "move", "params": {"room": "a", "steps": 2}}
        assert await client.request(frame) == {
            "id": 1,
            "result": {"room": "a", "total": 20, "user": None},
        }
        bad = {"op": "rpc", "id": 2, "method": "move", "params": {"steps": 0}}
        reply = await client.request(bad)
        assert reply["id"] == 2 and reply["error"]["code"] == "bad_request", reply
        message = reply["error"]["message"]
        assert message.startswith("invalid params: ")
        assert "room: Field required" in message and "steps: " in message, message
        not_object = await client.request({"op": "rpc", "id": 3, "method": "move", "params": [1]})
        assert not_object["error"]["code"] == "bad_request"
        assert not_object["error"]["message"].startswith("invalid params: params: "), not_object
        missing = await client.request({"op": "rpc", "id": 4, "method": "move"})
        assert "room: Field required" in missing["error"]["message"], missing


async def test_untyped_params_results_and_frames_without_id(
    rpc_app: Callable[..., tuple[RpcApp, RunningServer]],
) -> None:
    """Any JSON in and out (``null`` included); without an id, only failures are answered."""
    _, server = rpc_app()
    async with open_client(server) as client:
        for i, value in enumerate([[1, "two"], 3.5, "s", None, {"a": {"b": []}}]):
            frame = {"op": "rpc", "id": i, "method": "echo", "params": value}
            assert await client.request(frame) == {"id": i, "result": value}
        assert await client.request({"op": "rpc", "id": "n", "method": "nothing"}) == {
            "id": "n",
            "result": None,
        }
        await client.send({"op": "rpc", "method": "echo", "params": 1})  # no id: no reply
        await client.send({"op": "rpc", "method": "nope"})  # no id: an error frame without id
        assert await client.next() == {
            "error": {"code": "not_found", "message": "unknown method 'nope'"}
        }
        no_method = await client.request({"op": "rpc", "id": 9})
        assert no_method["error"] == {"code": "bad_request", "message": "rpc needs 'method'"}


async def test_rpc_error_unknown_method_and_msgpack(
    rpc_app: Callable[..., tuple[RpcApp, RunningServer]],
) -> None:
    """``RPCError(code, message)`` is that code and message; unknown methods ``not_found``."""
    _, server = rpc_app()
    for binary in (False, True):
        async with open_client(server, msgpack_=binary) as client:
            refused = await client.request(
                {"op": "rpc", "id": 1, "method": "refuse", "params": "widgets"}
            )
            assert refused == {
                "id": 1,
                "error": {"code": "out_of_stock", "message": "no more widgets"},
            }
            unknown = await client.request({"op": "rpc", "id": 2, "method": "nope"})
            assert unknown == {
                "id": 2,
                "error": {"code": "not_found", "message": "unknown method 'nope'"},
            }
            moved = await client.request(
                {"op": "rpc", "id": 3, "method": "move", "params": {"room": "r", "steps": 1}}
            )
            assert moved["result"]["total"] == 10


async def test_a_crashing_handler_is_isolated_and_logged_once(
    rpc_app: Callable[..., tuple[RpcApp, RunningServer]], caplog: pytest.LogCaptureFixture
) -> None:
    """``internal`` to the caller, one log record with the traceback; everyone goes on."""
    _, server = rpc_app()
    async with open_client(server) as crasher, open_client(server) as other:
        await other.subscribe("news")
        with caplog.at_level(logging.ERROR):
            reply = await crasher.request({"op": "rpc", "id": 1, "method": "crash"})
        assert reply == {"id": 1, "error": {"code": "internal", "message": "internal error"}}
        records = [r for r in caplog.records if "crash" in r.getMessage()]
        assert len(records) == 1, [r.getMessage() for r in caplog.records]
        [record] = records
        assert record.exc_info is not None and record.exc_info[0] is ZeroDivisionError
        assert record.levelno == logging.ERROR
        assert crasher.id in record.getMessage()
        # The same connection and the other one keep working: rpc, publish, delivery.
        assert (await crasher.request({"op": "rpc", "id": 2, "method": "echo", "params": 7}))[
            "result"
        ] == 7
        assert "result" in await crasher.publish("news", {"after": "crash"})
        [message] = await other.messages("news", 1)
        assert message["data"] == {"after": "crash"}
        assert (await other.request({"op": "rpc", "id": 3, "method": "echo", "params": 8}))[
            "result"
        ] == 8


async def test_a_slow_handler_delays_neither_pings_nor_deliveries_nor_frames(
    rpc_app: Callable[..., tuple[RpcApp, RunningServer]],
) -> None:
    """While one call waits: a ping comes, a publication is delivered, others are answered."""
    app, server = rpc_app(ping_interval=0.3, pong_timeout=5)
    pinged = open_client(server, subprotocols=["wshub.v1.json"])  # app pings need wshub.v1.*
    async with pinged as client, open_client(server) as publisher:
        await client.subscribe("news")
        await client.send({"op": "rpc", "id": "slow", "method": "slow", "params": 1})
        await wait_until(lambda: app.started == [1])
        assert (await client.request({"op": "rpc", "id": "fast", "method": "echo", "params": 2}))[
            "result"
        ] == 2
        await publisher.publish("news", "live")
        seen: list[dict[str, Any]] = []
        while not ({"op": "ping"} in seen and any(f.get("op") == "message" for f in seen)):
            seen.append(await client.next(within=3))
        assert not any(f.get("id") == "slow" for f in seen), seen
        await client.send({"op": "pong"})
        app.open_gate()
        assert await client.reply("slow") == {"id": "slow", "result": {"done": 1}}


async def test_in_flight_limit_at_the_limit_and_one_more(
    rpc_app: Callable[..., tuple[RpcApp, RunningServer]],
) -> None:
    """``max_rpc_in_flight`` calls run at once; one more is ``rate_limited``; then room again."""
    app, server = rpc_app(max_rpc_in_flight=3)
    async with open_client(server) as client:
        for i in range(3):
            await client.send({"op": "rpc", "id": i, "method": "slow", "params": i})
        await wait_until(lambda: len(app.started) == 3)
        over = await client.request({"op": "rpc", "id": 3, "method": "echo", "params": 3})
        assert over["id"] == 3 and over["error"]["code"] == "rate_limited", over
        assert "max_rpc_in_flight=3" in over["error"]["message"]
        # Other ops are not limited by it.
        assert "result" in await client.publish("news", 1)
        app.open_gate()
        results = sorted([(await client.reply(i))["result"]["done"] for i in range(3)])
        assert results == [0, 1, 2]
        again = await client.request({"op": "rpc", "id": 4, "method": "echo", "params": 4})
        assert again == {"id": 4, "result": 4}


async def test_calls_in_flight_are_cancelled_when_the_connection_ends(
    rpc_app: Callable[..., tuple[RpcApp, RunningServer]],
) -> None:
    app, server = rpc_app()
    async with open_client(server) as client:
        await client.send({"op": "rpc", "id": 1, "method": "slow", "params": "x"})
        await wait_until(lambda: app.started == ["x"])
    await wait_until(lambda: app.cancelled == ["x"])


async def test_python_client_rpc(rpc_app: Callable[..., tuple[RpcApp, RunningServer]]) -> None:
    """``client.rpc``: the result, `ClientError` with the server's code, the timeout."""
    app, server = rpc_app()
    async with Client(server.ws_url(), proxy=None) as client:
        assert await client.rpc("move", {"room": "k", "steps": 3}) == {
            "room": "k",
            "total": 30,
            "user": None,
        }
        assert await client.rpc("echo", [1, 2]) == [1, 2]
        assert await client.rpc("echo", 0) == 0
        assert await client.rpc("nothing") is None
        with pytest.raises(ClientError) as refused:
            await client.rpc("refuse", "apples")
        assert (refused.value.code, refused.value.message) == ("out_of_stock", "no more apples")
        with pytest.raises(ClientError) as unknown:
            await client.rpc("nope")
        assert unknown.value.code == "not_found"
        with pytest.raises(ClientError) as invalid:
            await client.rpc("move", {"room": 1})
        assert invalid.value.code == "bad_request" and "steps" in invalid.value.message
        with pytest.raises(ClientError) as slow:
            await client.rpc("slow", "t", timeout=0.2)
        assert slow.value.code == "timeout"
        app.open_gate()
        assert await client.rpc("slow", "u", timeout=5) == {"done": "u"}


async def test_rpc_calls_are_counted_and_timed(
    rpc_app: Callable[..., tuple[RpcApp, RunningServer]],
) -> None:
    """Every dispatched call counts in hub.stats (the dashboard's figures), errors included."""
    app, server = rpc_app()
    async with open_client(server) as client:
        for i in range(3):
            await client.request({"op": "rpc", "id": i, "method": "echo", "params": i})
        await client.request({"op": "rpc", "id": 9, "method": "refuse", "params": None})
    stats = app.hub.stats
    assert stats.rpc_calls == 4
    assert sum(stats.rpc_latency.counts) == 4
