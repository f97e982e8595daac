"""The smallest end-to-end checks: the protocol endpoint answers, the seed chat echoes."""

from __future__ import annotations

import orjson
import pytest
import websockets

from wshub.testing import wait_until

pytestmark = pytest.mark.anyio


async def test_welcome_then_subscribe_publish_roundtrip(hub_server) -> None:
    """A protocol client gets welcome, subscribes, and receives its own publication."""
    server, hub = hub_server()
    async with websockets.connect(server.ws_url("/ws")) as ws:
        welcome = orjson.loads(await ws.recv())
        assert welcome["op"] == "welcome" and welcome["ping"] == 25
        await ws.send(orjson.dumps({"op": "subscribe", "id": 1, "channel": "room"}).decode())
        assert orjson.loads(await ws.recv()) == {"id": 1, "result": {}}
        await ws.send('{"op":"publish","id":2,"channel":"room","data":{"n":1}}')
        frames = []
        while len(frames) < 2:
            frames += [orjson.loads(line) for line in (await ws.recv()).split("\n")]
        assert {"id": 2, "result": {}} in frames
        assert {
            "op": "message",
            "channel": "room",
            "data": {"n": 1},
            "from": welcome["client"],
        } in frames
    await wait_until(lambda: hub.connection_count == 0)


async def test_seed_chat_echoes_with_defaults(hub_server) -> None:
    """The seed chat fills in "anon" and "" and sends the message back to the sender."""
    server, hub = hub_server()
    async with websockets.connect(server.ws_url("/ws/chat")) as ws:
        await ws.send("{}")
        assert await ws.recv() == '{"user":"anon","text":""}'
    await wait_until(lambda: hub.connection_count == 0 and hub.channel_count == 0)
