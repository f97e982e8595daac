"""The SSE position token: the ``id`` of every event, sent back as ``Last-Event-ID``.

It holds the position of every channel of the stream, so that a reconnect resumes
each exactly where it left off (see `wshub.server.sse` and docs/protocol.md).
"""

from __future__ import annotations

import base64
import binascii

import orjson

__all__ = ["MAX_TOKEN_CHARS", "decode_position_token", "encode_position_token"]

#: Longest ``Last-Event-ID`` accepted, in characters.
MAX_TOKEN_CHARS = 4096


def encode_position_token(positions: dict[str, tuple[int, str]]) -> str:
    """The ``id`` of an event: base64url (unpadded) of ``{channel: [offset, epoch]}``."""
    compact = {channel: [offset, epoch] for channel, (offset, epoch) in positions.items()}
    return base64.urlsafe_b64encode(orjson.dumps(compact)).rstrip(b"=").decode()


def decode_position_token(token: str) -> dict[str, tuple[int, str]]:
    """Read a position token back.

    Raises:
        ValueError: it is not one (too long, not base64url JSON, or of the wrong shape).
    """
    if len(token) > MAX_TOKEN_CHARS:
        raise ValueError("position token too long")
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        value = orjson.loads(raw)
    except (binascii.Error, ValueError):
        raise ValueError("position token is not base64url JSON") from None
    if not isinstance(value, dict):
        raise ValueError("position token is not an object")
    positions: dict[str, tuple[int, str]] = {}
    for channel, position in value.items():
        if (
            not isinstance(position, list)
            or len(position) != 2
            or not isinstance(position[0], int)
            or isinstance(position[0], bool)
            or position[0] < 0
            or not isinstance(position[1], str)
            or len(position[1]) > 64
        ):
            raise ValueError(f"bad position for channel {channel!r}")
        positions[channel] = (position[0], position[1])
    return positions
