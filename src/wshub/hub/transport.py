"""The transport fast path: pre-framed WebSocket messages written straight to the socket.

Through ASGI, every send of a text frame costs, per recipient, a UTF-8 encode of
the text (uvicorn), building the WebSocket frame (websockets' sans-I/O protocol)
and a join of its parts. A publication reaching 1,000 clients pays that 1,000
times, although the bytes on the wire are the same for all of them.

On a server it knows, wshub builds the frame's bytes once per publication
(`frame_bytes`, cached on the shared `Frame`) and each writer hands them to the
transport. It still honours the protocol's flow control (waits while the
transport is paused) and stops as soon as the WebSocket is no longer open in
both directions; everything else (the handshake, receiving, pings, the close
handshake) stays with the server. On any other server, or when the setting
``transport_fast_path`` is off, `FastPath.find` returns None and the writer
uses plain ASGI sends.

Known server: uvicorn's ``websockets-sansio`` implementation (its default).
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable
from typing import Any

from websockets.protocol import State

OP_TEXT = 0x1
OP_BINARY = 0x2
_MAX_DEPTH = 6  # ASGI middlewares wrap `send` in closures; never walk far


def frame_header(length: int, opcode: int) -> bytes:
    """The header of an unmasked, unfragmented server-to-client frame (RFC 6455, 5.2).

    Args:
        length: the payload's length in bytes.
        opcode: `OP_TEXT` or `OP_BINARY`.
    """
    first = 0x80 | opcode  # FIN + opcode
    if length < 126:
        return bytes((first, length))
    if length < 1 << 16:
        return struct.pack("!BBH", first, 126, length)
    return struct.pack("!BBQ", first, 127, length)


def frame_bytes(payload: bytes, opcode: int) -> bytes:
    """A whole frame: header and payload."""
    return frame_header(len(payload), opcode) + payload


class FastPath:
    """Writes frames on the transport under a WebSocket protocol object wshub knows.

    Build it with `find`; use `open` before each write and `write` to send.
    """

    __slots__ = ("_protocol", "_transport", "_conn", "_writable")

    def __init__(self, protocol: Any) -> None:
        self._protocol = protocol
        self._transport: asyncio.Transport = protocol.transport
        self._conn = protocol.conn  # websockets' ServerProtocol: the connection's state
        self._writable: asyncio.Event = protocol.writable

    @classmethod
    def find(cls, send: Callable[..., Any] | None) -> FastPath | None:
        """Find the server's protocol object behind an ASGI ``send`` callable.

        Returns:
            A fast path, or None when ``send`` does not lead to a known protocol.
        """
        protocol = _find_protocol(send, _MAX_DEPTH)
        return None if protocol is None else cls(protocol)

    def open(self) -> bool:
        """Whether data frames may still be written (open both ways, no close sent)."""
        protocol = self._protocol
        return (
            self._conn.state is State.OPEN
            and not protocol.close_sent
            and not protocol.disconnected
            and not self._transport.is_closing()
        )

    def ready(self) -> bool:
        """Whether a write can go out now: open, and the transport not paused."""
        return self._writable.is_set() and self.open()

    def write_nowait(self, data: bytes) -> None:
        """Write whole frames now; call only when `ready` is true."""
        self._transport.write(data)

    async def write(self, data: bytes) -> None:
        """Write whole frames, waiting first while the transport's buffer is full.

        Raises:
            ConnectionError: the connection closed while waiting.
        """
        if not self._writable.is_set():
            await self._writable.wait()
            if not self.open():
                raise ConnectionError("the connection closed while its buffer was full")
        self._transport.write(data)


def _find_protocol(send: object, depth: int) -> Any:
    if send is None or depth < 0:
        return None
    owner = getattr(send, "__self__", None)
    if owner is not None and _is_known(owner):
        return owner
    for cell in getattr(send, "__closure__", None) or ():
        try:
            inner = cell.cell_contents
        except ValueError:  # an empty cell
            continue
        if callable(inner):
            found = _find_protocol(inner, depth - 1)
            if found is not None:
                return found
    return None


def _is_known(owner: object) -> bool:
    try:
        from uvicorn.protocols.websockets.websockets_sansio_impl import (
            WebSocketsSansIOProtocol,
        )
    except ImportError:  # pragma: no cover - uvicorn without websockets
        return False
    return isinstance(owner, WebSocketsSansIOProtocol)
