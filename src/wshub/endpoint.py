"""The protocol endpoint: wire protocol v1 over one WebSocket (see DESIGN.md).

A table maps each op to a handler; a handler returns the reply's ``result`` or
raises `ProtocolError`. The endpoint's loop reads one frame at a time and every
handler is quick (at most a broker round trip), so the socket is always read
and a client's frames are answered in the order it sent them.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.websockets import WebSocket

from wshub.codecs import codec_for_subprotocols
from wshub.connection import Connection, ConnectionState
from wshub.errors import BrokerUnavailable, ErrorCode, ProtocolError, PublishError
from wshub.hub import Hub
from wshub.protocol import Command, Op, error_reply, parse_command, reply, welcome

logger = logging.getLogger("wshub.endpoint")

Result = dict[str, Any] | None
Handler = Callable[[Connection, Command], Awaitable[Result]]


class ProtocolEndpoint:
    """An ASGI WebSocket endpoint speaking wire protocol v1 for a hub.

    Mount it with `wshub.fastapi.mount` or ``app.add_api_websocket_route(path, endpoint)``.

    Args:
        hub: the hub that routes this endpoint's publications.
    """

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self._handlers: dict[Op, Handler] = {
            Op.SUBSCRIBE: self.handle_subscribe,
            Op.UNSUBSCRIBE: self.handle_unsubscribe,
            Op.PUBLISH: self.handle_publish,
            Op.PONG: self.handle_pong,
        }

    async def __call__(self, websocket: WebSocket) -> None:
        offered = list(websocket.scope.get("subprotocols") or [])
        codec = codec_for_subprotocols(offered)
        subprotocol = codec.subprotocol if codec.subprotocol in offered else None
        context = self.hub.connect(
            websocket, codec=codec, subprotocol=subprotocol, heartbeat=True, reader=False
        )
        async with context as conn:
            if conn.state is not ConnectionState.OPEN:
                return
            conn.send(welcome(conn.id, conn.user, self.hub.settings.ping_interval))
            while True:
                message = await conn.receive()
                if message["type"] == "websocket.disconnect":
                    return
                await self.handle(conn, message)

    async def handle(self, conn: Connection, message: dict[str, Any]) -> None:
        """Decode, run and answer one client message. Never raises for bad input."""
        request_id: int | str | None = None
        try:
            command = parse_command(conn.codec.decode(message.get("text"), message.get("bytes")))
            request_id = command.id
            result = await self._handlers[command.op](conn, command)
        except ProtocolError as exc:
            conn.send(error_reply(exc.request_id, exc.code, exc.message))
            return
        except BrokerUnavailable as exc:
            conn.send(error_reply(request_id, ErrorCode.UNAVAILABLE, str(exc) or "broker down"))
            return
        except Exception:
            logger.exception("connection %s: internal error", conn.id)
            conn.send(error_reply(request_id, ErrorCode.INTERNAL, "internal error"))
            return
        if request_id is not None and result is not None:
            conn.send(reply(request_id, result))

    async def handle_subscribe(self, conn: Connection, command: Command) -> Result:
        """``subscribe``: join a channel. Recovery (``since``) needs history (not kept yet)."""
        assert command.channel is not None
        await self.hub.subscribe(conn, command.channel)
        if command.since is not None:
            return {"recovered": False, "messages": []}
        return {}

    async def handle_unsubscribe(self, conn: Connection, command: Command) -> Result:
        """``unsubscribe``: leave a channel (leaving one never joined is not an error)."""
        assert command.channel is not None
        await self.hub.unsubscribe(conn, command.channel)
        return {}

    async def handle_publish(self, conn: Connection, command: Command) -> Result:
        """``publish``: send data to every member of a channel, in every process."""
        assert command.channel is not None
        try:
            result = await self.hub.publish(command.channel, command.data, origin=conn.id)
        except PublishError as exc:
            raise ProtocolError(ErrorCode.BAD_REQUEST, str(exc), command.id) from None
        return {} if result.offset is None else {"offset": result.offset}

    async def handle_pong(self, conn: Connection, command: Command) -> Result:
        """``pong``: the client is alive; no reply."""
        conn.pong_deadline = None
        return None
