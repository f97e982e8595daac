"""Gaps: live delivery without holes on channels with history, on the same connections.

Brokers deliver at most once: a Redis subscriber connection that was dropped (killed,
over its output buffer limit, Redis stopped and resumed) misses what was published
until it is back. On a channel that keeps history every publication has an offset,
so the hub can tell, and refill the hole from the history before anything newer:

- The hub knows, per channel with history and local members, the last offset it
  delivered locally (`GapFiller.last`, read and bumped by `Delivery.on_publication`:
  one dict lookup and one int compare per publication, not per recipient).
- A publication whose offset is not the next one starts a **refill**: the channel's
  live publications are held (for every local member), the missing range is read from
  the history and delivered first, in order, then the held ones; duplicates dropped.
- After every broker reconnect (`Hub.on_state` CONNECTED after an outage) and every
  ``position_check_interval`` seconds, each tracked channel's position is read; a
  top offset past the last one delivered (or another epoch) refills the same way.
- When the range is no longer in the history, or the epoch changed (history expired
  or Redis lost its data), the channel's protocol members get a ``gap`` frame on their
  live connection, ``{"op":"gap","channel":..,"epoch":..,"offset":..}``: the messages
  that follow continue after ``offset`` in ``epoch``, and the ones before are lost
  for them: reload the channel's state from the application.

Counted in `HubStats` (``gap_refills``, ``gap_refilled``, ``gaps_unrecoverable``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, Protocol

from wshub.brokers.history import History, HistoryPage, StreamPosition
from wshub.core.errors import BrokerUnavailable
from wshub.core.types import HistoryOptions, Publication

if TYPE_CHECKING:
    from wshub.hub.connection import Connection
    from wshub.hub.registry import Registry
    from wshub.hub.stats import HubStats

logger = logging.getLogger("wshub.hub")

#: `GapFiller.last` while a channel is being refilled: no offset is ever its next one,
#: so every publication takes the slow path and is held.
REFILLING: Final = -1
#: Seconds a refill keeps retrying a history that cannot be read before giving up.
REFILL_PATIENCE: Final = 30.0


class FanOut(Protocol):
    """What the filler delivers through (`wshub.hub.delivery.Delivery`)."""

    def fan_out(
        self,
        channel: str,
        publication: Publication,
        started: float | None = None,
        floors: dict[Connection, int] | None = None,
    ) -> None: ...


def gap_frame(channel: str, epoch: str, offset: int) -> dict[str, Any]:
    """The ``gap`` frame: what follows continues after ``offset`` in ``epoch``."""
    return {"op": "gap", "channel": channel, "epoch": epoch, "offset": offset}


class GapFiller:
    """Tracks the last offset delivered per channel with history, and refills holes.

    Args:
        broker: the hub's broker (a `History`, or nothing is ever tracked).
        registry: the hub's maps, for the channels' members.
        delivery: fans refilled publications out (`Delivery.fan_out`).
        options: the history options of a channel (`Recovery.history_options`).
        stats: the hub's counters.

    Attributes:
        last: channel -> the last offset delivered locally (`REFILLING` during a refill).
        epochs: channel -> the epoch of ``last``.
    """

    def __init__(
        self,
        broker: object,
        registry: Registry,
        delivery: FanOut,
        options: Callable[[str], HistoryOptions | None],
        stats: HubStats,
    ) -> None:
        self.broker = broker
        self.registry = registry
        self.delivery = delivery
        self.options = options
        self.stats = stats
        self.last: dict[str, int] = {}
        self.epochs: dict[str, str] = {}
        self._base: dict[str, int] = {}  # the last offset delivered when a refill began
        self._held: dict[str, list[Publication]] = {}
        self._floors: dict[str, dict[Connection, int]] = {}
        self._seen: dict[str, int] = {}  # untracked channels: the newest offset delivered
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._checking: asyncio.Task[None] | None = None

    # -- tracking ------------------------------------------------------------------

    def joined(self, conn: Connection, channel: str, position: StreamPosition) -> None:
        """``conn`` subscribed with a history read at ``position``, its reply sent.

        The first member starts tracking the channel. A later one that was told a
        position the hub has not delivered yet (a hole nobody noticed), or another
        epoch, starts a refill; it gets nothing the reply already covered.
        """
        if not position.epoch:
            return
        last = self.last.get(channel)
        if last is None:
            self.last[channel] = max(position.offset, self._seen.pop(channel, 0))
            self.epochs[channel] = position.epoch
            return
        same = position.epoch == self.epochs.get(channel)
        if last == REFILLING:
            if same:
                self._floors.setdefault(channel, {})[conn] = position.offset
            return
        if not same or position.offset > last:
            if same:
                self._floors.setdefault(channel, {})[conn] = position.offset
            self._start(channel, last, [])

    def untrack(self, channel: str) -> None:
        """The broker left ``channel`` (no local member): forget it, stop its refill."""
        self.last.pop(channel, None)
        self.epochs.pop(channel, None)
        self._base.pop(channel, None)
        self._held.pop(channel, None)
        self._floors.pop(channel, None)
        self._seen.pop(channel, None)
        task = self._tasks.pop(channel, None)
        if task is not None:
            task.cancel()

    def note_untracked(self, channel: str, offset: int) -> None:
        """A publication with an offset on a channel not tracked (yet): remember it."""
        self._seen[channel] = offset

    def unexpected(self, channel: str, publication: Publication) -> bool:
        """A tracked channel's publication is not the next offset (the slow path).

        Returns:
            True: it was taken (held for a refill, or dropped as a duplicate).
        """
        last = self.last[channel]
        if last == REFILLING:
            self._held[channel].append(publication)
            return True
        # Skipped ahead (a hole), or behind: a duplicate, or a new epoch (offsets
        # restart at 1, and publications carry no epoch): the history tells.
        self._start(channel, last, [publication])
        return True

    def _start(self, channel: str, base: int, held: list[Publication]) -> None:
        self.last[channel] = REFILLING
        self._base[channel] = base
        self._held[channel] = held
        self._tasks[channel] = asyncio.get_running_loop().create_task(
            self._refill(channel), name=f"wshub-refill-{channel}"
        )

    # -- position checks -------------------------------------------------------------

    def check_all(self) -> None:
        """Check every tracked channel's position soon (after a broker reconnect)."""
        if self.last and (self._checking is None or self._checking.done()):
            self._checking = asyncio.get_running_loop().create_task(
                self.check_positions(), name="wshub-position-check"
            )

    async def check_positions(self) -> None:
        """Compare each tracked channel's history top with what was delivered; refill."""
        for channel in list(self.last):
            if self.last.get(channel, REFILLING) == REFILLING:
                continue
            with contextlib.suppress(BrokerUnavailable):
                await self.check(channel)

    async def check(self, channel: str) -> None:
        """Read ``channel``'s position; start a refill when the hub is behind it.

        Raises:
            BrokerUnavailable: the position could not be read.
        """
        page = await self._read(channel, None, 0)
        last = self.last.get(channel)
        if last is None or last == REFILLING or page is None:
            return
        position = page.position
        if position.epoch != self.epochs.get(channel) or position.offset > last:
            self._start(channel, last, [])

    async def run(self, interval: float) -> None:
        """Check positions every ``interval`` seconds, forever (a hub background task)."""
        while True:
            await asyncio.sleep(interval)
            if self.last:
                await self.check_positions()

    async def close(self) -> None:
        """Stop every refill and check."""
        tasks = [*self._tasks.values(), *([self._checking] if self._checking else [])]
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task

    # -- refilling -----------------------------------------------------------------

    async def _read(self, channel: str, since: int | None, limit: int | None) -> HistoryPage | None:
        broker, options = self.broker, self.options(channel)
        if not isinstance(broker, History) or options is None:
            return None
        return await broker.history(channel, since=since, limit=limit, options=options)

    async def _refill(self, channel: str) -> None:
        try:
            await self._refill_once(channel)
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("refilling %r failed", channel)
            self._give_up(channel)
        finally:
            if self._tasks.get(channel) is asyncio.current_task():
                del self._tasks[channel]

    async def _refill_once(self, channel: str) -> None:
        base, epoch = self._base[channel], self.epochs[channel]
        page = await self._read_patiently(channel, base)
        if page is None:
            self._give_up(channel)
            return
        new_epoch = page.position.epoch != epoch
        if new_epoch:
            # Everything of the old epoch after `base` is lost: start the new one over.
            page = await self._read_patiently(channel, 0)
            if page is None:
                self._give_up(channel)
                return
            base = 0
        if channel not in self.last:
            return  # untracked meanwhile
        # No await from here on: refilled, then held, in offset order.
        position = page.position
        kept = [p for p in page.publications if p.offset is not None and p.offset > base]
        if not new_epoch and page.complete:
            last = base  # the whole hole is in the history
            if kept:
                self.stats.gap_refills += 1
                self.stats.gap_refilled += len(kept)
        else:
            # Lost: what follows continues after `last` (0: the new epoch from its start).
            if new_epoch and page.complete:
                last = 0
            else:
                last = (kept[0].offset or 1) - 1 if kept else position.offset
            self._announce_gap(channel, position.epoch, last)
        self.epochs[channel] = position.epoch
        for publication in kept:
            self._fan_out(channel, publication)
            last = publication.offset or last
        self._drain(channel, max(last, 0))

    async def _read_patiently(self, channel: str, since: int) -> HistoryPage | None:
        """Read after ``since``, retrying while the broker is down, for `REFILL_PATIENCE`."""
        deadline = time.monotonic() + REFILL_PATIENCE
        delay = 0.1
        while True:
            try:
                return await self._read(channel, since, None)
            except BrokerUnavailable:
                if time.monotonic() + delay > deadline:
                    return None
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    def _drain(self, channel: str, last: int) -> None:
        """Deliver the held publications after ``last``; a new hole refills again."""
        held = self._held.pop(channel, [])
        for index, publication in enumerate(held):
            offset = publication.offset
            if offset is None or offset <= last:
                continue  # refilled already
            if offset != last + 1:
                self._floors_done(channel, last)
                self._start(channel, last, held[index:])
                return
            self._fan_out(channel, publication)
            last = offset
        self._floors_done(channel, last)
        self.last[channel] = last

    def _floors_done(self, channel: str, last: int) -> None:
        floors = self._floors.get(channel)
        if floors:
            for conn in [c for c, floor in floors.items() if floor <= last]:
                del floors[conn]
            if not floors:
                del self._floors[channel]

    def _fan_out(self, channel: str, publication: Publication) -> None:
        self.delivery.fan_out(channel, publication, None, self._floors.get(channel))

    def _give_up(self, channel: str) -> None:
        """The history could not be read in time: deliver what is held after a gap frame."""
        if channel not in self.last:
            return
        held = self._held.pop(channel, [])
        epoch = self.epochs.get(channel, "")
        first = next((p.offset for p in held if p.offset is not None), None)
        last = self._base.get(channel, 0) if first is None else first - 1
        if first is not None:
            self._announce_gap(channel, epoch, last)
        self._held[channel] = held
        self._drain(channel, last)

    def _announce_gap(self, channel: str, epoch: str, offset: int) -> None:
        """Tell the channel's protocol members what follows continues after ``offset``."""
        self.stats.gaps_unrecoverable += 1
        logger.warning(
            "channel %r: publications lost beyond its history; subscribers told to "
            "resync (continuing after offset %d, epoch %s)",
            channel,
            offset,
            epoch,
        )
        frame = gap_frame(channel, epoch, offset)
        encoded: dict[int, Any] = {}
        for conn in list(self.registry.members(channel) or ()):
            codec = conn.codec
            if codec.subprotocol is None:
                continue  # library mode: no protocol frames
            if codec.index not in encoded:
                encoded[codec.index] = codec.encode(frame)
            if conn.recovering and channel in conn.recovering:
                conn.recovering[channel].append((None, encoded[codec.index]))
            else:
                conn.enqueue(encoded[codec.index])
