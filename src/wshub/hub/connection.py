"""Connection: one WebSocket, its bounded send queue, its state and how it closes.

Only the connection's parts touch the socket: its `Writer` (`wshub.hub.writer`,
the one task that sends) and, in library mode, its `Inbound` reader
(`wshub.hub.reader`). The connection never imports the hub: it reports "frames to
flush" and reads settings and counters through `ConnectionOwner`. Everything else
hands a connection frames
with `Connection.enqueue`, which never awaits: the frame goes into the send queue
and the writer task, the only code that calls the socket's send, picks it up.
So a slow or dead client delays nobody but itself, and its memory is bounded by
its queue.

Life of a connection::

    CONNECTING --accept--> OPEN --close(code)--> CLOSING --close frame sent--> CLOSED
                             \\--------- client gone (disconnect, reset) -------^

A close is a request: the writer sends what is queued (unless ``drain=False``),
then the close frame. If that cannot happen within ``close_timeout`` (a client
that stopped reading keeps the socket unwritable), the connection is aborted:
the writer is cancelled and whoever reads the socket is told the stream ended.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import AsyncIterator
from typing import Any, Protocol

from starlette.websockets import WebSocket, WebSocketState

from wshub.core.codecs import Codec
from wshub.core.errors import CloseCode
from wshub.core.protocol import truncate_reason
from wshub.core.sendqueue import Frame, SendQueue
from wshub.hub.reader import Inbound, Message
from wshub.hub.stats import HubStats
from wshub.hub.transport import FastPath
from wshub.hub.writer import Writer
from wshub.settings import Settings


class ConnectionState(enum.Enum):
    """Where a connection is in its life."""

    CONNECTING = "connecting"
    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"


class ConnectionOwner(Protocol):
    """What a connection needs of its hub: settings, counters, and a flush to ask for."""

    settings: Settings
    stats: HubStats

    def mark_dirty(self, conn: Connection) -> None:
        """Flush ``conn`` to its transport once the current loop iteration's work is done."""

    async def subscribe(self, conn: Connection, channel: str) -> bool:
        """Make ``conn`` a member of ``channel``."""

    async def unsubscribe(self, conn: Connection, channel: str) -> bool:
        """Remove ``conn`` from ``channel``."""


class Connection:
    """A WebSocket client connected to a hub.

    Made by `Hub.connect`; application code receives it from ``async with``.

    Attributes:
        id: the connection's id, unique within the process.
        user: the user it authenticated as, or None.
        info: public information about the user (from the token), or None.
        expires_at: Unix time when its credentials expire, or None.
        codec: how frames are encoded for this client.
        state: the `ConnectionState`.
        channels: the channels it is subscribed to.
        queue: its send queue.
        close_code, close_reason: how it closed (or is closing), once known.
        connected_at: `time.time()` at accept.
    """

    # Slots: a connection is the object there are most of; no per-instance dict.
    __slots__ = (
        "_abort_timer",
        "_handler",
        "_inbound",
        "_loop",
        "_owner",
        "aborted",
        "channels",
        "close_code",
        "close_reason",
        "codec",
        "connected_at",
        "dirty",
        "expires_at",
        "heartbeat",
        "hub",
        "id",
        "info",
        "pending_close",
        "ping_due",
        "pong_deadline",
        "queue",
        "recovering",
        "state",
        "user",
        "websocket",
        "writer",
    )

    def __init__(
        self,
        hub: ConnectionOwner,
        websocket: WebSocket,
        *,
        id: str,
        user: str | None,
        codec: Codec,
        queue: SendQueue,
    ) -> None:
        self.hub = hub
        self.websocket = websocket
        self.id = id
        self.user = user
        self.info: dict[str, Any] | None = None
        self.expires_at: float | None = None
        self.codec = codec
        self.queue = queue
        self.state = ConnectionState.CONNECTING
        self.channels: set[str] = set()
        self.close_code: int | None = None
        self.close_reason = ""
        self.connected_at = time.time()
        # Heartbeat bookkeeping, used by the hub's heartbeat loop (protocol endpoint only).
        self.heartbeat = False
        self.ping_due = 0.0
        self.pong_deadline: float | None = None
        self._loop = asyncio.get_running_loop()
        self.writer = Writer(self, None, hub.settings.pack_max_bytes if codec.packs else 0)
        #: The close frame the writer is to send once the queue is drained.
        self.pending_close: tuple[int, str] | None = None
        self._abort_timer: asyncio.TimerHandle | None = None
        self._owner: asyncio.Task[Any] | None = None
        self._handler: asyncio.Task[Any] | None = None  # runs the `async with` block
        self._inbound: Inbound | None = None
        self.dirty = False  # queued for the hub's next flush (see `flush`)
        self.aborted = False
        # Channels being recovered: live frames held back until the subscribe reply is out.
        self.recovering: dict[str, list[tuple[int | None, Frame]]] = {}

    def __repr__(self) -> str:
        return f"<Connection {self.id} user={self.user!r} {self.state.value}>"

    @property
    def is_open(self) -> bool:
        """Whether the connection is OPEN."""
        return self.state is ConnectionState.OPEN

    @property
    def is_closed(self) -> bool:
        """Whether the connection is CLOSED."""
        return self.state is ConnectionState.CLOSED

    @property
    def fast_path(self) -> FastPath | None:
        """The transport fast path its writer uses, or None (plain ASGI sends)."""
        return self.writer.fast

    # -- sending: never awaits ------------------------------------------------------------

    def enqueue(self, frame: Frame, *, control: bool = False) -> None:
        """Queue an encoded frame for this client. Never blocks, never raises.

        A frame that overflows the queue under the ``disconnect`` policy closes the
        connection with 4008; frames for a closing connection are ignored.

        Args:
            frame: the frame.
            control: a heartbeat ping, queued whatever the limits (see `SendQueue.push`).
        """
        if self.state is not ConnectionState.OPEN:
            return
        if control:
            self.queue.push(frame)
        elif not self.queue.put(frame):
            self.hub.stats.overflows += 1
            self.close(CloseCode.SLOW_CONSUMER, "slow consumer: send queue overflow", drain=False)
            return
        writer = self.writer
        if writer.waiter is None:
            return  # the writer is busy and will find the frame
        if writer.fast is None:
            writer.wake()
        elif not self.dirty:
            # The writer is parked: rather than waking its task (a task switch per
            # recipient), the hub flushes every such connection straight to its
            # transport once the current callback is done, packed (see `flush`).
            self.dirty = True
            self.hub.mark_dirty(self)

    def flush(self) -> None:
        """Write what is queued straight to the transport (see `Writer.flush`)."""
        self.dirty = False
        self.writer.flush()

    def send(self, obj: object) -> None:
        """Encode ``obj`` with the connection's codec and queue it. Never blocks.

        Raises:
            TypeError: the codec cannot encode ``obj``.
        """
        self.enqueue(self.codec.encode(obj))

    def send_text(self, text: str) -> None:
        """Queue a text frame as it is. Never blocks."""
        self.enqueue(Frame(text, len(text.encode())))

    def send_bytes(self, data: bytes) -> None:
        """Queue a binary frame as it is. Never blocks."""
        self.enqueue(Frame.binary(data))

    def close(
        self,
        code: int = CloseCode.NORMAL,
        reason: str = "",
        *,
        drain: bool = True,
        timeout: float | None = None,
    ) -> None:
        """Ask for the connection to close. Never blocks; idempotent.

        Args:
            code: the close code (see `CloseCode`).
            reason: the close reason; cut to 123 bytes of UTF-8 on a character boundary.
            drain: send what is queued first (else drop it).
            timeout: seconds the flush and close frame may take before the connection
                is aborted; defaults to the ``close_timeout`` setting.
        """
        if self.state is ConnectionState.CLOSED or self.pending_close is not None:
            return
        reason = truncate_reason(reason)
        self.state = ConnectionState.CLOSING
        self.close_code, self.close_reason = code, reason
        self.pending_close = (code, reason)
        if not drain:
            self.queue.clear()
        if timeout is None:
            timeout = self.hub.settings.close_timeout
        self._abort_timer = self._loop.call_later(timeout, self.abort)
        self.writer.wake()

    def abort(self) -> None:
        """Give up on the socket: stop the writer and end the reading side now."""
        if self.state is ConnectionState.CLOSED and self.aborted:
            return
        self.aborted = True
        self.mark_closed(self.close_code or CloseCode.INTERNAL_ERROR)
        for task in (self.writer.task, self.reader_task, self._owner):
            if task is not None and not task.done() and task is not asyncio.current_task():
                task.cancel()
        if self._inbound is not None:
            self._inbound.end()

    def cancel(self) -> None:
        """Abort, and cancel the task running the handler's ``async with`` block too.

        For a handler that does not return after its connection closed (at shutdown):
        the block ends with the cancellation, which it does not propagate.
        """
        self.abort()
        task = self._handler
        if task is not None and not task.done() and task is not asyncio.current_task():
            task.cancel()

    def mark_closed(self, code: int) -> None:
        """Record that the socket is closed (with ``code`` unless one is known already)."""
        if self.state is not ConnectionState.CLOSED:
            self.state = ConnectionState.CLOSED
            if self.close_code is None:
                self.close_code = code
        if self._abort_timer is not None:
            self._abort_timer.cancel()
            self._abort_timer = None
        self.queue.clear()
        self.writer.wake()

    # -- receiving -----------------------------------------------------------------------------

    async def receive(self) -> Message:
        """Receive the next ASGI message from the socket, checking the size limit.

        Returns:
            A ``websocket.receive`` message, or ``websocket.disconnect`` when the
            stream ended (the connection is then CLOSED, or closing with 1009).
        """
        message = dict(await self.websocket.receive())
        if message["type"] == "websocket.disconnect":
            self.mark_closed(message.get("code", CloseCode.NORMAL))
            return message
        self.hub.stats.frames_received += 1
        if self._too_big(message):
            self.close(CloseCode.MESSAGE_TOO_BIG, "message too big", drain=False)
            return {"type": "websocket.disconnect", "code": CloseCode.MESSAGE_TOO_BIG}
        return message

    def _too_big(self, message: Message) -> bool:
        limit = self.hub.settings.max_message_size
        data = message.get("bytes")
        if data is not None:
            return len(data) > limit
        text = message.get("text") or ""
        # len(text) counts characters; encode only when the bytes could exceed the limit.
        return len(text) * 4 > limit and len(text.encode()) > limit

    def start_reader(self) -> None:
        """Read in a task of its own into a bounded inbound buffer (library mode).

        The socket is then always read, protocol pongs included, however slowly the
        endpoint's loop consumes messages.
        """
        self._inbound = Inbound(self)
        self._inbound.start()

    @property
    def reader_task(self) -> asyncio.Task[None] | None:
        """The library-mode reader task, if started."""
        return None if self._inbound is None else self._inbound.task

    def _require_reader(self) -> Inbound:
        if self._inbound is None:
            raise RuntimeError("iter_*() needs the reader: use it in `async with hub.connect()`")
        return self._inbound

    def iter_messages(self) -> AsyncIterator[Message]:
        """Yield each ``websocket.receive`` message; end cleanly when the connection ends."""
        return self._require_reader().messages()

    def iter_text(self) -> AsyncIterator[str]:
        """Yield each text message; a binary message closes the connection with 1008."""
        return self._require_reader().texts()

    def iter_bytes(self) -> AsyncIterator[bytes]:
        """Yield each binary message; a text message closes the connection with 1008."""
        return self._require_reader().binaries()

    def iter_json(self) -> AsyncIterator[Any]:
        """Yield each message decoded as JSON (text or UTF-8 binary).

        Invalid JSON (NaN, lone surrogates, nesting deeper than 1024 included) closes
        the connection with 1008 and ends the iteration.
        """
        return self._require_reader().json()

    # -- subscriptions (thin wrappers over the hub) ---------------------------------------

    async def subscribe(self, channel: str) -> None:
        """Subscribe this connection to ``channel`` (see `Hub.subscribe`)."""
        await self.hub.subscribe(self, channel)

    async def unsubscribe(self, channel: str) -> None:
        """Unsubscribe this connection from ``channel`` (see `Hub.unsubscribe`)."""
        await self.hub.unsubscribe(self, channel)

    # -- life ------------------------------------------------------------------------------

    async def _open(self, subprotocol: str | None) -> None:
        if self.websocket.client_state is WebSocketState.CONNECTING:
            await self.websocket.accept(subprotocol=subprotocol)
        if self.hub.settings.transport_fast_path:
            self.writer.fast = FastPath.find(getattr(self.websocket, "_send", None))
        self.state = ConnectionState.OPEN
        self.writer.start()
