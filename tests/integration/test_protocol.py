"""The protocol endpoint against a real server: wire protocol v1 as in docs/protocol.md."""

from __future__ import annotations

import asyncio
import re

import msgpack
import orjson
import pytest

from wshub.core.codecs import JSON_SUBPROTOCOL, MSGPACK_SUBPROTOCOL
from wshub.testing import wait_until

from .support import registries_empty
from .wire import decode, open_client

pytestmark = pytest.mark.anyio


# -- handshake --------------------------------------------------------------------------------


async def test_welcome_is_the_first_frame(hub_server) -> None:
    """The first frame names the client, the user (none), the ping interval and the version."""
    server, hub = hub_server()
    async with open_client(server) as client:
        welcome = client.welcome
        assert set(welcome) == {"op", "client", "user", "ping", "version"}
        assert welcome["op"] == "welcome"
        assert re.fullmatch(r"[0-9a-f]{16}", welcome["client"])
        assert welcome["user"] is None
        assert welcome["ping"] == 25
        assert welcome["version"] == 1
        assert [conn.id for conn in hub.connections()] == [welcome["client"]]


async def test_welcome_ping_follows_the_setting(hub_server) -> None:
    """The welcome announces the configured ping interval."""
    server, _ = hub_server(ping_interval=7.5)
    async with open_client(server) as client:
        assert client.welcome["ping"] == 7.5


async def test_client_ids_are_unique(hub_server) -> None:
    """Each connection gets its own id."""
    server, _ = hub_server()
    async with open_client(server) as first, open_client(server) as second:
        assert first.id != second.id


@pytest.mark.parametrize(
    ("offered", "chosen"),
    [
        ([JSON_SUBPROTOCOL], JSON_SUBPROTOCOL),
        ([MSGPACK_SUBPROTOCOL], MSGPACK_SUBPROTOCOL),
        (["chat", JSON_SUBPROTOCOL], JSON_SUBPROTOCOL),
        ([JSON_SUBPROTOCOL, MSGPACK_SUBPROTOCOL], JSON_SUBPROTOCOL),
        ([MSGPACK_SUBPROTOCOL, JSON_SUBPROTOCOL], MSGPACK_SUBPROTOCOL),
        (None, None),
    ],
)
async def test_server_picks_the_first_subprotocol_it_knows(
    hub_server, offered: list[str] | None, chosen: str | None
) -> None:
    """The handshake selects the first offered wshub subprotocol; none offered means plain JSON."""
    server, _ = hub_server()
    async with open_client(server, subprotocols=offered) as client:
        assert client.ws.subprotocol == chosen
        assert isinstance(client.raw[0], bytes if chosen == MSGPACK_SUBPROTOCOL else str)


async def test_no_subprotocol_speaks_json(hub_server) -> None:
    """A client that offers no subprotocol gets JSON text frames."""
    server, _ = hub_server()
    async with open_client(server) as client:
        assert client.ws.subprotocol is None
        await client.subscribe("room")
        await client.publish("room", [1, "two"])
        [message] = await client.messages("room", 1)
        assert message["data"] == [1, "two"]
        assert all(isinstance(raw, str) for raw in client.raw)


# -- requests and replies ---------------------------------------------------------------------


async def test_subscribe_publish_roundtrip_with_origin(hub_server) -> None:
    """A subscriber receives the publication with its channel, data and publisher id."""
    server, hub = hub_server()
    async with open_client(server) as subscriber, open_client(server) as publisher:
        await subscriber.subscribe("room")
        reply = await publisher.publish("room", {"text": "hé 😀"}, request_id=2)
        assert reply == {"id": 2, "result": {}}
        [message] = await subscriber.messages("room", 1)
        assert message == {
            "op": "message",
            "channel": "room",
            "data": {"text": "hé 😀"},
            "from": publisher.id,
        }
    await wait_until(lambda: registries_empty(hub))


async def test_publish_result_carries_no_offset_without_history(hub_server) -> None:
    """On a channel that keeps no history the result is empty and messages carry no offset."""
    server, _ = hub_server()
    async with open_client(server) as client:
        await client.subscribe("room")
        reply = await client.publish("room", 1, request_id="p")
        assert reply == {"id": "p", "result": {}}
        [message] = await client.messages("room", 1)
        assert "offset" not in message


async def test_publish_to_a_channel_without_subscribers_succeeds(hub_server) -> None:
    """Publishing where nobody listens is not an error: ``{"id":..,"result":{}}``."""
    server, hub = hub_server()
    async with open_client(server) as client:
        assert await client.publish("empty", {"x": 1}, request_id=1) == {"id": 1, "result": {}}
        assert hub.subscribers("empty") == []


@pytest.mark.parametrize("data", [None, 0, "", [], {}, False, 1.25, -(2**63)])
async def test_any_json_value_is_published_as_it_is(hub_server, data: object) -> None:
    """Falsy and edge values, null included, arrive unchanged."""
    server, _ = hub_server()
    async with open_client(server) as client:
        await client.subscribe("room")
        await client.publish("room", data)
        [message] = await client.messages("room", 1)
        assert message["data"] == data and type(message["data"]) is type(data)


@pytest.mark.parametrize("request_id", [0, -5, 2**63 - 1, "", "x" * 64, "é😀"])
async def test_request_ids_are_echoed_exactly(hub_server, request_id: int | str) -> None:
    """Integer and string ids, zero and empty included, come back unchanged."""
    server, _ = hub_server()
    async with open_client(server) as client:
        reply = await client.request({"op": "subscribe", "id": request_id, "channel": "room"})
        assert reply == {"id": request_id, "result": {}}


async def test_subscribe_with_since_answers_not_recovered_without_history(hub_server) -> None:
    """Recovery needs history; where none is kept ``recovered`` is false, with no messages."""
    server, _ = hub_server()
    async with open_client(server) as client:
        for n, extra in enumerate([{"since": 0}, {"since": 41, "epoch": "abc"}]):
            frame = {"op": "subscribe", "id": n, "channel": f"room{n}", **extra}
            reply = await client.request(frame)
            assert reply == {"id": n, "result": {"recovered": False, "messages": []}}


async def test_subscribing_twice_is_harmless(hub_server) -> None:
    """A second subscribe to the same channel succeeds and does not double delivery."""
    server, hub = hub_server()
    async with open_client(server) as client:
        await client.subscribe("room", request_id=1)
        await client.subscribe("room", request_id=2)
        assert len(hub.subscribers("room")) == 1
        await client.publish("room", "once")
        await client.publish("room", "twice?")
        messages = await client.messages("room", 2)
        assert [m["data"] for m in messages] == ["once", "twice?"]


async def test_unsubscribe_stops_delivery(hub_server) -> None:
    """After unsubscribe, publications on that channel no longer arrive; others still do."""
    server, hub = hub_server()
    async with open_client(server) as client, open_client(server) as publisher:
        await client.subscribe("room", request_id=1)
        await client.subscribe("marker", request_id=2)
        await publisher.publish("room", "before")
        [message] = await client.messages("room", 1)
        assert message["data"] == "before"

        reply = await client.request({"op": "unsubscribe", "id": 3, "channel": "room"})
        assert reply == {"id": 3, "result": {}}
        assert hub.subscribers("room") == []
        await publisher.publish("room", "after")
        await publisher.publish("marker", "end")
        [marker] = await client.messages("marker", 1)
        assert marker["data"] == "end"
        # Everything the client received up to the marker: nothing on "room".
        received = [f for raw in client.raw for f in decode(raw)]
        assert [f["data"] for f in received if f.get("channel") == "room"] == ["before"]


async def test_unsubscribe_from_a_channel_never_joined_is_not_an_error(hub_server) -> None:
    """Leaving a channel the client is not in succeeds."""
    server, _ = hub_server()
    async with open_client(server) as client:
        reply = await client.request({"op": "unsubscribe", "id": 1, "channel": "nowhere"})
        assert reply == {"id": 1, "result": {}}


async def test_replies_come_in_request_order(hub_server) -> None:
    """Pipelined requests are answered in the order they were sent."""
    server, _ = hub_server()
    async with open_client(server) as client:
        for n in range(50):
            op = ["subscribe", "publish", "unsubscribe"][n % 3]
            await client.send({"op": op, "id": n, "channel": f"c{n % 5}", "data": n})
        replies = []
        while len(replies) < 50:
            frame = await client.next()
            if "id" in frame:  # publications to its own channels come in between
                replies.append(frame)
        assert [f["id"] for f in replies] == list(range(50))
        assert all(f["result"] == {} for f in replies)


async def test_messages_keep_publish_order_per_channel(hub_server) -> None:
    """150 pipelined publications arrive at every subscriber in publish order."""
    server, _ = hub_server()
    async with (
        open_client(server) as first,
        open_client(server) as second,
        open_client(server) as publisher,
    ):
        await first.subscribe("seq")
        await second.subscribe("seq")
        for n in range(150):
            await publisher.send({"op": "publish", "id": n, "channel": "seq", "data": n})
        for subscriber in (first, second):
            messages = await subscriber.messages("seq", 150)
            assert [m["data"] for m in messages] == list(range(150))


# -- requests without id, pong ----------------------------------------------------------------


async def test_pong_produces_no_frame(hub_server) -> None:
    """``pong``, with or without id, is never answered."""
    server, _ = hub_server()
    async with open_client(server) as client:
        await client.send({"op": "pong"})
        await client.send({"op": "pong", "id": 7})
        probe = await client.request({"op": "unsubscribe", "id": "probe", "channel": "x"})
        assert probe == {"id": "probe", "result": {}}
        assert client.buffered == []
        assert len(client.raw) == 2  # the welcome, then the probe's reply


async def test_requests_without_id_get_no_success_reply(hub_server) -> None:
    """Subscribe, publish and unsubscribe without id act but stay silent."""
    server, hub = hub_server()
    async with open_client(server) as client, open_client(server) as listener:
        await listener.subscribe("room")
        await client.send({"op": "subscribe", "channel": "mine"})
        await client.send({"op": "publish", "channel": "room", "data": "quiet"})
        await client.send({"op": "unsubscribe", "channel": "nowhere"})
        probe = await client.request({"op": "unsubscribe", "id": "probe", "channel": "x"})
        assert probe == {"id": "probe", "result": {}}
        assert client.buffered == []
        assert len(client.raw) == 2
        assert [c.id for c in hub.subscribers("mine")] == [client.id]
        [message] = await listener.messages("room", 1)
        assert message["data"] == "quiet"


async def test_request_without_id_still_gets_its_error(hub_server) -> None:
    """A failing request without id gets the error frame, without id."""
    server, _ = hub_server()
    async with open_client(server) as client:
        await client.send({"op": "publish", "channel": "room"})
        assert await client.next() == {
            "error": {"code": "bad_request", "message": "publish needs 'data'"}
        }


# -- packing ----------------------------------------------------------------------------------


async def test_packed_messages_split_into_valid_json_frames(hub_server) -> None:
    """Several frames in one message are joined by newlines, and each line is one JSON object."""
    server, _ = hub_server(pack_max_bytes=300)
    async with open_client(server) as client:
        await client.subscribe("room")
        for n in range(60):
            await client.send({"op": "publish", "id": n, "channel": "room", "data": {"n": n}})
        messages = await client.messages("room", 60)
        await client.reply(59)
        assert [m["data"]["n"] for m in messages] == list(range(60))

        packed = [raw for raw in client.raw if isinstance(raw, str) and "\n" in raw]
        assert packed, "a publish's message and reply are queued together and must pack"
        for raw in client.raw:
            assert isinstance(raw, str)
            lines = raw.split("\n")
            assert all(isinstance(orjson.loads(line), dict) for line in lines)
            if len(lines) > 1:
                assert len(raw.encode()) <= 300


async def test_a_frame_larger_than_pack_max_bytes_goes_alone(hub_server) -> None:
    """A frame over pack_max_bytes is sent as its own message, never cut."""
    server, _ = hub_server(pack_max_bytes=200)
    async with open_client(server) as client:
        await client.subscribe("room")
        big = "x" * 1000
        await client.publish("room", big)
        [message] = await client.messages("room", 1)
        assert message["data"] == big
        assert any(raw.startswith('{"op":"message"') and "\n" not in raw for raw in client.raw)


async def test_msgpack_frames_are_never_packed(hub_server) -> None:
    """On MessagePack each binary message is exactly one frame."""
    server, _ = hub_server()
    async with open_client(server, msgpack_=True) as client:
        await client.subscribe("room")
        for n in range(30):
            await client.send({"op": "publish", "id": n, "channel": "room", "data": n})
        messages = await client.messages("room", 30)
        assert [m["data"] for m in messages] == list(range(30))
        await client.reply(29)
        for raw in client.raw:
            assert isinstance(raw, bytes)
            assert isinstance(msgpack.unpackb(raw, raw=False), dict)  # one value, nothing after


# -- MessagePack ------------------------------------------------------------------------------


async def test_msgpack_welcome_subscribe_publish_roundtrip(hub_server) -> None:
    """On wshub.v1.msgpack every frame is binary MessagePack carrying the same objects."""
    server, hub = hub_server()
    async with open_client(server, msgpack_=True) as client:
        assert client.ws.subprotocol == MSGPACK_SUBPROTOCOL
        assert client.welcome["op"] == "welcome" and client.welcome["version"] == 1
        await client.subscribe("room", request_id=1)
        data = {"text": "hé", "n": [1, 2.5, None, True], "big": 2**40}
        assert await client.publish("room", data, request_id=2) == {"id": 2, "result": {}}
        [message] = await client.messages("room", 1)
        assert message == {"op": "message", "channel": "room", "data": data, "from": client.id}
        assert all(isinstance(raw, bytes) for raw in client.raw)
    await wait_until(lambda: registries_empty(hub))


async def test_json_and_msgpack_clients_share_channels(hub_server) -> None:
    """A publication reaches JSON and MessagePack subscribers alike, whoever published it."""
    server, _ = hub_server()
    async with (
        open_client(server) as text_client,
        open_client(server, msgpack_=True) as binary_client,
    ):
        await text_client.subscribe("mixed")
        await binary_client.subscribe("mixed")
        await text_client.publish("mixed", {"from": "json"})
        await binary_client.publish("mixed", {"from": "msgpack"})
        for client in (text_client, binary_client):
            messages = await client.messages("mixed", 2)
            assert [m["data"] for m in messages] == [{"from": "json"}, {"from": "msgpack"}]
            assert [m["from"] for m in messages] == [text_client.id, binary_client.id]


async def test_msgpack_errors_are_msgpack_frames(hub_server) -> None:
    """Error replies on MessagePack are binary MessagePack too."""
    server, _ = hub_server()
    async with open_client(server, msgpack_=True) as client:
        reply = await client.request({"op": "bogus", "id": 1, "channel": "room"})
        assert reply["error"]["code"] == "bad_request"
        assert isinstance(client.raw[-1], bytes)


# -- leaving ----------------------------------------------------------------------------------


async def test_closing_the_client_removes_it_from_every_channel(hub_server) -> None:
    """A client that closes leaves every channel; counts return to zero."""
    server, hub = hub_server()
    async with open_client(server) as client:
        for n in range(5):
            await client.subscribe(f"c{n}", request_id=n)
        assert hub.channel_count == 5
    await wait_until(lambda: registries_empty(hub))


async def test_a_client_closing_mid_stream_does_not_stop_the_others(hub_server) -> None:
    """One subscriber leaving while publications flow leaves the others' streams intact."""
    server, _ = hub_server()
    async with open_client(server) as stayer, open_client(server) as publisher:
        await stayer.subscribe("flow")
        async with open_client(server) as leaver:
            await leaver.subscribe("flow")
            for n in range(20):
                await publisher.send({"op": "publish", "id": n, "channel": "flow", "data": n})
        for n in range(20, 40):
            await publisher.send({"op": "publish", "id": n, "channel": "flow", "data": n})
            await asyncio.sleep(0)
        messages = await stayer.messages("flow", 40)
        assert [m["data"] for m in messages] == list(range(40))
