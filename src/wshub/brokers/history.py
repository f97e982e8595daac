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

from wshub.brokers.base import HistoryOptions, Publication


@dataclasses.dataclass(frozen=True, slots=True)
class StreamPosition:
    """Where a channel's history stands.

    Attributes:
        offset: the newest publication's offset (0 before the first one).
        epoch: the history's epoch; ``""`` for a channel with no history yet (the
            first publication starts an epoch; reads never create one).
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
        self, channel: str, *, since: int | None = None, limit: int | None = None
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

        Returns:
            The page; an unknown channel has a fresh epoch and offset 0.

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


class _Stream:
    __slots__ = ("epoch", "offset", "items", "touched")

    def __init__(self, size: int) -> None:
        self.epoch = new_epoch()
        self.offset = 0
        self.items: collections.deque[tuple[float, Publication]] = collections.deque(maxlen=size)
        self.touched = time.monotonic()


class MemoryHistory:
    """Ring buffers of one process: per channel, the last ``size`` publications for ``ttl``."""

    def __init__(self) -> None:
        self._streams: dict[str, _Stream] = {}
        self._options: dict[str, HistoryOptions] = {}

    def append(
        self, channel: str, data: bytes, origin: str | None, options: HistoryOptions
    ) -> Publication:
        """Give a publication the channel's next offset and keep it.

        Returns:
            The publication, carrying its offset.
        """
        now = time.monotonic()
        stream = self._live_stream(channel, now)
        if stream is None:
            stream = self._streams[channel] = _Stream(options.size)
        elif stream.items.maxlen != options.size:  # the namespace was reconfigured
            stream.items = collections.deque(stream.items, maxlen=options.size)
        self._options[channel] = options
        stream.offset += 1
        stream.touched = now
        publication = Publication(data, stream.offset, origin)
        stream.items.append((now, publication))
        return publication

    def position(self, channel: str) -> StreamPosition:
        """The channel's current position (offset 0, epoch ``""`` when it has no history)."""
        stream = self._live_stream(channel, time.monotonic())
        return NO_HISTORY if stream is None else StreamPosition(stream.offset, stream.epoch)

    def read(self, channel: str, since: int | None, limit: int | None) -> HistoryPage:
        """Read a page (see `History.history`)."""
        now = time.monotonic()
        stream = self._live_stream(channel, now)
        if stream is None:
            return HistoryPage(self.position(channel), [], since is None or since == 0)
        ttl = self._options[channel].ttl
        kept = [p for stamp, p in stream.items if now - stamp <= ttl]
        position = StreamPosition(stream.offset, stream.epoch)
        if since is None:
            newest = kept if limit is None else kept[len(kept) - limit :] if limit else []
            return HistoryPage(position, newest)
        after = [p for p in kept if p.offset is not None and p.offset > since]
        oldest = after[0].offset if after else stream.offset + 1
        complete = since >= stream.offset or oldest == since + 1
        return HistoryPage(position, after if limit is None else after[:limit], complete)

    def _live_stream(self, channel: str, now: float) -> _Stream | None:
        stream = self._streams.get(channel)
        options = self._options.get(channel)
        if stream is not None and options is not None and now - stream.touched > options.ttl:
            del self._streams[channel]  # forgotten: the next publish starts a new epoch
            del self._options[channel]
            return None
        return stream
