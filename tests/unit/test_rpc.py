"""RPC and connect-hook pieces without a server: the wire parser, builders, the registry."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from pydantic import BaseModel

from wshub import Connection, ErrorCode, ProtocolError, RPCError
from wshub.core.protocol import Command, Op, error_reply, parse_command, welcome
from wshub.hub.hooks import ConnectHooks
from wshub.hub.rpc import RPCCalls, RPCRegistry, describe, jsonable


class Point(BaseModel):
    x: int
    y: int = 0


def test_parse_rpc_frames() -> None:
    frame = {"op": "rpc", "id": 3, "method": "move", "params": {"x": 1}}
    assert parse_command(frame) == Command(Op.RPC, 3, method="move", params={"x": 1})
    assert parse_command({"op": "rpc", "method": "m"}) == Command(Op.RPC, method="m")
    for bad, message in [
        ({"op": "rpc", "id": 1}, "rpc needs 'method'"),
        ({"op": "rpc", "id": 1, "method": 5}, "'method' must be a string of 1 to 100"),
        ({"op": "rpc", "id": 1, "method": ""}, "'method' must be a string of 1 to 100"),
        ({"op": "rpc", "id": 1, "method": "m" * 101}, "'method' must be a string of 1 to 100"),
    ]:
        with pytest.raises(ProtocolError) as caught:
            parse_command(bad)
        assert caught.value.code is ErrorCode.BAD_REQUEST and caught.value.request_id == 1
        assert caught.value.message.startswith(message)


def test_welcome_lists_server_side_subscriptions_only_when_there_are_some() -> None:
    assert "subscribed" not in welcome("c", None, 25)
    assert "subscribed" not in welcome("c", None, 25, [])
    entries = [{"channel": "feed:all", "offset": 3, "epoch": "e"}, {"channel": "news"}]
    assert welcome("c", "ada", 25, entries)["subscribed"] == entries


def test_error_reply_takes_an_application_code() -> None:
    assert error_reply(1, "out_of_stock", "none") == {
        "id": 1,
        "error": {"code": "out_of_stock", "message": "none"},
    }
    assert error_reply(None, ErrorCode.NOT_FOUND, "x")["error"]["code"] == "not_found"


@pytest.mark.parametrize("code", ["a", "out_of_stock", "x" * 32, "e2"])
def test_rpc_error_codes(code: str) -> None:
    error = RPCError(code, "why")
    assert (error.code, error.message) == (code, "why")
    assert RPCError(ErrorCode.FORBIDDEN).code == "forbidden"


@pytest.mark.parametrize("code", ["", "A", "_x", "1a", "x" * 33, "a-b", "a b"])
def test_rpc_error_refuses_other_codes(code: str) -> None:
    with pytest.raises(ValueError):
        RPCError(code, "why")


def test_describe_reads_models_from_annotations() -> None:
    async def typed(conn: Connection, params: Point) -> Point:
        return params

    async def bare(conn):  # type: ignore[no-untyped-def]
        return 1

    async def unresolved(conn: Connection, params: Any) -> Any:
        return params

    unresolved.__annotations__ = {"conn": "Connection", "params": "Missing", "return": "Missing"}

    method = describe("typed", typed)
    assert (method.params_model, method.result_model, method.takes_params) == (Point, Point, True)
    assert describe("bare", bare).takes_params is False
    assert describe("u", unresolved).params_model is None
    with pytest.raises(ValueError):
        describe("has space", typed)


@pytest.mark.anyio
async def test_registry_call_validates_and_dumps() -> None:
    registry = RPCRegistry()

    @registry.decorator("point")
    async def point(conn: Connection, params: Point) -> list[Point]:
        return [params, Point(x=params.y)]

    @registry.decorator()
    async def plain(conn: Connection) -> Any:
        return {"ok": True}

    conn: Any = object()
    assert await registry.call(conn, "point", {"x": 1, "y": 2}) == [
        {"x": 1, "y": 2},
        {"x": 2, "y": 0},
    ]
    assert await registry.call(conn, "plain", "ignored") == {"ok": True}
    with pytest.raises(ProtocolError) as invalid:
        await registry.call(conn, "point", {"y": "no"})
    assert invalid.value.code is ErrorCode.BAD_REQUEST
    assert invalid.value.message == (
        "invalid params: x: Field required; y: Input should be a valid integer, "
        "unable to parse string as an integer"
    )
    with pytest.raises(ProtocolError) as unknown:
        await registry.call(conn, "nope", None)
    assert unknown.value.code is ErrorCode.NOT_FOUND
    assert jsonable((Point(x=1), {"p": Point(x=2)})) == [{"x": 1, "y": 0}, {"p": {"x": 2, "y": 0}}]


@pytest.mark.anyio
async def test_rpc_calls_bound_and_cancel() -> None:
    calls = RPCCalls(2)
    gate = asyncio.Event()
    done: list[int] = []

    async def call(n: int) -> None:
        await gate.wait()
        done.append(n)

    assert calls.start(lambda: call(1)) and calls.start(lambda: call(2))
    assert calls.full and not calls.start(lambda: call(3))
    gate.set()
    await asyncio.sleep(0.01)
    assert sorted(done) == [1, 2] and len(calls) == 0
    gate.clear()
    assert calls.start(lambda: call(4))
    await calls.close()  # cancelled, not run
    assert sorted(done) == [1, 2] and len(calls) == 0


def test_connect_hooks_must_be_async() -> None:
    hooks = ConnectHooks()
    with pytest.raises(TypeError):
        hooks.add(lambda conn: None)  # type: ignore[arg-type,return-value]
    assert not hooks
