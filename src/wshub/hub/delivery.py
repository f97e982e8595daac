"""Delivery: a publication's way from `Hub.publish` to the send queues of local members.

Publishing goes through the broker even within one process, so that one code
path serves one worker and fifty: `Delivery.publish` encodes the data once, the
broker hands the bytes to `Delivery.on_publication` in every subscribed process,
and there each local member gets the same frame enqueued. Fan-out is a plain
synchronous loop: no task, future or socket write per recipient. Connections
whose writer is parked are flushed straight to their transports once per loop
iteration (`mark_dirty`), so every publish of the iteration goes out packed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable

import orjson

from wshub.brokers.base import Broker
from wshub.core.channels import BROADCAST_CHANNEL
from wshub.core.codecs import CODECS, encode_data
from wshub.core.errors import PublishError
from wshub.core.sendqueue import Frame
from wshub.core.types import HistoryOptions, Idempotency, Publication, PublishResult
from wshub.hub.connection import Connection
from wshub.hub.gaps import GapFiller
from wshub.hub.registry import Registry
from wshub.hub.stats import HubStats

logger = logging.getLogger("wshub.hub")

#: The ``origin`` marking a publication on a ``#user:`` channel as a disconnect command
#: (client ids are hex, so no client can be it); see `Hub.disconnect_user`.
DISCONNECT_ORIGIN = "#disconnect"
# Close codes a server may send besides the private range 3000-4999 (RFC 6455, 7.4.1).
_SENDABLE_CODES = frozenset({1000, 1001, 1008, 1011, 1012, 1013})
# Publications timed for the latency histogram and not back yet, at most.
_MAX_TIMED_PUBLISHES = 256  # each holds its payload: bounded memory if some never return


def sendable_close_code(code: int) -> bool:
    """Tell whether a server may close with ``code`` (1000, 1001, 1008, 1011-1013, 3000-4999)."""
    return code in _SENDABLE_CODES or 3000 <= code <= 4999


class Delivery:
    """Publishing and fan-out for one hub.

    Args:
        broker: the hub's broker.
        registry: the hub's maps, read for each publication's recipients.
        subscribed: the channels the broker is subscribed to (`Membership.subscribed`).
        stats: the hub's counters.
    """

    def __init__(
        self, broker: Broker, registry: Registry, subscribed: set[str], stats: HubStats
    ) -> None:
        self.broker = broker
        self.registry = registry
        self.stats = stats
        self._subscribed = subscribed
        self._dirty: list[Connection] = []
        # (channel, payload) -> perf_counter() at publish, until it comes back for fan-out.
        self._publish_started: dict[tuple[str, bytes], float] = {}
        # Publishes since writers last got to run, and whether a recipient's queue is filling.
        self._unyielded = 0
        self._backlogged = False
        #: The last offset delivered per tracked channel (`GapFiller.last`), and the filler.
        self.positions: dict[str, int] = {}
        self.gaps: GapFiller | None = None

    def mark_dirty(self, conn: Connection) -> None:
        """Flush ``conn`` straight to its transport at the end of this loop iteration.

        One ``call_soon`` per iteration for all connections: every publish of the
        iteration is enqueued first, so each connection gets one packed write.
        """
        dirty = self._dirty
        dirty.append(conn)
        if len(dirty) == 1:
            asyncio.get_running_loop().call_soon(self._flush_dirty)

    def _flush_dirty(self) -> None:
        dirty, self._dirty = self._dirty, []
        for conn in dirty:
            conn.flush()

    async def publish(
        self,
        channel: str,
        data: object,
        origin: str | None,
        history: HistoryOptions | None,
        idempotency: Idempotency | None = None,
    ) -> PublishResult:
        """Encode ``data`` once and hand it to the broker; see `Hub.publish`."""
        try:
            payload = encode_data(data)
        except TypeError as exc:
            raise PublishError(f"data cannot be encoded as JSON: {exc}") from None
        timed = self._time_publish(channel, payload)
        # No await before the broker call: brokers take a publication before their
        # first suspension, so concurrent publishes reach them in the order they began.
        try:
            if idempotency is None:
                result = await self.broker.publish(channel, payload, origin=origin, history=history)
            else:  # only then: engines written before idempotency keys need not take one
                result = await self.broker.publish(
                    channel, payload, origin=origin, history=history, idempotency=idempotency
                )
        except BaseException:
            if timed is not None:
                self._publish_started.pop(timed, None)
            raise
        await self._yield_to_writers()
        return result

    async def _yield_to_writers(self) -> None:
        """Let the writers run after this publish if a queue is half full, or every 64.

        Fan-out only enqueues, and the memory broker never awaits: a tight publish loop
        would otherwise never let writers run, and overflow (4008) the queues of clients
        however fast they read. Yielding before every publish would cost one WebSocket
        message per frame instead: this way a burst is packed into few messages.
        """
        self._unyielded += 1
        if self._backlogged or self._unyielded >= 64:
            self._backlogged, self._unyielded = False, 0
            await asyncio.sleep(0)

    def _time_publish(self, channel: str, payload: bytes) -> tuple[str, bytes] | None:
        """Note when a publication to a channel with local members starts (for its latency)."""
        if channel not in self._subscribed:
            return None  # it will not come back here
        started = self._publish_started
        if len(started) >= _MAX_TIMED_PUBLISHES:
            started.clear()  # publications lost on the way (a broker outage) must not pile up
        key = (channel, payload)
        started[key] = time.perf_counter()
        return key

    async def disconnect_user(self, channel: str, code: int, reason: str) -> None:
        """Send a disconnect command on a user's channel (``#user:<id>``).

        The command travels on the user's own internal channel, so it reaches exactly
        the processes where the user has connections; each closes them after their
        queues drain.

        Args:
            channel: the user's channel.
            code: the close code (1000, 1001, 1008, 1011, 1013 or 3000-4999).
            reason: the close reason, cut to 123 bytes.

        Raises:
            ValueError: ``code`` is not one a server may send.
            BrokerUnavailable: the broker is down; nothing was closed.
        """
        if not sendable_close_code(code):
            raise ValueError(f"close code {code} cannot be sent by a server")
        command = orjson.dumps({"code": code, "reason": reason})
        await self.broker.publish(channel, command, origin=DISCONNECT_ORIGIN)

    def _disconnect(self, members: Iterable[Connection] | None, command: bytes) -> None:
        try:
            fields = orjson.loads(command)
            code, reason = int(fields["code"]), str(fields.get("reason", ""))
        except (ValueError, TypeError, KeyError):
            code, reason = 0, ""
        if not sendable_close_code(code):
            logger.warning("ignored a malformed disconnect command: %.100r", command)
            return
        for conn in list(members or ()):
            conn.close(code, reason)

    def on_publication(self, channel: str, publication: Publication) -> None:
        """Fan a publication out to local members (`BrokerEvents`); never blocks.

        On a channel with history the offset is checked first (`wshub.hub.gaps`): one
        dict lookup and one compare per publication; one that is not the next offset
        is handed to the `GapFiller`, which holds it while the hole is refilled.
        """
        self.stats.publications += 1
        offset = publication.offset
        if offset is not None:
            last = self.positions.get(channel)
            if last is None:
                if self.gaps is not None:
                    self.gaps.note_untracked(channel, offset)
            elif offset == last + 1:
                self.positions[channel] = offset
            elif self.gaps is not None and self.gaps.unexpected(channel, publication):
                if self._publish_started:
                    self._publish_started.pop((channel, publication.data), None)
                return
        started = (
            self._publish_started.pop((channel, publication.data), None)
            if self._publish_started
            else None
        )
        self.fan_out(channel, publication, started)

    def fan_out(
        self,
        channel: str,
        publication: Publication,
        started: float | None = None,
        floors: dict[Connection, int] | None = None,
    ) -> None:
        """Enqueue ``publication`` for every local member of ``channel``.

        Args:
            started: when it was published here, for the latency histogram.
            floors: members that must not get offsets up to their floor (refills:
                their subscribe reply carried those already).
        """
        members = self.registry.members(channel)
        if (
            channel[0] == "#"
            and publication.origin == DISCONNECT_ORIGIN
            and channel != BROADCAST_CHANNEL
        ):
            self._disconnect(members, publication.data)
            return
        if not members:
            return
        # One frame per codec, built on first use: encoded once, not once per recipient.
        frames: list[Frame | None] = [None] * len(CODECS)
        built = [False] * len(CODECS)
        count = 0
        for conn in members:
            if floors and (offset := publication.offset) is not None:
                if floors.get(conn, 0) >= offset:
                    continue  # its subscribe reply carried this one already
            index = conn.codec.index
            if not built[index]:
                frames[index], built[index] = conn.codec.message(channel, publication), True
            frame = frames[index]
            if frame is None:
                continue  # this codec's clients don't get this kind of publication
            if conn.recovering and channel in conn.recovering:
                conn.recovering[channel].append((publication.offset, frame))
                continue
            conn.enqueue(frame)
            count += 1
            queue = conn.queue
            if len(queue) * 2 > queue.max_messages or queue.bytes * 2 > queue.max_bytes:
                self._backlogged = True  # the next publish lets writers run first
        self.stats.deliveries += count
        if started is not None:
            self.stats.publish_latency.observe(time.perf_counter() - started)
