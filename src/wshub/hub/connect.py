"""ConnectContext: the ``async with hub.connect(ws) as conn`` block (see `Hub.connect`)."""

from __future__ import annotations

import asyncio
import logging
import secrets
from types import TracebackType

from starlette.websockets import WebSocket, WebSocketDisconnect

from wshub.core.codecs import Codec
from wshub.core.errors import CloseCode
from wshub.core.sendqueue import SendQueue
from wshub.hub.connection import Connection, ConnectionOwner
from wshub.hub.identity import Identity
from wshub.hub.lifecycle import Lifecycle

logger = logging.getLogger("wshub.hub")


class ConnectContext:
    """Accepts and registers a connection on entry; flushes, closes and removes it on exit.

    Args:
        owner: the hub, as the connection sees it.
        lifecycle: the hub's lifecycle, which attaches and detaches the connection.
        websocket: the Starlette WebSocket.
        identity: who the connection belongs to, if known already.
        codec: how frames are encoded.
        subprotocol: the subprotocol to accept with.
        refusal: when set, accept (with ``subprotocol``) and close at once with 4002
            and this reason: the client offered no subprotocol the route supports.
        heartbeat: send app-level pings and expect pongs.
        reader: read the socket in a task of its own, for ``conn.iter_*()``.
        queue: the connection's send queue.
    """

    def __init__(
        self,
        owner: ConnectionOwner,
        lifecycle: Lifecycle,
        websocket: WebSocket,
        identity: Identity | None,
        codec: Codec,
        subprotocol: str | None,
        refusal: str | None,
        heartbeat: bool,
        reader: bool,
        queue: SendQueue,
    ) -> None:
        self._lifecycle = lifecycle
        self._identity = identity
        self._subprotocol = subprotocol
        self._refusal = refusal
        self._heartbeat = heartbeat
        self._reader = reader
        self.connection = Connection(
            owner, websocket, id=secrets.token_hex(8), user=None, codec=codec, queue=queue
        )

    async def __aenter__(self) -> Connection:
        conn = self.connection
        await self._lifecycle.attach(
            conn, self._subprotocol, self._heartbeat, self._identity, self._refusal
        )
        conn._handler = asyncio.current_task()
        if self._reader:
            conn.start_reader()
        else:
            conn._owner = asyncio.current_task()
        return conn

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        conn = self.connection
        suppress = False
        if isinstance(exc, asyncio.CancelledError) and conn.aborted:
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            suppress, exc = True, None
        elif isinstance(exc, WebSocketDisconnect):
            suppress, exc = True, None
        try:
            await _finish(conn, exc)
        finally:
            await self._lifecycle.detach(conn)
        if exc is not None and not isinstance(exc, asyncio.CancelledError):
            logger.error("connection %s: handler raised %r; closed with 1011", conn.id, exc)
        return suppress


async def _finish(conn: Connection, exc: BaseException | None) -> None:
    """End the connection after its handler returned or raised: flush, close, stop tasks."""
    if conn.is_open:
        if exc is None:
            conn.close(CloseCode.NORMAL)
        else:
            conn.close(CloseCode.INTERNAL_ERROR, "internal error", drain=False)
    writer = conn.writer.task
    if writer is not None and not writer.done() and not conn.is_closed:
        try:
            await asyncio.wait_for(asyncio.shield(writer), conn.hub.settings.close_timeout)
        except (TimeoutError, asyncio.CancelledError):
            pass
    conn.mark_closed(conn.close_code or CloseCode.NORMAL)
    tasks = [task for task in (writer, conn.reader_task) if task is not None]
    for task in tasks:
        if not task.done():
            task.cancel()
    for task in tasks:
        try:
            await task
        except BaseException:  # cancelled or already reported; the connection is over
            pass
