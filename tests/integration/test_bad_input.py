"""Bad input against a real server: a clear error frame or close code, and nobody else notices."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import msgpack
import orjson
import pytest
import websockets

from wshub.core.codecs import JSON_SUBPROTOCOL, MSGPACK_SUBPROTOCOL
from wshub.demo import app as demo_app
from wshub.demo import hub as demo_hub
from wshub.testing import wait_until

from .support import close_code, connect, registries_empty, scaled
from .wire import WireClient, bad_request, open_client

pytestmark = pytest.mark.anyio

KIB = 1024


async def assert_still_usable(client: WireClient, channel: str = "after") -> None:
    """After an error the same connection subscribes, publishes and receives."""
    await client.subscribe(channel, request_id="usable-sub")
    reply = await client.publish(channel, {"ok": True}, request_id="usable-pub")
    assert reply == {"id": "usable-pub", "result": {}}
    [message] = await client.messages(channel, 1)
    assert message["data"] == {"ok": True}


def publish_text(size: int, channel: str = "big", request_id: int = 1) -> str:
    """A JSON publish frame of exactly ``size`` bytes (its data is a padded string)."""
    frame = orjson.dumps({"op": "publish", "id": request_id, "channel": channel, "data": ""})
    padding = size - len(frame)
    assert padding >= 0
    return frame.decode().replace('"data":""', f'"data":"{"x" * padding}"')


def publish_msgpack(size: int, channel: str = "big", request_id: int = 1) -> bytes:
    """A MessagePack publish frame of exactly ``size`` bytes."""
    pad = size
    while True:
        frame = {"op": "publish", "id": request_id, "channel": channel, "data": "x" * pad}
        packed: bytes = msgpack.packb(frame, use_bin_type=True)
        if len(packed) == size:
            return packed
        pad -= len(packed) - size


# -- frames that do not parse, or are not commands --------------------------------------------


@pytest.mark.parametrize(
    "text", ["{not json", "", "{'op':'pong'}", '{"op":"pong",}', '{"op":"pong"}{"op":"pong"}']
)
async def test_malformed_json_gets_bad_request_and_the_connection_stays_usable(
    hub_server, text: str
) -> None:
    """Unparseable text is answered with a bad_request without id; the client goes on."""
    server, hub = hub_server()
    async with open_client(server) as client:
        await client.send_raw(text)
        assert bad_request(await client.next()).startswith("invalid JSON")
        await assert_still_usable(client)
    await wait_until(lambda: registries_empty(hub))


@pytest.mark.parametrize("text", ["[]", "[{}]", "1", '"subscribe"', "null", "true"])
async def test_json_that_is_not_an_object_gets_bad_request(hub_server, text: str) -> None:
    """Valid JSON that is not an object is refused with a message saying so."""
    server, _ = hub_server()
    async with open_client(server) as client:
        await client.send_raw(text)
        assert "object" in bad_request(await client.next())
        await assert_still_usable(client)


@pytest.mark.parametrize("op", ["bogus", "Subscribe", "publish "])
async def test_unknown_op_gets_bad_request_with_the_id(hub_server, op: str) -> None:
    """An op the server does not serve is refused, echoing the request id and naming the op."""
    server, _ = hub_server()
    async with open_client(server) as client:
        reply = await client.request({"op": op, "id": 41, "channel": "room"})
        assert bad_request(reply, 41).startswith(f"unknown op {op!r}")
        await assert_still_usable(client)


async def test_missing_op_gets_bad_request_with_the_id(hub_server) -> None:
    """A frame without op is refused and says op is missing."""
    server, _ = hub_server()
    async with open_client(server) as client:
        reply = await client.request({"id": "no-op", "channel": "room"})
        assert bad_request(reply, "no-op").startswith("missing 'op'")
        await assert_still_usable(client)


@pytest.mark.parametrize(
    ("frame", "needle"),
    [
        ({"op": "subscribe", "id": 1}, "'channel'"),
        ({"op": "subscribe", "id": 1, "channel": 5}, "'channel'"),
        ({"op": "unsubscribe", "id": 1, "channel": None}, "'channel'"),
        ({"op": "publish", "id": 1, "channel": ["room"], "data": 1}, "'channel'"),
        ({"op": "publish", "id": 1, "channel": "room"}, "'data'"),
        ({"op": "subscribe", "id": 1, "channel": "room", "since": "3"}, "'since'"),
        ({"op": "subscribe", "id": 1, "channel": "room", "since": 1.5}, "'since'"),
        ({"op": "subscribe", "id": 1, "channel": "room", "since": -1}, "'since'"),
        ({"op": "subscribe", "id": 1, "channel": "room", "since": True}, "'since'"),
        ({"op": "subscribe", "id": 1, "channel": "room", "since": 0, "epoch": 7}, "'epoch'"),
        ({"op": 7, "id": 1}, "unknown op"),
    ],
)
async def test_wrong_or_missing_field_gets_bad_request_with_the_id(
    hub_server, frame: dict[str, Any], needle: str
) -> None:
    """A missing or wrongly typed field is refused with the request id, naming the field."""
    server, hub = hub_server()
    async with open_client(server) as client:
        assert needle in bad_request(await client.request(frame), 1)
        await assert_still_usable(client)
        assert hub.subscribers("room") == []  # the refused subscribe did nothing


@pytest.mark.parametrize("request_id", [True, 1.5, [1], {"n": 1}, "x" * 65])
async def test_unusable_id_gets_bad_request_without_id(hub_server, request_id: object) -> None:
    """An id that is not an integer or a short string cannot be echoed; the error says why."""
    server, _ = hub_server()
    async with open_client(server) as client:
        await client.send({"op": "subscribe", "id": request_id, "channel": "room"})
        assert "'id'" in bad_request(await client.next())
        await assert_still_usable(client)


async def test_request_without_id_still_gets_errors(hub_server) -> None:
    """A bad frame without id gets an error frame without id (successes stay silent)."""
    server, _ = hub_server()
    async with open_client(server) as client:
        await client.send({"op": "subscribe", "channel": "#all"})
        assert "invalid channel name" in bad_request(await client.next())


# -- channel names ----------------------------------------------------------------------------


INVALID_CHANNELS = ["", "c" * 201, "#all", "#user:bob", "with space", "naïve", "a*b", "line\nbreak"]


@pytest.mark.parametrize("op", ["subscribe", "unsubscribe", "publish"])
async def test_invalid_channel_name_gets_bad_request(hub_server, op: str) -> None:
    """Empty, too long, reserved and out-of-alphabet channel names are refused for every op."""
    server, hub = hub_server()
    async with open_client(server) as client:
        for n, channel in enumerate(INVALID_CHANNELS):
            frame = {"op": op, "id": n, "channel": channel, "data": 1}
            assert "invalid channel name" in bad_request(await client.request(frame), n)
        assert hub.channel_count == 0
        await assert_still_usable(client)


async def test_channel_name_of_exactly_200_characters_is_accepted(hub_server) -> None:
    """The longest allowed name works end to end."""
    server, _ = hub_server()
    async with open_client(server) as client:
        name = "c" * 200
        await client.subscribe(name)
        await client.publish(name, 1)
        [message] = await client.messages(name, 1)
        assert message["channel"] == name


async def test_client_cannot_reach_the_broadcast_channel(hub_server) -> None:
    """Publishing to ``#all`` is refused, and nobody receives anything."""
    server, _ = hub_server()
    async with open_client(server) as listener, open_client(server) as client:
        reply = await client.publish("#all", {"spoof": True}, request_id=9)
        bad_request(reply, 9)
        await listener.subscribe("probe")
        await client.publish("probe", "after")
        [message] = await listener.messages("probe", 1)
        assert message["data"] == "after"
        assert not [f for f in listener.buffered if f.get("channel") == "#all"]


# -- sizes ------------------------------------------------------------------------------------


@pytest.mark.parametrize("limit", [64 * KIB, 1000])
async def test_message_of_exactly_max_message_size_is_accepted(hub_server, limit: int) -> None:
    """A text message exactly at the limit is processed (default 64 KiB, and a small one)."""
    settings = {} if limit == 64 * KIB else {"max_message_size": limit}
    server, hub = hub_server(**settings)
    assert hub.settings.max_message_size == limit
    async with open_client(server) as client:
        message = publish_text(limit)
        assert len(message.encode()) == limit
        await client.send_raw(message)
        assert await client.reply(1) == {"id": 1, "result": {}}


@pytest.mark.parametrize("limit", [64 * KIB, 1000])
async def test_message_one_byte_over_max_message_size_closes_1009(hub_server, limit: int) -> None:
    """A text message one byte over the limit closes that connection with 1009, and only it."""
    settings = {} if limit == 64 * KIB else {"max_message_size": limit}
    server, hub = hub_server(**settings)
    async with open_client(server) as bystander, open_client(server) as client:
        await bystander.subscribe("room")
        await client.send_raw(publish_text(limit + 1, channel="room"))
        assert await client.closed() == 1009
        reply = await bystander.publish("room", "still here")
        assert reply == {"id": "pub", "result": {}}
        [message] = await bystander.messages("room", 1)
        assert message["data"] == "still here"
    await wait_until(lambda: registries_empty(hub))


async def test_multibyte_text_is_measured_in_bytes(hub_server) -> None:
    """The limit counts UTF-8 bytes: 400 three-byte characters exceed a 1,000-byte limit."""
    server, _ = hub_server(max_message_size=1000)
    async with open_client(server) as client:
        frame = {"op": "publish", "id": 1, "channel": "c", "data": "€" * 400}
        assert len(orjson.dumps(frame)) > 1000 > len(orjson.dumps(frame).decode())
        await client.send(frame)
        assert await client.closed() == 1009


async def test_msgpack_message_size_limit_is_exact(hub_server) -> None:
    """On MessagePack, a binary message at the limit is processed and one byte more closes 1009."""
    server, _ = hub_server(max_message_size=1000)
    async with open_client(server, msgpack_=True) as client:
        await client.send_raw(publish_msgpack(1000))
        assert await client.reply(1) == {"id": 1, "result": {}}
        await client.send_raw(publish_msgpack(1001, request_id=2))
        assert await client.closed() == 1009


# -- frame kinds ------------------------------------------------------------------------------


async def test_binary_frame_on_json_subprotocol_gets_bad_request(hub_server) -> None:
    """A binary message on the JSON subprotocol is refused, even when it holds JSON."""
    server, _ = hub_server()
    async with open_client(server, subprotocols=[JSON_SUBPROTOCOL]) as client:
        await client.send_raw(b'{"op":"subscribe","id":1,"channel":"room"}')
        assert "text frame" in bad_request(await client.next())
        await assert_still_usable(client)


async def test_text_frame_on_msgpack_subprotocol_gets_bad_request(hub_server) -> None:
    """A text message on the MessagePack subprotocol is refused; the client goes on in binary."""
    server, _ = hub_server()
    async with open_client(server, msgpack_=True) as client:
        assert client.binary
        await client.send_raw('{"op":"subscribe","id":1,"channel":"room"}')
        assert "binary frame" in bad_request(await client.next())
        await assert_still_usable(client)
        assert all(isinstance(message, bytes) for message in client.raw)


@pytest.mark.parametrize(
    "payload",
    [b"\xc1", b"\x92\x01", b"\x81\x01\x02", b"\xa2\xff\xfe", b"\x91" * 2000 + b"\x90"],
    ids=["never-used-byte", "truncated", "int-key", "bad-utf8", "2000-deep"],
)
async def test_malformed_msgpack_gets_bad_request(hub_server, payload: bytes) -> None:
    """Bytes that are not a MessagePack value wshub accepts are refused; the client goes on."""
    server, _ = hub_server()
    async with open_client(server, msgpack_=True) as client:
        await client.send_raw(payload)
        assert bad_request(await client.next()).startswith("invalid MessagePack: ")
        await assert_still_usable(client)


@pytest.mark.parametrize("data", [b"raw bytes", {"nested": {"k": b"\x00"}}])
async def test_msgpack_data_json_cannot_carry_gets_bad_request(hub_server, data: object) -> None:
    """Publishing MessagePack binary data is refused with the id: publications are JSON."""
    server, _ = hub_server()
    async with open_client(server, msgpack_=True) as client:
        reply = await client.publish("room", data, request_id=5)
        assert "JSON" in bad_request(reply, 5)
        await assert_still_usable(client)


async def test_data_nested_past_the_encoder_limit_gets_bad_request(hub_server) -> None:
    """Data that parses but is too deep to re-encode (300 levels) is refused with the id."""
    server, _ = hub_server()
    async with open_client(server) as client:
        deep = "[" * 300 + "]" * 300
        await client.send_raw(f'{{"op":"publish","id":3,"channel":"room","data":{deep}}}')
        assert "JSON" in bad_request(await client.reply(3), 3)
        await assert_still_usable(client)


# -- subscription limit -----------------------------------------------------------------------


@pytest.mark.parametrize("limit", [128, 3])
async def test_subscription_past_the_limit_gets_an_error_and_others_still_work(
    hub_server, limit: int
) -> None:
    """One subscription past max_subscriptions is refused with its id; the others still deliver."""
    settings = {} if limit == 128 else {"max_subscriptions": limit}
    server, hub = hub_server(**settings)
    assert hub.settings.max_subscriptions == limit
    async with open_client(server) as client, open_client(server) as publisher:
        for n in range(limit):  # pipelined: the endpoint answers in order
            await client.send({"op": "subscribe", "id": n, "channel": f"ch{n}"})
        for n in range(limit):
            assert await client.reply(n) == {"id": n, "result": {}}
        reply = await client.request({"op": "subscribe", "id": "over", "channel": "one-more"})
        assert "limit" in bad_request(reply, "over")
        assert hub.subscribers("one-more") == []

        # Re-subscribing a channel it already has is not a new subscription.
        again = await client.request({"op": "subscribe", "id": "again", "channel": "ch0"})
        assert again == {"id": "again", "result": {}}
        for channel in ("ch0", f"ch{limit - 1}"):
            await publisher.publish(channel, channel)
            [message] = await client.messages(channel, 1)
            assert message["data"] == channel

        # Leaving one makes room for one more.
        await client.request({"op": "unsubscribe", "id": "leave", "channel": "ch0"})
        await client.subscribe("one-more")


# -- poison in a publish, while others fan out ------------------------------------------------


POISON = [
    '{"op":"publish","id":"bad","channel":"feed","data":NaN}',
    '{"op":"publish","id":"bad","channel":"feed","data":Infinity}',
    '{"op":"publish","id":"bad","channel":"feed","data":"\\ud800"}',
    '{"op":"publish","id":"bad","channel":"feed","data":"\\udfff\\ud800"}',
    '{"op":"publish","id":"bad","channel":"feed","data":' + "[" * 2000 + "]" * 2000 + "}",
    '{"op":"publish","id":"bad","channel":"feed","data":' + '{"a":' * 2000 + "1" + "}" * 2001,
]


async def test_poisoned_publishes_do_not_disturb_a_concurrent_fan_out(hub_server) -> None:
    """NaN, lone surrogates, 2,000-deep nesting: bad_request; subscribers get every good one."""
    server, hub = hub_server()
    rounds = 10
    good = [{"n": n} for n in range(rounds * len(POISON))]
    async with (
        open_client(server) as first,
        open_client(server) as second,
        open_client(server) as publisher,
        open_client(server) as attacker,
    ):
        await first.subscribe("feed")
        await second.subscribe("feed")

        async def publish_good() -> None:
            for n, data in enumerate(good):
                await publisher.send({"op": "publish", "id": n, "channel": "feed", "data": data})
                await asyncio.sleep(0)
            for n in range(len(good)):
                assert await publisher.reply(n) == {"id": n, "result": {}}

        async def attack() -> list[dict[str, Any]]:
            for _ in range(rounds):
                for text in POISON:
                    await attacker.send_raw(text)
                    await asyncio.sleep(0)
            return [await attacker.next() for _ in range(rounds * len(POISON))]

        _, errors = await asyncio.gather(publish_good(), attack())
        for error in errors:
            # The frame never parsed, so its id is unknown: the error carries none.
            assert bad_request(error).startswith("invalid JSON")

        for subscriber in (first, second):
            received = await subscriber.messages("feed", len(good))
            assert [m["data"] for m in received] == good
            assert all(m["from"] == publisher.id for m in received)

        await assert_still_usable(attacker)
        assert hub.stats.overflows == 0
    await wait_until(lambda: registries_empty(hub))


async def test_library_mode_closes_1008_on_invalid_json(hub_server) -> None:
    """The seed-style chat closes a client sending NaN with 1008; other chatters go on."""
    server, hub = hub_server()
    bystander = await connect(server.ws_url("/ws/chat"))
    client = await connect(server.ws_url("/ws/chat"))
    try:
        await wait_until(lambda: len(hub.subscribers("chat")) == 2)
        await client.send('{"user":"x","text":NaN}')
        with pytest.raises(websockets.ConnectionClosedError):
            await asyncio.wait_for(client.recv(), scaled(5))
        assert close_code(client) == 1008
        await bystander.send('{"user":"b","text":"hi"}')
        echo = await asyncio.wait_for(bystander.recv(), scaled(5))
        assert orjson.loads(echo) == {"user": "b", "text": "hi"}
    finally:
        await asyncio.gather(bystander.close(), client.close())
    await wait_until(lambda: registries_empty(hub))


DEEP = "[" * 300 + "]" * 300


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (f'{{"user":{DEEP},"text":"hi"}}', "message nested too deeply"),
        ('{"user":' + '{"a":' * 300 + "1" + "}" * 300 + "}", "message nested too deeply"),
        (f'{{"user":"ada","text":{DEEP}}}', "message nested too deeply"),
        ('["not","an","object"]', "expected a JSON object"),
        ('"hi"', "expected a JSON object"),
        ("42", "expected a JSON object"),
    ],
)
async def test_demo_seed_chat_closes_1008_on_bad_messages_with_one_short_log_line(
    serve, caplog, text: str, reason: str
) -> None:
    """The demo's /ws/chat: bad input closes 1008 with one warning, no traceback, no 1011.

    A 300-deep ``user`` used to reach the encoder and crash the handler (1011 and a
    traceback per message). Bystanders keep chatting, byte for byte as in the seed,
    which echoes non-string ``user``/``text`` values too (see test_fanout.py).
    """
    caplog.set_level(logging.INFO)
    server = serve(demo_app, settings=demo_hub.settings)
    crashes = demo_hub.stats.closes[1011]  # the demo's hub lives as long as the test session
    bystander = await connect(server.ws_url("/ws/chat"))
    client = await connect(server.ws_url("/ws/chat"))
    try:
        await wait_until(lambda: len(demo_hub.subscribers("chat")) == 2)
        await client.send(text)
        with pytest.raises(websockets.ConnectionClosedError):
            await asyncio.wait_for(client.recv(), scaled(5))
        assert (close_code(client), client.close_reason) == (1008, reason)
        await bystander.send('{"user":"ada","text":"hi","extra":[1]}')
        assert await asyncio.wait_for(bystander.recv(), scaled(5)) == '{"user":"ada","text":"hi"}'
        await bystander.send("{}")
        assert await asyncio.wait_for(bystander.recv(), scaled(5)) == '{"user":"anon","text":""}'
        await bystander.send(f'{{"user":42,"text":[null,{{"k":1}}],"ignored":{DEEP}}}')
        echo = await asyncio.wait_for(bystander.recv(), scaled(5))
        assert echo == '{"user":42,"text":[null,{"k":1}]}'
    finally:
        await asyncio.gather(bystander.close(), client.close())
    await wait_until(lambda: registries_empty(demo_hub))
    assert demo_hub.stats.closes[1011] == crashes
    assert not [r for r in caplog.records if r.exc_info or r.exc_text]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    [line] = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert line.name == "wshub.demo"
    assert line.getMessage().endswith(f"{reason}; closed with 1008")
    assert len(line.getMessage()) < 120


async def test_msgpack_welcome_arrives_on_msgpack_only(hub_server) -> None:
    """Sanity: offering only MessagePack yields it, and the welcome is a binary frame."""
    server, _ = hub_server()
    async with open_client(server, msgpack_=True) as client:
        assert client.ws.subprotocol == MSGPACK_SUBPROTOCOL
        assert isinstance(client.raw[0], bytes)


@pytest.mark.parametrize(
    "value",
    [float("nan"), float("inf"), float("-inf"), [1.5, {"x": float("nan")}]],
    ids=["nan", "inf", "-inf", "nested"],
)
@pytest.mark.parametrize("single", [False, True], ids=["float64", "float32"])
async def test_msgpack_nan_and_infinity_get_bad_request(
    hub_server, value: Any, single: bool
) -> None:
    """NaN and ±Inf have no JSON form: a msgpack publish carrying one is refused, not nulled."""
    server, _ = hub_server()
    async with open_client(server, msgpack_=True) as client, open_client(server) as watcher:
        await watcher.subscribe("room")
        frame = {"op": "publish", "id": 1, "channel": "room", "data": value}
        await client.send_raw(msgpack.packb(frame, use_bin_type=True, use_single_float=single))
        assert "NaN or infinity" in bad_request(await client.next())
        frame = {"op": "publish", "id": 2, "channel": "room", "data": [1.5, -0.25, 1e30]}
        await client.send_raw(msgpack.packb(frame, use_bin_type=True, use_single_float=single))
        assert await client.reply(2) == {"id": 2, "result": {}}
        [message] = await watcher.messages("room", 1)
        assert message["data"][0] == 1.5  # the refused one never reached subscribers
