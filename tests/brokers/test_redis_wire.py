"""The Redis wire format: plain JSON passes through untouched, envelopes carry metadata."""

from __future__ import annotations

import orjson
import pytest

from wshub.brokers import broker_from_url
from wshub.brokers.base import Publication
from wshub.brokers.redis import RedisBroker, check_url, redis_location
from wshub.brokers.redis_wire import (
    ENVELOPE_MARK,
    decode_payload,
    encode_payload,
    offset_header_rest,
)


def test_plain_json_is_published_as_is() -> None:
    """Without metadata the payload is the data object itself: no envelope, no copy."""
    data = b'{"user":"x","text":"y"}'
    assert encode_payload(data) is data


def test_envelope_layout() -> None:
    """With an origin the payload is 0x1E, a JSON header, a newline, then the data bytes."""
    assert encode_payload(b"[1,2]", "c-1") == b'\x1e{"from":"c-1"}\n[1,2]'


def test_plain_json_decodes_to_the_same_bytes_object() -> None:
    """A plain JSON payload is handed on as the very bytes object received."""
    payload = b' { "a" : 1 } '
    publication = decode_payload(payload)
    assert publication == Publication(payload)
    assert publication is not None and publication.data is payload


@pytest.mark.parametrize("origin", ["c1", "ünïcode-ø", 'quote"and\nnewline'])
def test_envelope_round_trip(origin: str) -> None:
    """decode(encode(data, origin)) gives back the data bytes and the origin."""
    data = b'{"k":[true,null,"\\n"]}'
    assert decode_payload(encode_payload(data, origin)) == Publication(data, None, origin)


def test_envelope_header_may_carry_an_offset_and_unknown_keys() -> None:
    """An envelope header's offset is read; keys it does not know are ignored."""
    payload = ENVELOPE_MARK + b'{"from":"c","offset":7,"future":1}\n"x"'
    assert decode_payload(payload) == Publication(b'"x"', 7, "c")


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"not json",
        b'{"a":',
        b"\xff\xfe",
        b"\x1e",
        b'\x1e{"from":"c"}',  # no newline
        b'\x1e{"from":"c"}\nnot json',
        b"\x1enot json\n1",
        b'\x1e["c"]\n1',  # header not an object
        b'\x1e{"from":3}\n1',
        b'\x1e{"offset":"7"}\n1',
        b'\x1e{"offset":true}\n1',
    ],
)
def test_invalid_payloads_decode_to_none(payload: bytes) -> None:
    """Neither JSON nor a well-formed envelope: decode_payload says None."""
    assert decode_payload(payload) is None


def test_envelope_mark_never_starts_json() -> None:
    """No JSON text can start with the envelope mark, so plain JSON is never misread."""
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(ENVELOPE_MARK + b"1")


def test_broker_from_url_builds_a_redis_broker() -> None:
    """redis://, rediss:// and unix:// URLs map to RedisBroker."""
    for url in ("redis://localhost:1/0", "rediss://h:2", "unix:///tmp/redis.sock"):
        assert isinstance(broker_from_url(url), RedisBroker)


def test_non_redis_url_is_refused_without_leaking_it() -> None:
    """A non-Redis URL raises ValueError whose message does not echo the URL's password."""
    with pytest.raises(ValueError, match="not a Redis URL") as caught:
        check_url("http://user:s3cret@host/")
    assert "s3cret" not in str(caught.value)
    with pytest.raises(ValueError):
        RedisBroker("memory://")


def test_location_hides_credentials() -> None:
    """Logs and errors name host and port, never the password."""
    assert redis_location("redis://u:s3cret@cache:6380/2") == "cache:6380"
    assert redis_location("unix:///run/redis.sock") == "unix:/run/redis.sock"


def test_envelope_header_keys_come_in_a_fixed_order() -> None:
    """The header lists offset, from, event in that order, leaving out absent keys."""
    assert encode_payload(b"1", "c", offset=7) == b'\x1e{"offset":7,"from":"c"}\n1'
    assert encode_payload(b"1", offset=7) == b'\x1e{"offset":7}\n1'
    assert encode_payload(b"{}", event="join") == b'\x1e{"event":"join"}\n{}'


@pytest.mark.parametrize("origin", [None, "c-1", 'q"\n'])
def test_offset_header_rest_completes_the_offset_envelope(origin: str | None) -> None:
    """The Lua script's splice (head, offset, rest, newline, data) equals encode_payload."""
    data = b'{"a":1}'
    spliced = b'\x1e{"offset":' + b"42" + offset_header_rest(origin) + b"\n" + data
    assert spliced == encode_payload(data, origin, offset=42)


@pytest.mark.parametrize("event", ["join", "leave"])
def test_event_envelope_round_trip(event: str) -> None:
    """A presence change decodes with its event, no offset, and the data bytes unchanged."""
    data = b'{"client":"c1","user":"ann"}'
    payload = encode_payload(data, "c1", event=event)
    assert decode_payload(payload) == Publication(data, None, "c1", event)


@pytest.mark.parametrize(
    "payload",
    [
        b'\x1e{"event":"kick"}\n{"client":"c"}',  # not a presence event
        b'\x1e{"event":1}\n{"client":"c"}',
        b'\x1e{"event":"join","offset":3}\n{"client":"c"}',  # events are never kept
        b'\x1e{"event":"join"}\n[1]',  # the codecs splice an object's members
        b'\x1e{"event":"join"}\n{}',
        b'\x1e{"event":"join"}\n {"client":"c"}',
        b'\x1e{"event":"join"}\n{"client":\n"c"}',  # would split a packed frame
    ],
)
def test_malformed_event_envelopes_decode_to_none(payload: bytes) -> None:
    """Events from outside must be ones the codecs can splice without re-encoding."""
    assert decode_payload(payload) is None
