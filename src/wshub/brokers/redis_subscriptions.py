"""The subscriber connection's subscriptions: the desired set, batched onto the wire.

The hub asks for channels one by one; Redis is best told in batches. `Subscriptions`
keeps the channels the hub wants (``desired``) and mirrors them onto the current
subscriber connection with as few SUBSCRIBE/UNSUBSCRIBE commands as possible, counting
Redis's confirmations off so that each request can wait for its own.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Iterator, Sequence
from typing import Final

from redis.asyncio.connection import AbstractConnection

# One logger for the whole engine, so that users configure it once.
logger = logging.getLogger("wshub.brokers.redis")

#: At most this many channels per SUBSCRIBE/UNSUBSCRIBE, so that resubscribing a huge
#: set after an outage stays a pipeline of ordinary-sized commands.
CHUNK: Final = 10_000


class _Ack:
    """Replies still expected for one batch of SUBSCRIBE/UNSUBSCRIBE commands."""

    __slots__ = ("future", "remaining")

    def __init__(self, remaining: int, future: asyncio.Future[None]) -> None:
        self.remaining = remaining
        self.future = future


def settle(future: asyncio.Future[None]) -> None:
    """Resolve ``future`` unless it already is (detach and replies may race to it)."""
    if not future.done():
        future.set_result(None)


def _chunks(verb: str, names: list[str]) -> Iterator[tuple[str, ...]]:
    for start in range(0, len(names), CHUNK):
        yield (verb, *names[start : start + CHUNK])


class Subscriptions:
    """The channels the hub wants, mirrored onto the current subscriber connection.

    ``request`` marks channels changed. One flusher task turns changed channels into
    batched SUBSCRIBE/UNSUBSCRIBE commands (requests made while a batch is on the wire
    join the next one); the reader counts Redis's replies off with ``on_ack``, which
    settles each batch's future. Without a connection, requests only change ``desired``:
    ``attach`` makes everything desired due again on the next connection.
    """

    def __init__(self, prefix: str, probe_channel: str) -> None:
        self.desired: set[str] = set()  # what the hub asked for, without prefix
        self._prefix = prefix
        self._probe_channel = probe_channel
        self._probe_sent = False
        self._server: set[str] = set()  # sent on the current connection
        self._dirty: set[str] = set()  # changed since the last batch went out
        self._conn: AbstractConnection | None = None
        self._acks: deque[_Ack] = deque()
        self._batch: asyncio.Future[None] | None = None  # requests not sent yet
        self._flusher: asyncio.Task[None] | None = None

    def attach(self, conn: AbstractConnection) -> None:
        """Adopt a fresh connection: nothing is subscribed on it yet, all desired is due."""
        self._conn = conn
        self._server.clear()
        self._dirty.update(self.desired)
        self._probe_sent = False

    async def detach(self) -> None:
        """Forget the connection; let every waiting request return (the next one resubscribes)."""
        self._conn = None
        for ack in self._acks:
            settle(ack.future)
        self._acks.clear()
        if self._batch is not None:
            settle(self._batch)
            self._batch = None
        flusher, self._flusher = self._flusher, None
        await stop_tasks(flusher)

    def request(self, channels: Sequence[str]) -> asyncio.Future[None] | None:
        """Mark ``channels`` changed; return the batch that will carry them, if connected."""
        self._dirty.update(channels)
        conn = self._conn
        if conn is None:
            return None
        if self._batch is None:
            self._batch = asyncio.get_running_loop().create_future()
            if self._flusher is None or self._flusher.done():
                self._flusher = asyncio.create_task(self._flush(conn), name="wshub-redis-flush")
        return self._batch

    def on_ack(self) -> None:
        """Count off one reply; Redis answers each channel of (UN)SUBSCRIBE, in order."""
        if not self._acks:
            return
        ack = self._acks[0]
        ack.remaining -= 1
        if ack.remaining <= 0:
            self._acks.popleft()
            settle(ack.future)

    async def _flush(self, conn: AbstractConnection) -> None:
        try:
            while self._batch is not None:
                batch, self._batch = self._batch, None
                await self._send(conn, batch)
        except Exception as exc:
            # The reader sees the closed socket and ends the session, which detaches us.
            logger.debug("Redis broker: sending subscriptions failed: %s", exc)
            await conn.disconnect(nowait=True)

    async def _send(self, conn: AbstractConnection, batch: asyncio.Future[None]) -> None:
        subs, unsubs = self._take_changes()
        count = len(subs) + len(unsubs)
        if count == 0:
            # Nothing to send, but finish after any batch still on the wire.
            if self._acks:
                self._acks[-1].future.add_done_callback(lambda _: settle(batch))
            else:
                settle(batch)
            return
        self._acks.append(_Ack(count, batch))
        commands = self._commands(subs, unsubs)
        await conn.send_packed_command(conn.pack_commands(commands), check_health=False)

    def _commands(self, subs: list[str], unsubs: list[str]) -> list[tuple[str, ...]]:
        """The commands that (un)subscribe these Redis names (the cluster's are sharded)."""
        return [*_chunks("SUBSCRIBE", subs), *_chunks("UNSUBSCRIBE", unsubs)]

    def redis_name(self, channel: str) -> str:
        """The Redis channel of a wshub channel: ``prefix + channel``."""
        return self._prefix + channel

    def _take_changes(self) -> tuple[list[str], list[str]]:
        """Turn changed channels into Redis names to (un)subscribe, recording them as sent."""
        desired, server = self.desired, self._server
        subs = [c for c in self._dirty if c in desired and c not in server]
        unsubs = [c for c in self._dirty if c not in desired and c in server]
        self._dirty.clear()
        server.update(subs)
        server.difference_update(unsubs)
        name = self.redis_name
        names = [name(c) for c in subs]
        if not self._probe_sent:
            names.append(self._probe_channel)
            self._probe_sent = True
        return names, [name(c) for c in unsubs]


async def wait_batch(batch: asyncio.Future[None] | None) -> None:
    """Wait until a batch from `Subscriptions.request` is confirmed (None: nothing to wait for)."""
    # Shielded: the batch is shared, one cancelled caller must not cancel it for others.
    if batch is not None:
        await asyncio.shield(batch)


async def stop_tasks(*tasks: asyncio.Task[None] | None) -> None:
    """Cancel tasks and wait for them to end; their failures were handled where they arose.

    redis-py's internal ``asyncio.wait_for`` can swallow a cancellation on Python 3.11,
    and the task then carries on: cancel again every half second, and give up after
    five seconds rather than hang the caller (a broker's ``close()``).
    """
    pending = {task for task in tasks if task is not None}
    done: set[asyncio.Task[None]] = set()
    for _ in range(10):
        if not pending:
            break
        for task in pending:
            task.cancel()
        finished, pending = await asyncio.wait(pending, timeout=0.5)
        done |= finished
    if pending:
        logging.getLogger(__name__).warning("%d task(s) ignored cancellation", len(pending))
    for task in done:
        if not task.cancelled():
            task.exception()
