"""The protocol endpoint's handshake: who a connection is before ``welcome``.

With an authenticator, a token in the handshake (header, cookie, query) settles
the identity; without one, the first frame must be ``{"op":"connect","token":...}``
within ``auth_timeout`` (anonymous only when anonymous access is allowed).
Failures close with 4001; refusals before the connection exists are counted and
logged here. See `wshub.server.endpoint`.
"""

from __future__ import annotations

import asyncio

from starlette.websockets import WebSocket

from wshub.core.codecs import Codec
from wshub.core.errors import CloseCode, ProtocolError
from wshub.core.protocol import Op
from wshub.hub.connection import Connection, ConnectionState
from wshub.hub.connection_log import log_refused
from wshub.hub.facade import Hub
from wshub.hub.reader import Message
from wshub.server.auth import ANONYMOUS, AuthError, Identity

__all__ = ["Handshake"]


class Handshake:
    """Authenticate a protocol connection: from its handshake, else its first frame.

    Args:
        hub: the hub whose authenticator, settings and counters are used.
    """

    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    async def identity(self, websocket: WebSocket) -> Identity | None:
        """The identity the handshake settles, or None to wait for a ``connect`` frame."""
        auth = self.hub.auth
        if auth is None:
            return ANONYMOUS
        return await auth(websocket)

    async def refuse(self, websocket: WebSocket, subprotocol: str | None, reason: str) -> None:
        # Refused before `connect`: no Connection, so the close is counted and logged here.
        self.hub.stats.auth_failed(reason)
        self.hub.stats.closes[CloseCode.UNAUTHORIZED] += 1
        log_refused(websocket, CloseCode.UNAUTHORIZED, reason)
        await websocket.accept(subprotocol=subprotocol)
        await websocket.close(CloseCode.UNAUTHORIZED, reason)

    async def first_frame_identity(
        self, conn: Connection
    ) -> tuple[Identity, Message | None] | None:
        """Wait for the first frame and authenticate it.

        Returns:
            The identity and, when the first frame was not ``connect``, that frame
            (to be handled next); None when the connection was closed with 4001.
        """
        auth = self.hub.auth
        assert auth is not None
        try:
            message = await asyncio.wait_for(conn.receive(), self.hub.settings.auth_timeout)
        except TimeoutError:
            if conn.state is not ConnectionState.OPEN:
                return None  # closed meanwhile (to make room for newer unauthenticated ones)
            if auth.allow_anonymous:
                return ANONYMOUS, None
            self.unauthorized(conn, "authentication timeout")
            return None
        if message["type"] == "websocket.disconnect":
            return None
        token, is_connect = self.connect_token(conn.codec, message)
        if token is not None:
            try:
                return await auth.verify(token), None
            except AuthError as exc:
                self.unauthorized(conn, exc.reason)
                return None
        if not auth.allow_anonymous:
            self.unauthorized(conn, "missing token" if is_connect else "expected connect")
            return None
        return ANONYMOUS, None if is_connect else message

    @staticmethod
    def connect_token(codec: Codec, message: Message) -> tuple[str | None, bool]:
        """Return the token of a ``connect`` frame and whether the frame was one."""
        try:
            frame = codec.decode(message.get("text"), message.get("bytes"))
        except ProtocolError:
            return None, False
        if not isinstance(frame, dict) or frame.get("op") != Op.CONNECT:
            return None, False
        token = frame.get("token")
        return (token if isinstance(token, str) and token else None), True

    def unauthorized(self, conn: Connection, reason: str) -> None:
        self.hub.stats.auth_failed(reason)
        conn.close(CloseCode.UNAUTHORIZED, reason, drain=False)
