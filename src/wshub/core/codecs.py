"""Codecs: how objects become frames and frames become objects, per subprotocol.

Three codecs, one per way a connection sees publications:

- `JsonCodec` (subprotocol ``wshub.v1.json``, the default): text frames, protocol
  envelopes, several frames may be packed into one message separated by ``\\n``;
- `UnpackedJsonCodec` (``wshub.v1.json.unpacked``): the same text frames, one per
  message, never packed (for clients that ``JSON.parse`` each message);
- `MsgpackCodec` (``wshub.v1.msgpack``): binary frames, the same objects;
- `RawJsonCodec` (library mode, such as the seed chat): text frames carrying the
  published data itself, no envelope, never packed.

Publication payloads arrive as JSON bytes (encoded once by the publisher); the
JSON envelope is spliced around them without decoding them again.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, ClassVar

import msgpack
import orjson

from wshub.core.errors import ErrorCode, ProtocolError
from wshub.core.sendqueue import Frame
from wshub.core.types import Publication

JSON_SUBPROTOCOL = "wshub.v1.json"
JSON_UNPACKED_SUBPROTOCOL = "wshub.v1.json.unpacked"
MSGPACK_SUBPROTOCOL = "wshub.v1.msgpack"
#: The subprotocols the protocol endpoint accepts, in the order documented.
PROTOCOL_SUBPROTOCOLS: tuple[str, ...] = (
    JSON_SUBPROTOCOL,
    JSON_UNPACKED_SUBPROTOCOL,
    MSGPACK_SUBPROTOCOL,
)


def dumps(obj: object) -> bytes:
    """orjson.dumps, right-sized.

    orjson's result keeps its whole output buffer (about 4 KiB even for a 20-byte
    document). Bytes that outlive the call (queued frames, published payloads,
    history) are copied once into an object of their own size, so that the send
    queue's byte limit and the history's size mean what they say in memory too.

    Raises:
        TypeError: JSON cannot represent ``obj`` (orjson.JSONEncodeError is a TypeError).
    """
    return memoryview(orjson.dumps(obj)).tobytes()


def encode_data(data: object) -> bytes:
    """Encode published data as JSON, once per publication.

    Raises:
        TypeError: JSON cannot represent ``data``.
    """
    return dumps(data)


class Codec:
    """Turns objects into frames and incoming messages into objects.

    Attributes:
        subprotocol: the WebSocket subprotocol that selects the codec, if any.
        binary: whether frames are binary (else text).
        packs: whether several frames may share one WebSocket message.
        index: a small integer naming the codec, used to cache frames per codec.
    """

    subprotocol: ClassVar[str | None] = None
    binary: ClassVar[bool] = False
    packs: ClassVar[bool] = False
    index: ClassVar[int] = 0

    def encode(self, obj: object) -> Frame:
        """Encode one object as a frame."""
        return Frame.text(dumps(obj))

    def decode(self, text: str | None, data: bytes | None) -> Any:
        """Decode one incoming WebSocket message (its ``text`` or its ``bytes``).

        Raises:
            ProtocolError: ``bad_request`` for a frame of the wrong kind or bad encoding.
        """
        if text is None:
            raise ProtocolError(ErrorCode.BAD_REQUEST, "expected a text frame carrying JSON")
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            raise ProtocolError(ErrorCode.BAD_REQUEST, f"invalid JSON: {exc}") from None

    def message(self, channel: str, publication: Publication) -> Frame | None:
        """Build the frame that delivers ``publication`` on ``channel``.

        Returns:
            The frame, or None when this codec's clients don't get such publications
            (library-mode connections get no join/leave events).
        """
        if publication.event is not None:
            return None
        return Frame.text(publication.data)


class RawJsonCodec(Codec):
    """Library mode: publications arrive as their data, one JSON text frame each."""

    index = 0


class JsonCodec(Codec):
    """Protocol endpoint, ``wshub.v1.json``: JSON envelopes in text frames, packable."""

    subprotocol = JSON_SUBPROTOCOL
    packs = True
    index = 1

    def message(self, channel: str, publication: Publication) -> Frame | None:
        if publication.event is not None:
            # data is the JSON object {"client":..,"user":..}: splice the op and channel in.
            head = b'{"op":"%s","channel":%s,' % (publication.event.encode(), orjson.dumps(channel))
            return Frame.text(head + publication.data[1:])
        data = publication.data
        if b"\n" in data:
            # Pretty JSON from outside (redis-cli) would split the frame for clients that
            # unpack on "\n"; a raw newline in valid JSON is only ever whitespace.
            data = data.replace(b"\n", b" ")
        parts = [b'{"op":"message","channel":', orjson.dumps(channel), b',"data":', data]
        if publication.offset is not None:
            parts.append(b',"offset":%d' % publication.offset)
        if publication.origin is not None:
            parts += (b',"from":', orjson.dumps(publication.origin))
        parts.append(b"}")
        return Frame.text(b"".join(parts))


class UnpackedJsonCodec(JsonCodec):
    """``wshub.v1.json.unpacked``: the JSON codec's frames, one per WebSocket message.

    It shares `JsonCodec`'s index, so fan-out builds each frame once for both.
    """

    subprotocol = JSON_UNPACKED_SUBPROTOCOL
    packs = False


class MsgpackCodec(Codec):
    """Protocol endpoint, ``wshub.v1.msgpack``: the same objects as MessagePack binary frames."""

    subprotocol = MSGPACK_SUBPROTOCOL
    binary = True
    index = 2

    def encode(self, obj: object) -> Frame:
        return Frame.binary(msgpack.packb(obj, use_bin_type=True))

    def decode(self, text: str | None, data: bytes | None) -> Any:
        if data is None:
            message = "expected a binary frame carrying MessagePack"
            raise ProtocolError(ErrorCode.BAD_REQUEST, message)
        try:
            obj = msgpack.unpackb(data, raw=False, strict_map_key=True)
        except Exception as exc:  # msgpack raises many unrelated types for bad input
            # Some (StackError for deep nesting, FormatError) carry no text: name the type.
            problem = str(exc) or type(exc).__name__
            raise ProtocolError(ErrorCode.BAD_REQUEST, f"invalid MessagePack: {problem}") from None
        # JSON has no NaN or infinity, and data is published as JSON: refuse them, as the
        # JSON codec does, rather than let them become null. Only frames holding a float
        # marker byte (0xca float 32, 0xcb float 64) are walked.
        if (b"\xcb" in data or b"\xca" in data) and not _finite(obj):
            raise ProtocolError(ErrorCode.BAD_REQUEST, "invalid MessagePack: NaN or infinity")
        return obj

    def message(self, channel: str, publication: Publication) -> Frame | None:
        if publication.event is not None:
            event = {"op": publication.event, "channel": channel}
            return self.encode({**event, **orjson.loads(publication.data)})
        frame: dict[str, Any] = {
            "op": "message",
            "channel": channel,
            "data": orjson.loads(publication.data),
        }
        if publication.offset is not None:
            frame["offset"] = publication.offset
        if publication.origin is not None:
            frame["from"] = publication.origin
        return self.encode(frame)


#: One instance of each codec, indexed by `Codec.index`.
CODECS: tuple[Codec, ...] = (RawJsonCodec(), JsonCodec(), MsgpackCodec())
RAW_JSON, JSON, MSGPACK = CODECS
#: Not in `CODECS`: it encodes like `JSON` (same index), only the writer packs no frames.
JSON_UNPACKED = UnpackedJsonCodec()
_BY_SUBPROTOCOL: dict[str, Codec] = {
    JSON_SUBPROTOCOL: JSON,
    JSON_UNPACKED_SUBPROTOCOL: JSON_UNPACKED,
    MSGPACK_SUBPROTOCOL: MSGPACK,
}


def codec_for_subprotocols(offered: list[str]) -> Codec:
    """Pick the protocol endpoint's codec from the client's offered subprotocols.

    The first offered subprotocol wshub knows wins; with none known, JSON.
    """
    chosen = negotiate_subprotocol(offered, PROTOCOL_SUBPROTOCOLS)
    return JSON if chosen is None else _BY_SUBPROTOCOL[chosen]


def negotiate_subprotocol(offered: list[str], supported: Iterable[str]) -> str | None:
    """The first subprotocol in ``offered`` (the client's order) that is ``supported``.

    None when the client offered none of them (or nothing at all).
    """
    accepted = set(supported)
    return next((name for name in offered if name in accepted), None)


def refusal_subprotocol(offered: list[str], supported: Iterable[str] = ()) -> str | None:
    """The subprotocol to accept a connection with that is closed right away (4001, 4003...).

    Browsers and most client libraries fail a connection whose handshake answer does
    not name one of the subprotocols they offered (close code 1006, the server's
    close code never seen). A refusal carries no frame but the close, so any offered
    name will do: the first ``supported`` one, else the client's first offer.
    """
    chosen = negotiate_subprotocol(offered, supported)
    if chosen is None and offered:
        return offered[0]
    return chosen


def unsupported_reason(supported: Iterable[str]) -> str:
    """The reason of the 4002 close: what the route would have accepted."""
    names = ", ".join(supported)
    if not names:
        return "unsupported subprotocol: offer none here"
    return f"unsupported subprotocol: offer one of {names}"


def _finite(obj: object) -> bool:
    """Whether no float in ``obj`` is NaN or infinite (msgpack already bounded the depth)."""
    if isinstance(obj, float):
        return math.isfinite(obj)
    if isinstance(obj, dict):
        return all(_finite(v) for v in obj.values())
    if isinstance(obj, list):
        return all(_finite(v) for v in obj)
    return True
