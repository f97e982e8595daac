"""Wire protocol v1, Sans-I/O: decoded frames in, commands and reply frames out."""

from __future__ import annotations

import pytest

from wshub.brokers.base import Publication
from wshub.core.channels import MAX_CHANNEL_LENGTH
from wshub.core.errors import ErrorCode, ProtocolError
from wshub.core.protocol import (
    MAX_ID_LENGTH,
    MAX_REASON_BYTES,
    PROTOCOL_VERSION,
    Command,
    Op,
    error_reply,
    parse_command,
    publication_object,
    reply,
    truncate_reason,
    welcome,
)


def refused(frame: object) -> ProtocolError:
    """Parse ``frame``, expecting a ``bad_request``; return the error."""
    with pytest.raises(ProtocolError) as info:
        parse_command(frame)
    assert info.value.code is ErrorCode.BAD_REQUEST
    return info.value


# -- every op, well formed --------------------------------------------------------------------


def test_subscribe_parses_channel_and_id() -> None:
    """A plain subscribe carries its id and channel, no recovery fields."""
    command = parse_command({"op": "subscribe", "id": 1, "channel": "room"})
    assert command == Command(Op.SUBSCRIBE, 1, "room")


def test_subscribe_parses_since_and_epoch() -> None:
    """A subscribe with recovery fields keeps since and epoch."""
    frame = {"op": "subscribe", "id": "a", "channel": "room", "since": 0, "epoch": "e1"}
    assert parse_command(frame) == Command(Op.SUBSCRIBE, "a", "room", since=0, epoch="e1")


def test_subscribe_treats_null_since_and_epoch_as_absent() -> None:
    """``since: null`` and ``epoch: null`` mean no recovery, not an error."""
    frame = {"op": "subscribe", "channel": "room", "since": None, "epoch": None}
    assert parse_command(frame) == Command(Op.SUBSCRIBE, None, "room")


def test_unsubscribe_parses_channel() -> None:
    """An unsubscribe names its channel."""
    command = parse_command({"op": "unsubscribe", "id": 2, "channel": "room"})
    assert command == Command(Op.UNSUBSCRIBE, 2, "room")


@pytest.mark.parametrize("data", [None, 0, "", [], {}, {"nested": [1, 2.5, "x", None]}])
def test_publish_keeps_any_data_value(data: object) -> None:
    """Publish accepts every JSON value as data, null and empty values included."""
    command = parse_command({"op": "publish", "id": 3, "channel": "room", "data": data})
    assert command == Command(Op.PUBLISH, 3, "room", data=data)


def test_pong_needs_nothing_else() -> None:
    """A pong is valid on its own, and extra fields are ignored."""
    assert parse_command({"op": "pong"}) == Command(Op.PONG)
    assert parse_command({"op": "pong", "channel": 5}) == Command(Op.PONG)


def test_unknown_fields_are_ignored() -> None:
    """Fields the op does not use do not make a frame invalid (forward compatibility)."""
    command = parse_command({"op": "unsubscribe", "channel": "room", "future": True})
    assert command == Command(Op.UNSUBSCRIBE, None, "room")


@pytest.mark.parametrize("request_id", [0, -1, 2**63 - 1, "", "x" * MAX_ID_LENGTH])
def test_id_accepts_integers_and_strings_up_to_the_limit(request_id: int | str) -> None:
    """Any integer and any string of at most MAX_ID_LENGTH characters is a usable id."""
    assert parse_command({"op": "pong", "id": request_id}).id == request_id


# -- bad frames -------------------------------------------------------------------------------


@pytest.mark.parametrize("frame", [None, 1, 1.5, "subscribe", [], [{"op": "pong"}], True])
def test_frame_that_is_not_an_object_is_refused(frame: object) -> None:
    """Only objects are frames; the error says so and carries no id."""
    error = refused(frame)
    assert "object" in error.message
    assert error.request_id is None


def test_missing_op_is_refused_with_the_request_id() -> None:
    """A frame without op is a bad request that still echoes its id."""
    error = refused({"id": 7, "channel": "room"})
    assert error.request_id == 7
    assert error.message.startswith("missing 'op'")


@pytest.mark.parametrize("op", ["bogus", "SUBSCRIBE", "Publish", "", " pong", "pong\n"])
def test_unknown_op_is_refused_naming_it(op: str) -> None:
    """An op wshub does not serve is a bad request saying the op is unknown."""
    error = refused({"op": op, "id": "r1", "channel": "room"})
    assert error.request_id == "r1"
    assert error.message.startswith(f"unknown op {op!r}")
    assert "subscribe" in error.message  # lists the known ones


@pytest.mark.parametrize("op", [1, None, True, ["subscribe"], {"op": "subscribe"}])
def test_op_that_is_not_a_string_is_refused(op: object) -> None:
    """An op of another type is refused like a missing or unknown one."""
    error = refused({"op": op, "id": 1, "channel": "room"})
    assert error.request_id == 1


@pytest.mark.parametrize(
    "request_id", [True, False, 1.0, 1.5, [1], {"n": 1}, "x" * (MAX_ID_LENGTH + 1)]
)
def test_unusable_id_is_refused_without_echoing_it(request_id: object) -> None:
    """A bool, float, container or too-long string id is refused; the reply cannot echo it."""
    error = refused({"op": "subscribe", "id": request_id, "channel": "room"})
    assert error.request_id is None
    assert "'id'" in error.message


@pytest.mark.parametrize("op", ["subscribe", "unsubscribe", "publish"])
def test_missing_channel_is_refused(op: str) -> None:
    """Every op that names a channel needs one."""
    error = refused({"op": op, "id": 4, "data": 1})
    assert error.request_id == 4
    assert "'channel'" in error.message


@pytest.mark.parametrize("channel", [1, None, True, ["room"], {"name": "room"}, b"room"])
def test_channel_that_is_not_a_string_is_refused(channel: object) -> None:
    """A channel of another type is a bad request."""
    error = refused({"op": "subscribe", "id": 5, "channel": channel})
    assert error.request_id == 5
    assert "'channel' must be a string" in error.message


@pytest.mark.parametrize(
    "channel", ["", "a" * (MAX_CHANNEL_LENGTH + 1), "#all", "#user:bob", "has space", "é"]
)
def test_invalid_channel_name_is_refused(channel: str) -> None:
    """Empty, too long, reserved (#...) and out-of-alphabet names are refused."""
    error = refused({"op": "publish", "id": 6, "channel": channel, "data": 1})
    assert error.request_id == 6
    assert "invalid channel name" in error.message


def test_publish_without_data_is_refused() -> None:
    """A publish must carry ``data`` (``null`` is fine, absent is not)."""
    error = refused({"op": "publish", "id": 8, "channel": "room"})
    assert error.request_id == 8
    assert "'data'" in error.message


@pytest.mark.parametrize("since", ["1", 1.0, 1.5, True, [1], {"n": 1}])
def test_since_that_is_not_an_integer_is_refused(since: object) -> None:
    """``since`` is an integer offset; strings, floats and bools are refused."""
    error = refused({"op": "subscribe", "id": 9, "channel": "room", "since": since})
    assert error.request_id == 9
    assert "'since' must be an integer" in error.message


def test_negative_since_is_refused() -> None:
    """Offsets start at zero."""
    error = refused({"op": "subscribe", "id": 10, "channel": "room", "since": -1})
    assert "'since'" in error.message


@pytest.mark.parametrize("epoch", [1, 1.5, True, ["e"], {"e": 1}])
def test_epoch_that_is_not_a_string_is_refused(epoch: object) -> None:
    """``epoch`` is a string."""
    error = refused({"op": "subscribe", "id": 11, "channel": "room", "since": 0, "epoch": epoch})
    assert error.request_id == 11
    assert "'epoch' must be a string" in error.message


# -- frames the server builds -----------------------------------------------------------------


def test_reply_shape() -> None:
    """A success reply is exactly ``{"id", "result"}``."""
    assert reply(3, {"offset": 1}) == {"id": 3, "result": {"offset": 1}}
    assert reply("a", {}) == {"id": "a", "result": {}}


def test_error_reply_shape_with_and_without_id() -> None:
    """A failure reply carries the code's value and message, and the id only when known."""
    assert error_reply(3, ErrorCode.FORBIDDEN, "no") == {
        "id": 3,
        "error": {"code": "forbidden", "message": "no"},
    }
    assert error_reply(None, ErrorCode.BAD_REQUEST, "bad") == {
        "error": {"code": "bad_request", "message": "bad"}
    }


def test_error_reply_keeps_falsy_ids() -> None:
    """Id 0 and the empty string are ids, not missing ones."""
    assert error_reply(0, ErrorCode.INTERNAL, "x")["id"] == 0
    assert error_reply("", ErrorCode.INTERNAL, "x")["id"] == ""


def test_welcome_shape() -> None:
    """The welcome names the client, user, ping interval and protocol version."""
    assert welcome("c1", "alice", 25.0) == {
        "op": "welcome",
        "client": "c1",
        "user": "alice",
        "ping": 25,
        "version": PROTOCOL_VERSION,
    }


def test_welcome_ping_is_an_integer_when_whole_and_keeps_fractions() -> None:
    """Whole intervals are sent as integers (``25``), others as they are (``0.5``)."""
    whole = welcome("c", None, 25.0)["ping"]
    assert whole == 25 and isinstance(whole, int)
    assert welcome("c", None, 0.5)["ping"] == 0.5
    assert welcome("c", None, 1)["user"] is None


# -- close reasons ----------------------------------------------------------------------------


def assert_valid_reason(original: str, cut: str, limit: int = MAX_REASON_BYTES) -> None:
    """``cut`` is a prefix of ``original`` that fits ``limit`` bytes and loses < 1 character."""
    encoded = cut.encode()  # raises if it were not valid UTF-8 text
    assert len(encoded) <= limit
    assert original.startswith(cut)
    next_char = original[len(cut) : len(cut) + 1]
    assert len(encoded) + len(next_char.encode()) > limit


def test_short_reason_is_unchanged() -> None:
    """A reason within the limit comes back as it is, the exact limit included."""
    assert truncate_reason("bye") == "bye"
    exact = "x" * MAX_REASON_BYTES
    assert truncate_reason(exact) is exact


def test_close_reason_limit_fits_a_close_frame() -> None:
    """123 bytes of reason plus the 2-byte code is RFC 6455's 125-byte control frame."""
    assert MAX_REASON_BYTES + 2 == 125


@pytest.mark.parametrize("char", ["é", "€", "😀"])
@pytest.mark.parametrize("prefix", ["", "a", "ab", "abc"])
def test_long_reason_is_cut_on_a_character_boundary(prefix: str, char: str) -> None:
    """Multi-byte characters straddling byte 123 are dropped whole, never split."""
    reason = prefix + char * 100
    assert_valid_reason(reason, truncate_reason(reason))


def test_cut_at_every_offset_stays_valid() -> None:
    """Whatever byte a limit falls on, the result is valid UTF-8 within the limit."""
    reason = "aé€😀" * 20
    for limit in range(0, 60):
        assert_valid_reason(reason, truncate_reason(reason, limit), limit)


def test_reason_cut_examples() -> None:
    """Concrete cuts: 2-, 3- and 4-byte characters around the 123-byte limit."""
    assert truncate_reason("é" * 100) == "é" * 61  # 122 bytes
    assert truncate_reason("€" * 100) == "€" * 41  # 123 bytes
    assert truncate_reason("😀" * 100) == "😀" * 30  # 120 bytes


# -- connect, refresh, history ------------------------------------------------------------


def test_connect_token_is_optional() -> None:
    """``connect`` may carry a token (first-frame auth) or none (anonymous)."""
    assert parse_command({"op": "connect", "id": 1, "token": "t"}) == Command(
        Op.CONNECT, 1, token="t"
    )
    assert parse_command({"op": "connect"}) == Command(Op.CONNECT)


def test_refresh_needs_a_token() -> None:
    """``refresh`` without a token is a bad request with the id."""
    assert parse_command({"op": "refresh", "id": 2, "token": "t"}).token == "t"
    error = refused({"op": "refresh", "id": 2})
    assert error.request_id == 2
    assert "'token'" in error.message


@pytest.mark.parametrize("op", ["connect", "refresh"])
@pytest.mark.parametrize("token", [1, True, ["t"], {"t": 1}])
def test_token_that_is_not_a_string_is_refused(op: str, token: object) -> None:
    """A token is a string."""
    error = refused({"op": op, "id": 3, "token": token})
    assert error.request_id == 3
    assert "'token' must be a string" in error.message


def test_history_parses_since_limit_and_epoch() -> None:
    """``history`` reads since, limit and epoch; all optional."""
    frame = {"op": "history", "id": 4, "channel": "room", "since": 5, "limit": 0, "epoch": "e"}
    assert parse_command(frame) == Command(Op.HISTORY, 4, "room", since=5, epoch="e", limit=0)
    assert parse_command({"op": "history", "channel": "room"}) == Command(Op.HISTORY, None, "room")


@pytest.mark.parametrize(("field", "value"), [("limit", -1), ("limit", "5"), ("limit", 1.0)])
def test_history_limit_must_be_a_non_negative_integer(field: str, value: object) -> None:
    """A negative or non-integer limit is refused with the id."""
    error = refused({"op": "history", "id": 5, "channel": "room", field: value})
    assert error.request_id == 5
    assert "'limit'" in error.message


def test_subscribe_ignores_limit() -> None:
    """``limit`` belongs to history; a subscribe carrying one is not affected."""
    command = parse_command({"op": "subscribe", "channel": "room", "limit": -1})
    assert command.limit is None


@pytest.mark.parametrize("op", ["presence", "history"])
def test_presence_and_history_need_a_valid_channel(op: str) -> None:
    """Read ops name a channel like the others."""
    assert "'channel'" in refused({"op": op, "id": 6}).message
    assert "invalid channel name" in refused({"op": op, "id": 6, "channel": "#all"}).message


def test_publication_object_shape() -> None:
    """Recovered and history messages show channel and data, offset and from when known."""
    assert publication_object("room", Publication(b'{"a":1}')) == {
        "channel": "room",
        "data": {"a": 1},
    }
    assert publication_object("room", Publication(b"[]", 0, "c1")) == {
        "channel": "room",
        "data": [],
        "offset": 0,
        "from": "c1",
    }
