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

Known server: uvicorn's ``websockets-sansio`` implementation (its default). The fast
path uses private attributes of its protocol object; `find` checks once per connection
that each of them is there with the type it expects (`_problem`), and otherwise falls
back to plain ASGI, saying so once per process in the ``wshub.transport`` log.
"""

from __future__ import annotations

import asyncio
import functools
import importlib.util
import logging
import struct
from collections.abc import Callable
from typing import Any

from websockets.protocol import State

log = logging.getLogger("wshub.transport")

OP_TEXT = 0x1
OP_BINARY = 0x2
_MAX_DEPTH = 6  # ASGI middlewares wrap `send` in closures; never walk far
_fallback_logged = False  # the fallback to plain ASGI is logged once per process


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
            A fast path, or None (plain ASGI) when ``send`` does not lead to a known
            protocol, or leads to one without the attributes the fast path uses.
        """
        protocol = _find_protocol(send, _MAX_DEPTH)
        if protocol is None:
            return None
        problem = _problem(protocol)
        if problem is not None:
            _fall_back(f"{type(protocol).__qualname__}.{problem}")
            return None
        return cls(protocol)

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
    known = _known_class()
    return known is not None and isinstance(owner, known)


@functools.cache
def _known_class() -> type | None:
    """uvicorn's sans-I/O protocol class; None when it is not there (looked up once)."""
    try:
        from uvicorn.protocols.websockets.websockets_sansio_impl import (
            WebSocketsSansIOProtocol,
        )
    except ImportError:  # uvicorn without websockets, or the class renamed or moved
        if importlib.util.find_spec("uvicorn") is not None:
            _fall_back("uvicorn's WebSocketsSansIOProtocol is not found")
        return None
    return WebSocketsSansIOProtocol if isinstance(WebSocketsSansIOProtocol, type) else None


def _problem(protocol: object) -> str | None:
    """What the fast path needs and ``protocol`` lacks (``"conn.state is missing"``), or None.

    Checked once per connection, when the fast path is attached; `FastPath` then uses
    exactly these attributes.
    """
    transport = getattr(protocol, "transport", None)
    if transport is None:
        return "transport is missing"
    for method in ("write", "is_closing"):
        # uvloop's transports are not asyncio.Transport instances: check what is used.
        if not callable(getattr(transport, method, None)):
            return f"transport ({type(transport).__qualname__}) has no {method}()"
    conn = getattr(protocol, "conn", None)
    if conn is None:
        return "conn is missing"
    expected: list[tuple[str, object, type]] = [
        ("conn.state", getattr(conn, "state", None), State),
        ("writable", getattr(protocol, "writable", None), asyncio.Event),
        ("close_sent", getattr(protocol, "close_sent", None), bool),
        ("disconnected", getattr(protocol, "disconnected", None), bool),
    ]
    for name, value, kind in expected:
        if value is None:
            return f"{name} is missing"
        if not isinstance(value, kind):
            return f"{name} is a {type(value).__qualname__}, not a {kind.__qualname__}"
    return None


def _fall_back(what: str) -> None:
    global _fallback_logged
    if not _fallback_logged:
        _fallback_logged = True
        log.info(
            "transport fast path off: %s (another uvicorn version?); the plain ASGI path is used",
            what,
        )
