"""History: the recent past of a channel, for recovery on reconnect and the ``history`` op.

Every publication to a channel that keeps history gets an offset (1, 2, 3, ...)
and the history has an epoch: a random string that changes whenever the history
is lost (expired, or dropped by a restarted Redis), so that a client holding an
offset of an old epoch learns it cannot recover and must reload its state.

This module holds the interface brokers implement (`History`), the value types,
and `MemoryHistory`, the ring buffers the memory broker keeps.
"""

from __future__ import annotations

import abc
import collections
import dataclasses
import secrets
import time
from typing import Final

from wshub.brokers.base import HistoryOptions, Publication


@dataclasses.dataclass(frozen=True, slots=True)
class StreamPosition:
    """Where a channel's history stands.

    Attributes:
        offset: the newest publication's offset (0 before the first one).
        epoch: the history's epoch; ``""`` only for a channel read without
            `HistoryOptions` before it had a history. The epoch exists from the first
            subscribe, publish or read with options, whichever comes first.
    """

    offset: int
    epoch: str


@dataclasses.dataclass(frozen=True, slots=True)
class HistoryPage:
    """Publications read from a history, oldest first.

    Attributes:
        position: the channel's position when read.
        publications: the publications asked for, oldest first.
        complete: True when nothing after ``since`` was missing (the history still
            held the publication right after it); always True without ``since``.
    """

    position: StreamPosition
    publications: list[Publication]
    complete: bool = True


class History(abc.ABC):
    """Reads a channel's history; implemented by brokers that keep one.

    Writing happens in `Broker.publish` with ``history=...``, atomically with delivery.
    """

    @abc.abstractmethod
    async def history(
        self,
        channel: str,
        *,
        since: int | None = None,
        limit: int | None = None,
        options: HistoryOptions | None = None,
    ) -> HistoryPage:
        """Read publications of ``channel``.

        When this process is subscribed to ``channel``, every publication up to the
        returned position must have reached `BrokerEvents.on_publication` before this
        returns: recovery skips the live ones held back meanwhile that the page
        covers, and one arriving later would reach the client twice.

        Args:
            since: return those with an offset greater than this, oldest first (up to
                ``limit``); None returns the newest ``limit`` publications.
            limit: at most this many; None for all kept, 0 for none (position only).
            options: the channel's history options. With them, a channel without a
                history gets one now (offset 0, a new epoch, expiring after
                ``options.ttl`` unless published to), so that every position a client
                is told carries an epoch. Without them, such a channel reads as
                `NO_HISTORY`.

        Returns:
            The page.

        Raises:
            BrokerUnavailable: the history cannot be read now.
        """


NO_HISTORY = StreamPosition(0, "")


def recovered(page: HistoryPage, since: int, epoch: str | None) -> bool:
    """Tell whether ``page`` holds everything after ``since`` of ``epoch``.

    ``since == 0`` (the client saw nothing) recovers from any epoch, as long as the
    history still starts at offset 1.
    """
    return page.complete and (since == 0 or epoch == page.position.epoch)


def new_epoch() -> str:
    """A new random epoch."""
    return secrets.token_hex(4)


#: Bytes counted for each kept publication besides its data: the `Publication`, its
#: entry in the ring buffer, the bytes object's header and the time stamp. Both engines
#: count a publication as ``len(data) + ENTRY_OVERHEAD`` against ``history_max_bytes``.
ENTRY_OVERHEAD: Final = 256
#: Bytes counted for each channel's history besides its entries (the stream object,
#: its deque, the dict slots that hold it), so that many channels with empty or tiny
#: histories still count against the memory budget.
STREAM_OVERHEAD: Final = 512
#: Default of `MemoryHistory`'s budget (setting ``history_max_memory``).
DEFAULT_MAX_MEMORY: Final = 64 * 1024 * 1024
#: Expired histories dropped at most per publish (the periodic sweep drops the rest).
SWEEP_PER_APPEND: Final = 4


def entry_cost(data: bytes) -> int:
    """The bytes a kept publication counts against the byte caps."""
    return len(data) + ENTRY_OVERHEAD


class _Stream:
    __slots__ = ("channel", "epoch", "offset", "items", "bytes", "touched", "options")

    def __init__(self, channel: str, options: HistoryOptions, now: float) -> None:
        self.channel = channel
        self.epoch = new_epoch()
        self.offset = 0
        self.items: collections.deque[tuple[float, Publication]] = collections.deque()
        self.bytes = STREAM_OVERHEAD + len(channel)  # accounted: overhead + entries
        self.touched = now
        self.options = options


class MemoryHistory:
    """Ring buffers of one process: per channel, the last ``size`` publications for ``ttl``.

    Memory stays bounded three ways: each channel keeps at most ``size`` publications
    and ``max_bytes`` bytes (`HistoryOptions`), and all channels together at most
    ``max_memory`` bytes: past it, the least recently published channel loses its
    oldest publications first, and a channel left without any is forgotten (its next
    publish starts a new epoch). Each publication counts ``len(data) +
    ENTRY_OVERHEAD``, each channel ``STREAM_OVERHEAD`` more. Expired histories are
    dropped a few per publish and by `sweep` (the memory broker runs it periodically).

    Args:
        max_memory: the budget in bytes of all histories of this process; 0: unbounded.

    Attributes:
        total_bytes: the bytes accounted for every history kept.
        evictions: publications dropped to stay within ``max_bytes`` or ``max_memory``
            (not those that left a ring buffer by ``size``, nor expired ones).
    """

    def __init__(self, max_memory: int = DEFAULT_MAX_MEMORY) -> None:
        if max_memory < 0:
            raise ValueError("max_memory cannot be negative")
        self.max_memory = max_memory
        self.total_bytes = 0
        self.evictions = 0
        # Least recently published first: the eviction order of the memory budget.
        self._streams: collections.OrderedDict[str, _Stream] = collections.OrderedDict()
        # The same streams grouped by ttl, least recently published first: in a group,
        # that is also the order in which they expire, so sweeping looks at heads only.
        self._by_ttl: dict[float, collections.OrderedDict[str, _Stream]] = {}

    @property
    def channels(self) -> int:
        """Channels with a history kept."""
        return len(self._streams)

    def append(
        self, channel: str, data: bytes, origin: str | None, options: HistoryOptions
    ) -> tuple[Publication, str]:
        """Give a publication the channel's next offset and keep it.

        Returns:
            The publication, carrying its offset, and the history's epoch.
        """
        now = time.monotonic()
        self._sweep(now, SWEEP_PER_APPEND)
        stream = self._live_stream(channel, now)
        if stream is None:
            stream = self._create(channel, options, now)
        else:
            self._streams.move_to_end(channel)
            self._ungroup(stream)
            stream.touched = now
            stream.options = options  # the namespace may have been reconfigured
            self._by_ttl.setdefault(options.ttl, collections.OrderedDict())[channel] = stream
        stream.offset += 1
        publication = Publication(data, stream.offset, origin)
        stream.items.append((now, publication))
        cost = entry_cost(data)
        stream.bytes += cost
        self.total_bytes += cost
        self._trim(stream, now)
        if self.max_memory and self.total_bytes > self.max_memory:
            self._enforce_budget(stream)
        return publication, stream.epoch

    def position(self, channel: str) -> StreamPosition:
        """The channel's current position (offset 0, epoch ``""`` when it has no history)."""
        stream = self._live_stream(channel, time.monotonic())
        return NO_HISTORY if stream is None else StreamPosition(stream.offset, stream.epoch)

    def read(
        self,
        channel: str,
        since: int | None,
        limit: int | None,
        options: HistoryOptions | None = None,
    ) -> HistoryPage:
        """Read a page (see `History.history`); with ``options``, create a missing history."""
        now = time.monotonic()
        stream = self._live_stream(channel, now)
        if stream is None and options is not None:
            stream = self._create(channel, options, now)
        if stream is None:
            return HistoryPage(NO_HISTORY, [], since is None or since == 0)
        ttl = stream.options.ttl
        kept = [p for stamp, p in stream.items if now - stamp <= ttl]
        position = StreamPosition(stream.offset, stream.epoch)
        if since is None:
            if limit is None:
                return HistoryPage(position, kept)
            return HistoryPage(position, kept[max(len(kept) - limit, 0) :] if limit > 0 else [])
        after = [p for p in kept if p.offset is not None and p.offset > since]
        oldest = after[0].offset if after else stream.offset + 1
        complete = since >= stream.offset or oldest == since + 1
        return HistoryPage(position, after if limit is None else after[: max(limit, 0)], complete)

    def _create(self, channel: str, options: HistoryOptions, now: float) -> _Stream:
        """Start ``channel``'s history: offset 0, a new epoch, expiring after ``options.ttl``."""
        stream = _Stream(channel, options, now)
        self._streams[channel] = stream
        self.total_bytes += stream.bytes
        self._by_ttl.setdefault(options.ttl, collections.OrderedDict())[channel] = stream
        return stream

    def sweep(self) -> int:
        """Drop every expired history now.

        Returns:
            How many were dropped.
        """
        return self._sweep(time.monotonic(), None)

    def clear(self) -> None:
        """Forget every history."""
        self._streams.clear()
        self._by_ttl.clear()
        self.total_bytes = 0

    def _sweep(self, now: float, at_most: int | None) -> int:
        dropped = 0
        for ttl, group in list(self._by_ttl.items()):
            while group and (at_most is None or dropped < at_most):
                stream = next(iter(group.values()))
                if now - stream.touched <= ttl:
                    break
                self._forget(stream)
                dropped += 1
        return dropped

    def _trim(self, stream: _Stream, now: float) -> None:
        """Keep ``stream`` within its size and byte cap; drop its expired head."""
        items, options = stream.items, stream.options
        while items and (len(items) > options.size or now - items[0][0] > options.ttl):
            self._drop_oldest(stream)
        cap = options.max_bytes
        if cap:
            while items and stream.bytes - STREAM_OVERHEAD - len(stream.channel) > cap:
                self._drop_oldest(stream)
                self.evictions += 1

    def _enforce_budget(self, current: _Stream) -> None:
        """Evict the oldest publications of the least recently published channels."""
        streams = self._streams
        while self.total_bytes > self.max_memory and streams:
            oldest = next(iter(streams.values()))
            if oldest.items:
                self._drop_oldest(oldest)
                self.evictions += 1
            if not oldest.items:
                if oldest is current:
                    break  # the only one left: keep its position (and epoch)
                self._forget(oldest)

    def _drop_oldest(self, stream: _Stream) -> None:
        _, publication = stream.items.popleft()
        cost = entry_cost(publication.data)
        stream.bytes -= cost
        self.total_bytes -= cost

    def _ungroup(self, stream: _Stream) -> None:
        group = self._by_ttl.get(stream.options.ttl)
        if group is not None:
            group.pop(stream.channel, None)
            if not group:
                del self._by_ttl[stream.options.ttl]

    def _forget(self, stream: _Stream) -> None:
        """Drop ``stream`` whole: the channel's next publish starts a new epoch."""
        del self._streams[stream.channel]
        self._ungroup(stream)
        self.total_bytes -= stream.bytes

    def _live_stream(self, channel: str, now: float) -> _Stream | None:
        stream = self._streams.get(channel)
        if stream is not None and now - stream.touched > stream.options.ttl:
            self._forget(stream)  # forgotten: the next publish starts a new epoch
            return None
        return stream


#: Idempotency keys one channel remembers at most (memory broker); the oldest go first.
MAX_KEYS_PER_CHANNEL: Final = 10_000


class RecentKeys:
    """The memory broker's idempotency keys: per channel, key -> the first publish's result.

    Bounded: at most `MAX_KEYS_PER_CHANNEL` per channel (oldest dropped first), each
    forgotten ``window`` seconds after its publish; a channel whose keys all expired
    is dropped. Expired keys are dropped lazily, on use of their channel.
    """

    def __init__(self) -> None:
        # channel -> key -> (expires at, result), oldest first
        self._channels: dict[str, collections.OrderedDict[str, tuple[float, object]]] = {}

    def get(self, channel: str, key: str) -> object | None:
        """The result remembered for ``key`` on ``channel``, or None."""
        keys = self._channels.get(channel)
        if keys is None:
            return None
        now = time.monotonic()
        while keys:
            oldest = next(iter(keys.values()))
            if oldest[0] > now:
                break
            keys.popitem(last=False)
        if not keys:
            del self._channels[channel]
            return None
        entry = keys.get(key)
        return None if entry is None else entry[1]

    def put(self, channel: str, key: str, window: float, result: object) -> None:
        """Remember ``result`` for ``key`` on ``channel`` for ``window`` seconds."""
        keys = self._channels.setdefault(channel, collections.OrderedDict())
        keys[key] = (time.monotonic() + window, result)
        keys.move_to_end(key)
        while len(keys) > MAX_KEYS_PER_CHANNEL:
            keys.popitem(last=False)

    def __len__(self) -> int:
        return sum(len(keys) for keys in self._channels.values())
