"""Codecs: objects to frames and incoming messages to objects, per subprotocol."""

from __future__ import annotations

from typing import Any

import msgpack
import orjson
import pytest

from wshub.brokers.base import Publication
from wshub.core.codecs import (
    CODECS,
    JSON,
    JSON_SUBPROTOCOL,
    MSGPACK,
    MSGPACK_SUBPROTOCOL,
    RAW_JSON,
    Codec,
    JsonCodec,
    MsgpackCodec,
    RawJsonCodec,
    codec_for_subprotocols,
    encode_data,
)
from wshub.core.errors import ErrorCode, ProtocolError
from wshub.core.protocol import PING


def refused(codec: Codec, text: str | None, data: bytes | None) -> ProtocolError:
    """Decode with ``codec``, expecting a ``bad_request``; return the error."""
    with pytest.raises(ProtocolError) as info:
        codec.decode(text, data)
    assert info.value.code is ErrorCode.BAD_REQUEST
    assert info.value.request_id is None
    return info.value


def nested(depth: int) -> str:
    """A JSON text of ``depth`` nested arrays."""
    return "[" * depth + "]" * depth


# -- the registry -----------------------------------------------------------------------------


def test_each_codec_sits_at_its_index() -> None:
    """`CODECS[codec.index]` is the codec: the fan-out's per-codec frame cache relies on it."""
    assert [type(codec) for codec in CODECS] == [RawJsonCodec, JsonCodec, MsgpackCodec]
    for position, codec in enumerate(CODECS):
        assert codec.index == position
    assert (RAW_JSON, JSON, MSGPACK) == CODECS


def test_codec_flags() -> None:
    """Only the JSON envelope codec packs; only MessagePack is binary."""
    assert (RAW_JSON.subprotocol, RAW_JSON.binary, RAW_JSON.packs) == (None, False, False)
    assert (JSON.subprotocol, JSON.binary, JSON.packs) == (JSON_SUBPROTOCOL, False, True)
    assert (MSGPACK.subprotocol, MSGPACK.binary, MSGPACK.packs) == (
        MSGPACK_SUBPROTOCOL,
        True,
        False,
    )


@pytest.mark.parametrize(
    ("offered", "expected"),
    [
        ([], JSON),
        (["other"], JSON),
        ([JSON_SUBPROTOCOL], JSON),
        ([MSGPACK_SUBPROTOCOL], MSGPACK),
        ([MSGPACK_SUBPROTOCOL, JSON_SUBPROTOCOL], MSGPACK),
        ([JSON_SUBPROTOCOL, MSGPACK_SUBPROTOCOL], JSON),
        (["other", MSGPACK_SUBPROTOCOL], MSGPACK),
        (["wshub.v2.json", "WSHUB.V1.MSGPACK"], JSON),
    ],
)
def test_codec_for_subprotocols_first_known_wins(offered: list[str], expected: Codec) -> None:
    """The first offered subprotocol wshub knows picks the codec; none known means JSON."""
    assert codec_for_subprotocols(offered) is expected


# -- the JSON envelope ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("publication", "expected"),
    [
        (Publication(b'{"a":1}'), b'{"op":"message","channel":"room","data":{"a":1}}'),
        (
            Publication(b"[1,2]", offset=7),
            b'{"op":"message","channel":"room","data":[1,2],"offset":7}',
        ),
        (
            Publication(b'"hi"', origin="c1"),
            b'{"op":"message","channel":"room","data":"hi","from":"c1"}',
        ),
        (
            Publication(b"null", offset=0, origin="c2"),
            b'{"op":"message","channel":"room","data":null,"offset":0,"from":"c2"}',
        ),
    ],
)
def test_json_envelope_bytes_exactly(publication: Publication, expected: bytes) -> None:
    """The envelope is spliced around the data in a fixed field order, offset 0 included."""
    frame = JSON.message("room", publication)
    assert frame.data == expected.decode()
    assert frame.size == len(expected)


@pytest.mark.parametrize("offset", [None, 0, 1, 2**53])
@pytest.mark.parametrize("origin", [None, "c1", 'quote"and\\slash', "josé 😀"])
@pytest.mark.parametrize("channel", ["room", "chat:lobby", "#user:zoë", '#user:"odd"\n'])
@pytest.mark.parametrize("data", [None, 0, -1.5, "text", "😀\u2028", [], {"k": [1, {"d": None}]}])
def test_json_splice_equals_orjson_of_the_envelope(
    data: object, channel: str, origin: str | None, offset: int | None
) -> None:
    """The spliced frame is byte for byte what orjson makes of the whole envelope."""
    envelope: dict[str, Any] = {"op": "message", "channel": channel, "data": data}
    if offset is not None:
        envelope["offset"] = offset
    if origin is not None:
        envelope["from"] = origin
    frame = JSON.message(channel, Publication(encode_data(data), offset, origin))
    expected = orjson.dumps(envelope)
    assert frame.data == expected.decode()
    assert frame.size == len(expected)


def test_json_envelope_never_contains_a_raw_newline() -> None:
    """Pretty-printed data (an outside publisher's) is spliced without its newlines.

    Clients split every message on ``\\n`` (packing); a raw newline in valid JSON is
    only ever whitespace, so it can go without changing the value.
    """
    pretty = b'{\n  "text": "line one\\nline two",\n  "n": [\n    1,\n    2\n  ]\n}\n'
    frame = JSON.message("room", Publication(pretty, 3, "c1"))
    assert frame is not None
    assert isinstance(frame.data, str) and "\n" not in frame.data
    assert frame.size == len(frame.data.encode())
    assert orjson.loads(frame.data) == {
        "op": "message",
        "channel": "room",
        "data": {"text": "line one\nline two", "n": [1, 2]},
        "offset": 3,
        "from": "c1",
    }


def test_json_encode_is_compact_text() -> None:
    """Replies and pushes are compact JSON text frames whose size counts UTF-8 bytes."""
    frame = JSON.encode({"id": 1, "result": {"text": "é"}})
    assert frame.data == '{"id":1,"result":{"text":"é"}}'
    assert frame.size == len(frame.data.encode())
    assert JSON.encode(PING).data == '{"op":"ping"}'


def test_json_decode_returns_the_value() -> None:
    """A text message decodes to its JSON value."""
    assert JSON.decode('{"op":"pong","id":"é"}', None) == {"op": "pong", "id": "é"}
    assert JSON.decode("[1]", None) == [1]  # not an object: the protocol layer refuses it


# -- raw JSON (library mode) ------------------------------------------------------------------


def test_raw_json_message_is_the_data_itself() -> None:
    """Library mode sends the published bytes as a text frame, no envelope, no offset."""
    frame = RAW_JSON.message("chat", Publication(b'{"user":"anon","text":""}', 3, "c"))
    assert frame.data == '{"user":"anon","text":""}'
    assert frame.size == 25


def test_raw_json_message_size_counts_bytes() -> None:
    """The frame size is the UTF-8 size, not the character count."""
    data = encode_data({"text": "😀"})
    frame = RAW_JSON.message("chat", Publication(data))
    assert frame.size == len(data) == len(frame.data) + 3


# -- MessagePack ------------------------------------------------------------------------------


def test_msgpack_encode_is_a_binary_frame() -> None:
    """MessagePack frames are bytes and unpack to the object."""
    frame = MSGPACK.encode({"id": 1, "result": {"b": b"\x00"}})
    assert isinstance(frame.data, bytes)
    assert frame.size == len(frame.data)
    assert msgpack.unpackb(frame.data) == {"id": 1, "result": {"b": b"\x00"}}


@pytest.mark.parametrize(
    "obj",
    [
        {"op": "publish", "id": 1, "channel": "room", "data": {"k": [1, 2.5, None, "é"]}},
        {"op": "pong"},
        {"op": "subscribe", "id": "x" * 64, "channel": "c", "since": 2**40},
    ],
)
def test_msgpack_roundtrip(obj: dict[str, Any]) -> None:
    """What the codec encodes, it decodes back unchanged."""
    frame = MSGPACK.encode(obj)
    assert isinstance(frame.data, bytes)
    assert MSGPACK.decode(None, frame.data) == obj


@pytest.mark.parametrize("offset", [None, 5])
@pytest.mark.parametrize("origin", [None, "c1"])
def test_msgpack_message_carries_the_same_envelope(offset: int | None, origin: str | None) -> None:
    """A publication reaches MessagePack clients as the same envelope, data decoded."""
    data = {"text": "hé", "n": [1, 2]}
    frame = MSGPACK.message("room", Publication(encode_data(data), offset, origin))
    assert isinstance(frame.data, bytes)
    expected: dict[str, Any] = {"op": "message", "channel": "room", "data": data}
    if offset is not None:
        expected["offset"] = offset
    if origin is not None:
        expected["from"] = origin
    assert msgpack.unpackb(frame.data) == expected


# -- presence events ---------------------------------------------------------------------


@pytest.mark.parametrize("event", ["join", "leave"])
def test_presence_event_frames(event: str) -> None:
    """join/leave reach protocol clients as ``{"op", "channel", "client", "user"}``."""
    publication = Publication(encode_data({"client": "c1", "user": "bob"}), event=event)
    expected = {"op": event, "channel": "room", "client": "c1", "user": "bob"}
    text = JSON.message("room", publication)
    assert text is not None and isinstance(text.data, str)
    assert text.data == orjson.dumps(expected).decode()
    binary = MSGPACK.message("room", publication)
    assert binary is not None and isinstance(binary.data, bytes)
    assert msgpack.unpackb(binary.data) == expected


def test_library_mode_gets_no_presence_events() -> None:
    """Raw JSON connections (the seed chat) never see join/leave frames."""
    publication = Publication(encode_data({"client": "c1", "user": None}), event="join")
    assert RAW_JSON.message("chat", publication) is None


# -- bad input --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "NaN",
        '{"op":"publish","channel":"c","data":NaN}',
        '{"data":Infinity}',
        '{"data":-Infinity}',
        '{"data":1e400}',
        '"\\ud800"',
        '{"data":"\\udfff"}',
        '{"data":"\\udc00\\ud800"}',
        "",
        "{",
        "{'op':'pong'}",
        '{"op":"pong"} {"op":"pong"}',
        '{"op":"pong",}',
    ],
)
def test_json_decode_refuses_what_json_cannot_say(text: str) -> None:
    """NaN, infinities, lone surrogate escapes and malformed text are bad requests."""
    assert refused(JSON, text, None).message.startswith("invalid JSON")


def test_json_decode_refuses_text_carrying_a_surrogate() -> None:
    """Text that is not valid Unicode (a surrogate code point) is refused, not passed on."""
    refused(JSON, '{"data":"\udcff"}', None)


def test_json_decode_accepts_a_surrogate_pair_escape() -> None:
    """A correctly paired escape is one character."""
    assert JSON.decode('"\\ud83d\\ude00"', None) == "😀"


def test_json_nesting_limit_is_1024() -> None:
    """1024 levels decode; one more is refused (orjson's limit keeps the stack bounded)."""
    assert JSON.decode(nested(1024), None) is not None
    refused(JSON, nested(1025), None)
    refused(JSON, '{"op":"publish","channel":"c","data":' + nested(2000) + "}", None)


@pytest.mark.parametrize("codec", [JSON, RAW_JSON])
def test_binary_on_a_json_codec_is_refused(codec: Codec) -> None:
    """A binary message where JSON text is expected is a bad request, even if it is JSON."""
    assert "text frame" in refused(codec, None, b'{"op":"pong"}').message


def test_text_on_msgpack_is_refused() -> None:
    """A text message on the MessagePack subprotocol is a bad request."""
    assert "binary frame" in refused(MSGPACK, '{"op":"pong"}', None).message


@pytest.mark.parametrize(
    "data",
    [
        b"",  # nothing
        b"\xc1",  # the one byte MessagePack never uses
        b"\x92\x01",  # truncated array
        b"\x01\x02",  # trailing data after a value
        b"\xa2\xff\xfe",  # a str that is not UTF-8
        b"\x81\x01\x02",  # an integer map key
        b"\x91" * 2000 + b"\x90",  # nesting 2000 deep
    ],
)
def test_msgpack_decode_refuses_bad_bytes(data: bytes) -> None:
    """Malformed, non-UTF-8, integer-keyed and too deeply nested MessagePack is refused."""
    error = refused(MSGPACK, None, data)
    assert error.message.startswith("invalid MessagePack: ")
    assert error.message != "invalid MessagePack: "  # always says what went wrong


def test_encode_data_is_compact_json() -> None:
    """Published data is encoded once, as compact JSON bytes."""
    assert encode_data({"a": [1, "é"]}) == '{"a":[1,"é"]}'.encode()


@pytest.mark.parametrize("data", [b"bytes", {1: "int key"}, {"s": {1, 2}}, 2**64, object()])
def test_encode_data_refuses_what_json_cannot_represent(data: object) -> None:
    """Values JSON cannot carry raise TypeError, which the hub turns into a PublishError."""
    with pytest.raises(TypeError):
        encode_data(data)


def test_encode_data_refuses_deep_nesting() -> None:
    """orjson's encoder stops at a nesting depth far below the decoder's, with a TypeError."""
    value: list[Any] = []
    for _ in range(300):
        value = [value]
    with pytest.raises(TypeError):
        encode_data(value)
