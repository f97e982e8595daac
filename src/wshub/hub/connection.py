"""Connection: one WebSocket, its bounded send queue and the one writer task that owns sending.

Only this module touches the socket. Everything else hands a connection frames
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
import logging
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import orjson
from starlette.websockets import WebSocket, WebSocketState

from wshub.core.codecs import Codec
from wshub.core.errors import CloseCode
from wshub.core.limits import TokenBucket
from wshub.core.protocol import truncate_reason
from wshub.core.sendqueue import Frame, SendQueue
from wshub.hub.transport import OP_BINARY, OP_TEXT, FastPath, frame_bytes, frame_header

if TYPE_CHECKING:
    from wshub.hub.facade import Hub

logger = logging.getLogger("wshub.connection")

Message = dict[str, Any]  # an ASGI WebSocket event
_END: Message = {"type": "websocket.disconnect", "code": CloseCode.NORMAL}


class ConnectionState(enum.Enum):
    """Where a connection is in its life."""

    CONNECTING = "connecting"
    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"


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
        "_close_frame",
        "_fast",
        "_handler",
        "_inbound",
        "_inbound_bytes",
        "dirty",
        "_loop",
        "_owner",
        "_pack_max",
        "_reader",
        "_waiter",
        "_writer",
        "aborted",
        "channels",
        "close_code",
        "close_reason",
        "codec",
        "connected_at",
        "expires_at",
        "heartbeat",
        "hub",
        "id",
        "info",
        "ping_due",
        "pong_deadline",
        "queue",
        "recovering",
        "state",
        "user",
        "websocket",
    )

    def __init__(
        self,
        hub: Hub,
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
        self._pack_max = hub.settings.pack_max_bytes if codec.packs else 0
        self._waiter: asyncio.Future[None] | None = None
        self._close_frame: tuple[int, str] | None = None
        self._abort_timer: asyncio.TimerHandle | None = None
        self._writer: asyncio.Task[None] | None = None
        self._reader: asyncio.Task[None] | None = None
        self._owner: asyncio.Task[Any] | None = None
        self._handler: asyncio.Task[Any] | None = None  # runs the `async with` block
        self._inbound: asyncio.Queue[Message] | None = None
        self._inbound_bytes = 0
        self._fast: FastPath | None = None  # see wshub.transport
        self.dirty = False  # queued for the hub's next flush (see `flush`)
        self.aborted = False
        # Channels being recovered: live frames held back until the subscribe reply is out.
        self.recovering: dict[str, list[tuple[int | None, Frame]]] = {}

    def __repr__(self) -> str:
        return f"<Connection {self.id} user={self.user!r} {self.state.value}>"

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
        if self._waiter is None:
            return  # the writer is busy and will find the frame
        if self._fast is None:
            self._wake_writer()
        elif not self.dirty:
            # The writer is parked: rather than waking its task (a task switch per
            # recipient), the hub flushes every such connection straight to its
            # transport once the current callback is done, packed (see `flush`).
            self.dirty = True
            self.hub.mark_dirty(self)

    def flush(self) -> None:
        """Write what is queued straight to the transport; wake the writer for the rest.

        Called by the hub for connections marked dirty, after the publishes of the
        current loop iteration were all enqueued, so frames go out packed.
        """
        self.dirty = False
        fast, queue = self._fast, self.queue
        if self._waiter is None or fast is None or self.state is not ConnectionState.OPEN:
            return
        stats = self.hub.stats
        while queue and fast.ready():
            before = queue.bytes
            if self._pack_max:
                batch = queue.pop_batch(self._pack_max)
                fast.write_nowait(_wire(batch[0]) if len(batch) == 1 else _packed(batch))
                stats.frames_sent += len(batch)
            else:
                fast.write_nowait(_wire(queue.pop()))
                stats.frames_sent += 1
            stats.bytes_sent += before - queue.bytes
        if queue:  # the transport is full: the writer waits for it to drain
            self._wake_writer()

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
        if self.state is ConnectionState.CLOSED or self._close_frame is not None:
            return
        reason = truncate_reason(reason)
        self.state = ConnectionState.CLOSING
        self.close_code, self.close_reason = code, reason
        self._close_frame = (code, reason)
        if not drain:
            self.queue.clear()
        if timeout is None:
            timeout = self.hub.settings.close_timeout
        self._abort_timer = self._loop.call_later(timeout, self.abort)
        self._wake_writer()

    def abort(self) -> None:
        """Give up on the socket: stop the writer and end the reading side now."""
        if self.state is ConnectionState.CLOSED and self.aborted:
            return
        self.aborted = True
        self._mark_closed(self.close_code or CloseCode.INTERNAL_ERROR)
        for task in (self._writer, self._reader, self._owner):
            if task is not None and not task.done() and task is not asyncio.current_task():
                task.cancel()
        if self._inbound is not None:
            self._inbound.put_nowait(_END)

    def cancel(self) -> None:
        """Abort, and cancel the task running the handler's ``async with`` block too.

        For a handler that does not return after its connection closed (at shutdown):
        the block ends with the cancellation, which it does not propagate.
        """
        self.abort()
        task = self._handler
        if task is not None and not task.done() and task is not asyncio.current_task():
            task.cancel()

    def _wake_writer(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def _mark_closed(self, code: int) -> None:
        if self.state is not ConnectionState.CLOSED:
            self.state = ConnectionState.CLOSED
            if self.close_code is None:
                self.close_code = code
        if self._abort_timer is not None:
            self._abort_timer.cancel()
            self._abort_timer = None
        self.queue.clear()
        self._wake_writer()

    # -- the writer task ---------------------------------------------------------------------

    async def _write_loop(self) -> None:
        queue = self.queue
        stats = self.hub.stats
        # Frames and bytes sent, counted in locals and added to the hub's stats when the
        # writer runs out of work or ends: nothing but two local additions per send.
        sent = size = 0
        try:
            while self.state is not ConnectionState.CLOSED:
                if queue:
                    before = queue.bytes
                    sent += await self._send_next()
                    size += before - queue.bytes
                    continue
                stats.frames_sent += sent
                stats.bytes_sent += size
                sent = size = 0
                if self._close_frame is not None:
                    code, reason = self._close_frame
                    await self.websocket.send(
                        {"type": "websocket.close", "code": code, "reason": reason}
                    )
                    self._mark_closed(code)
                    return
                self._waiter = self._loop.create_future()
                await self._waiter
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the client went away mid-send: any transport error ends us
            logger.debug("connection %s: send failed: %r", self.id, exc)
            self._mark_closed(self.close_code or CloseCode.INTERNAL_ERROR)
        finally:
            stats.frames_sent += sent
            stats.bytes_sent += size

    async def _send_next(self) -> int:
        """Send the next frame, or the next packed batch; return how many frames went.

        A method of its own so that the frames sent are not kept alive by the writer's
        locals while it waits for more: an idle connection holds no frame.
        """
        queue, fast = self.queue, self._fast
        if fast is not None and not fast.open():
            fast = None  # closing: let the server's own send path decide what to do
        if self._pack_max:
            batch = queue.pop_batch(self._pack_max)
            if fast is not None:
                await fast.write(_wire(batch[0]) if len(batch) == 1 else _packed(batch))
            else:
                text = batch[0].data if len(batch) == 1 else "\n".join([f.data for f in batch])  # type: ignore[misc]
                await self.websocket.send({"type": "websocket.send", "text": text})
            return len(batch)
        frame = queue.pop()
        if fast is not None:
            await fast.write(_wire(frame))
        elif isinstance(frame.data, str):
            await self.websocket.send({"type": "websocket.send", "text": frame.data})
        else:
            await self.websocket.send({"type": "websocket.send", "bytes": frame.data})
        return 1

    # -- receiving -----------------------------------------------------------------------------

    async def receive(self) -> Message:
        """Receive the next ASGI message from the socket, checking the size limit.

        Returns:
            A ``websocket.receive`` message, or ``websocket.disconnect`` when the
            stream ended (the connection is then CLOSED, or closing with 1009).
        """
        message = dict(await self.websocket.receive())
        if message["type"] == "websocket.disconnect":
            self._mark_closed(message.get("code", CloseCode.NORMAL))
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
        self._inbound = asyncio.Queue()
        self._reader = self._loop.create_task(self._read_loop(self._inbound))

    async def _read_loop(self, inbound: asyncio.Queue[Message]) -> None:
        s = self.hub.settings
        clock = self._loop.time
        bucket = TokenBucket(s.rate_limit, s.rate_burst, clock())
        try:
            while True:
                message = await self.receive()
                if message["type"] == "websocket.disconnect":
                    return
                size = _size(message)
                if (
                    inbound.qsize() >= s.max_inbound_messages
                    or self._inbound_bytes + size > s.max_inbound_bytes
                ):
                    self.close(CloseCode.RATE_LIMITED, "too many frames: the server is behind")
                    return
                if bucket.take(clock()):
                    self._inbound_bytes += size
                    inbound.put_nowait(message)
                    continue
                # Library endpoints have no error frame: drop, and close if it goes on.
                self.hub.stats.rate_limited += 1
                if bucket.strikes >= s.rate_limit_strikes:
                    self.close(CloseCode.RATE_LIMITED, "rate limited: too many frames")
                    return
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a transport error while reading is a lost client
            logger.debug("connection %s: receive failed: %r", self.id, exc)
            self._mark_closed(CloseCode.INTERNAL_ERROR)
        finally:
            inbound.put_nowait(_END)

    async def iter_messages(self) -> AsyncIterator[Message]:
        """Yield each ``websocket.receive`` message; end cleanly when the connection ends."""
        inbound = self._inbound
        if inbound is None:
            raise RuntimeError("iter_*() needs the reader: use it in `async with hub.connect()`")
        while True:
            message = await inbound.get()
            if message["type"] == "websocket.disconnect":
                inbound.put_nowait(message)  # later iterators end too
                return
            self._inbound_bytes -= _size(message)
            yield message

    async def iter_text(self) -> AsyncIterator[str]:
        """Yield each text message; a binary message closes the connection with 1008."""
        async for message in self.iter_messages():
            text = message.get("text")
            if text is None:
                self.close(CloseCode.POLICY_VIOLATION, "expected a text message")
                return
            yield text

    async def iter_bytes(self) -> AsyncIterator[bytes]:
        """Yield each binary message; a text message closes the connection with 1008."""
        async for message in self.iter_messages():
            data = message.get("bytes")
            if data is None:
                self.close(CloseCode.POLICY_VIOLATION, "expected a binary message")
                return
            yield data

    async def iter_json(self) -> AsyncIterator[Any]:
        """Yield each message decoded as JSON (text or UTF-8 binary).

        Invalid JSON (NaN, lone surrogates, nesting deeper than 1024 included) closes
        the connection with 1008 and ends the iteration.
        """
        async for message in self.iter_messages():
            raw = message.get("text")
            try:
                yield orjson.loads(raw if raw is not None else message.get("bytes") or b"")
            except orjson.JSONDecodeError:
                self.close(CloseCode.POLICY_VIOLATION, "invalid JSON")
                return

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
            self._fast = FastPath.find(getattr(self.websocket, "_send", None))
        self.state = ConnectionState.OPEN
        self._writer = self._loop.create_task(self._write_loop(), name=f"wshub-writer-{self.id}")

    async def _finish(self, exc: BaseException | None) -> None:
        """End the connection after its handler returned or raised: flush, close, stop tasks."""
        if self.state is ConnectionState.OPEN:
            if exc is None:
                self.close(CloseCode.NORMAL)
            else:
                self.close(CloseCode.INTERNAL_ERROR, "internal error", drain=False)
        writer = self._writer
        if writer is not None and not writer.done() and self.state is not ConnectionState.CLOSED:
            try:
                await asyncio.wait_for(asyncio.shield(writer), self.hub.settings.close_timeout)
            except (TimeoutError, asyncio.CancelledError):
                pass
        self._mark_closed(self.close_code or CloseCode.NORMAL)
        for task in (writer, self._reader):
            if task is not None and not task.done():
                task.cancel()
        for task in (writer, self._reader):
            if task is not None:
                try:
                    await task
                except BaseException:  # cancelled or already reported; the connection is over
                    pass


def _size(message: Message) -> int:
    """Bytes (or characters, for text) an incoming message holds."""
    return len(message.get("text") or message.get("bytes") or "")


def _wire(frame: Frame) -> bytes:
    """The frame's bytes on the wire, built once and shared by every recipient."""
    wire = frame.wire
    if wire is None:
        opcode = OP_TEXT if isinstance(frame.data, str) else OP_BINARY
        wire = frame.wire = frame_bytes(frame.payload, opcode)
    return wire


def _packed(batch: list[Frame]) -> bytes:
    """Several text frames packed into one message, separated by newlines."""
    payload = b"\n".join([frame.payload for frame in batch])
    return frame_header(len(payload), OP_TEXT) + payload
