"""Writer: the one task that sends on a connection's socket, and the packing of frames.

Everything else hands the connection frames with `Connection.enqueue`, which never
awaits; the writer takes them from the send queue. When it runs out of work it
parks on a future. A parked writer on the transport fast path is not woken per
frame: the hub flushes its connection straight to the transport once per loop
iteration (`Writer.flush`), so that a burst goes out as one packed write and no
task switch is paid per recipient.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

from starlette.websockets import WebSocket

from wshub.core.errors import CloseCode
from wshub.core.sendqueue import Frame, SendQueue
from wshub.hub.stats import HubStats
from wshub.hub.transport import OP_BINARY, OP_TEXT, FastPath, frame_bytes, frame_header

logger = logging.getLogger("wshub.connection")


class _Counters(Protocol):
    stats: HubStats


class Writable(Protocol):
    """What a writer needs of its connection (`wshub.hub.connection.Connection`)."""

    @property
    def id(self) -> str: ...
    @property
    def hub(self) -> _Counters: ...
    @property
    def websocket(self) -> WebSocket: ...
    @property
    def queue(self) -> SendQueue: ...
    @property
    def close_code(self) -> int | None: ...
    @property
    def pending_close(self) -> tuple[int, str] | None: ...
    @property
    def is_open(self) -> bool: ...
    @property
    def is_closed(self) -> bool: ...
    def mark_closed(self, code: int) -> None: ...


class Writer:
    """The send side of one connection.

    Args:
        conn: the connection it writes for.
        fast: the transport fast path, or None for plain ASGI sends.
        pack_max: bytes packed into one message at most (0: never pack).

    Attributes:
        fast: as given.
        waiter: the future the parked writer waits on, or None while it works.
    """

    __slots__ = ("_conn", "_pack_max", "fast", "task", "waiter")

    def __init__(self, conn: Writable, fast: FastPath | None, pack_max: int) -> None:
        self._conn = conn
        self._pack_max = pack_max
        self.fast = fast
        self.waiter: asyncio.Future[None] | None = None
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start the writer task."""
        conn = self._conn
        self.task = asyncio.get_running_loop().create_task(
            self._run(), name=f"wshub-writer-{conn.id}"
        )

    def wake(self) -> None:
        """Wake the parked writer, if it is parked."""
        waiter = self.waiter
        if waiter is not None:
            self.waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def flush(self) -> None:
        """Write what is queued straight to the transport; wake the writer for the rest.

        Called for connections marked dirty, after the publishes of the current loop
        iteration were all enqueued, so frames go out packed.
        """
        conn = self._conn
        fast, queue = self.fast, conn.queue
        if self.waiter is None or fast is None or not conn.is_open:
            return
        stats = conn.hub.stats
        while queue and fast.ready():
            before = queue.bytes
            if self._pack_max:
                batch = queue.pop_batch(self._pack_max)
                fast.write_nowait(wire(batch[0]) if len(batch) == 1 else packed(batch))
                stats.frames_sent += len(batch)
            else:
                fast.write_nowait(wire(queue.pop()))
                stats.frames_sent += 1
            stats.bytes_sent += before - queue.bytes
        if queue:  # the transport is full: the writer waits for it to drain
            self.wake()

    async def _run(self) -> None:
        conn = self._conn
        queue = conn.queue
        stats = conn.hub.stats
        loop = asyncio.get_running_loop()
        # Frames and bytes sent, counted in locals and added to the hub's stats when the
        # writer runs out of work or ends: nothing but two local additions per send.
        sent = size = 0
        try:
            while not conn.is_closed:
                if queue:
                    before = queue.bytes
                    sent += await self._send_next()
                    size += before - queue.bytes
                    continue
                stats.frames_sent += sent
                stats.bytes_sent += size
                sent = size = 0
                if conn.pending_close is not None:
                    code, reason = conn.pending_close
                    await conn.websocket.send(
                        {"type": "websocket.close", "code": code, "reason": reason}
                    )
                    conn.mark_closed(code)
                    return
                self.waiter = loop.create_future()
                await self.waiter
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the client went away mid-send: any transport error ends us
            logger.debug("connection %s: send failed: %r", conn.id, exc)
            conn.mark_closed(conn.close_code or CloseCode.INTERNAL_ERROR)
        finally:
            stats.frames_sent += sent
            stats.bytes_sent += size

    async def _send_next(self) -> int:
        """Send the next frame, or the next packed batch; return how many frames went.

        A method of its own so that the frames sent are not kept alive by the writer's
        locals while it waits for more: an idle connection holds no frame.
        """
        conn = self._conn
        queue, fast = conn.queue, self.fast
        if fast is not None and not fast.open():
            fast = None  # closing: let the server's own send path decide what to do
        if self._pack_max:
            batch = queue.pop_batch(self._pack_max)
            if fast is not None:
                await fast.write(wire(batch[0]) if len(batch) == 1 else packed(batch))
            else:
                text = batch[0].data if len(batch) == 1 else "\n".join([f.data for f in batch])  # type: ignore[misc]
                await conn.websocket.send({"type": "websocket.send", "text": text})
            return len(batch)
        frame = queue.pop()
        if fast is not None:
            await fast.write(wire(frame))
        elif isinstance(frame.data, str):
            await conn.websocket.send({"type": "websocket.send", "text": frame.data})
        else:
            await conn.websocket.send({"type": "websocket.send", "bytes": frame.data})
        return 1


def wire(frame: Frame) -> bytes:
    """The frame's bytes on the wire, built once and shared by every recipient."""
    data = frame.wire
    if data is None:
        opcode = OP_TEXT if isinstance(frame.data, str) else OP_BINARY
        data = frame.wire = frame_bytes(frame.payload, opcode)
    return data


def packed(batch: list[Frame]) -> bytes:
    """Several text frames packed into one message, separated by newlines."""
    payload = b"\n".join([frame.payload for frame in batch])
    return frame_header(len(payload), OP_TEXT) + payload
