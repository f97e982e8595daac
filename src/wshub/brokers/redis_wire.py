"""The Redis wire format: what a payload on ``PUBLISH <prefix><channel>`` means.

Two formats, told apart by the first byte (docs/redis.md, "Wire format"):

- a JSON text is the publication's ``data`` as it is, so any program can publish
  with a plain ``PUBLISH wshub:chat '{"text":"hi"}'``;
- `ENVELOPE_MARK` (0x1E, which never starts a JSON text) starts an envelope:
  ``0x1E <header JSON object> 0x0A <data JSON text>``. The header carries
  ``offset`` (history offset), ``from`` (origin client id) and ``event``
  (``join``/``leave``), in that order; unknown keys are ignored.

This module holds no I/O: bytes in, `Publication` out, and back. The history
script (`wshub.brokers.redis_scripts`) writes the same envelope from Lua, with
the header split by `offset_header_rest`.
"""

from __future__ import annotations

from typing import Any, Final

import orjson

from wshub.brokers.base import Publication

#: First byte of an envelope: ASCII Record Separator, which can never start a JSON text.
ENVELOPE_MARK: Final = b"\x1e"
#: The ``event`` values a header may carry: presence changes.
EVENTS: Final = frozenset({"join", "leave"})


def encode_payload(
    data: bytes,
    origin: str | None = None,
    *,
    offset: int | None = None,
    event: str | None = None,
) -> bytes:
    """Build the Redis payload for a publication.

    Args:
        data: the publication, already a JSON text.
        origin: the publishing client's id, if any.
        offset: the publication's history offset, if it has one.
        event: ``"join"`` or ``"leave"`` for a presence change.

    Returns:
        ``data`` itself without metadata, else the envelope
        ``0x1E {"offset":..,"from":..,"event":..} 0x0A data`` (absent keys left out).
    """
    if origin is None and offset is None and event is None:
        return data
    header: dict[str, Any] = {}
    if offset is not None:
        header["offset"] = offset
    if origin is not None:
        header["from"] = origin
    if event is not None:
        header["event"] = event
    return b"".join((ENVELOPE_MARK, orjson.dumps(header), b"\n", data))


def offset_header_rest(origin: str | None) -> bytes:
    """The header bytes that follow the offset, for the history script to splice.

    The script knows the offset only inside Redis, so it writes
    ``0x1E {"offset":<n>`` itself and appends these bytes, then ``0x0A`` and the data;
    the result equals ``encode_payload(data, origin, offset=n)``.

    Args:
        origin: the publishing client's id, if any.

    Returns:
        ``}`` or ``,"from":"<origin>"}``.
    """
    if origin is None:
        return b"}"
    return b"," + orjson.dumps({"from": origin})[1:]


def decode_payload(payload: bytes) -> Publication | None:
    """Read a Redis payload back into a publication.

    Args:
        payload: the bytes Redis delivered.

    Returns:
        The publication; its ``data`` is ``payload`` itself for plain JSON. None
        when the payload is neither a JSON text nor a well-formed envelope.
    """
    try:
        if payload.startswith(ENVELOPE_MARK):
            return _decode_envelope(payload)
        orjson.loads(payload)  # validation only: the bytes are handed on unchanged
        return Publication(payload)
    except ValueError:  # orjson.JSONDecodeError, or an envelope without its newline
        return None


def _decode_envelope(payload: bytes) -> Publication | None:
    end = payload.index(b"\n")
    header = orjson.loads(payload[1:end])
    data = payload[end + 1 :]
    value = orjson.loads(data)
    if not isinstance(header, dict):
        return None
    origin, offset, event = header.get("from"), header.get("offset"), header.get("event")
    if origin is not None and not isinstance(origin, str):
        return None
    if offset is not None and type(offset) is not int:
        return None
    if event is not None and not _is_event(event, offset, data, value):
        return None
    return Publication(data, offset, origin, event)


def _is_event(event: object, offset: object, data: bytes, value: object) -> bool:
    """Tell whether an envelope is a presence change the codecs can splice safely.

    The JSON codec splices the event name and the data object's members into its
    frame without re-encoding, so a payload from outside must not be able to inject
    bytes there: the event must be a known name and the data a one-line, non-empty
    object. Events are never kept in history, so they carry no offset.
    """
    return (
        event in EVENTS
        and offset is None
        and isinstance(value, dict)
        and bool(value)
        and data.startswith(b"{")
        and b"\n" not in data
    )
