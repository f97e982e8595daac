"""The in-memory broker: one process, no dependencies, the embedded default.

It keeps history in ring buffers and presence in a table of this process, so
both work for a single worker; several workers need a shared broker (Redis).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

from wshub.brokers.base import (
    Broker,
    BrokerEvents,
    BrokerState,
    HistoryOptions,
    Publication,
    PublishResult,
)
from wshub.brokers.history import History, HistoryPage, MemoryHistory, RecentKeys
from wshub.brokers.presence import ClientInfo, MemoryPresence, Presence
from wshub.core.types import Idempotency

#: The history budget of a memory broker built without one (the setting's default).
DEFAULT_HISTORY_MAX_MEMORY = 64 * 1024 * 1024


class MemoryBroker(Broker, History, Presence):
    """Delivers publications within this process, synchronously and in publish order.

    Args:
        history_max_memory: the budget in bytes of all channel histories of this
            process (0: unbounded); past it the least recently published channels
            lose their oldest publications first. None: 64 MiB. A `Hub` passes its
            setting ``history_max_memory`` (``WSHUB_HISTORY_MAX_MEMORY``).
        sweep_interval: seconds between sweeps of expired histories, while started.

    Attributes:
        history_evictions: publications dropped from histories to stay within a
            channel's ``history_max_bytes`` or ``history_max_memory`` (``/metrics``:
            ``wshub_history_evictions_total``).
    """

    def __init__(
        self, *, history_max_memory: int | None = None, sweep_interval: float = 1.0
    ) -> None:
        if sweep_interval <= 0:
            raise ValueError("sweep_interval must be > 0 seconds")
        self._events: BrokerEvents | None = None
        self._channels: set[str] = set()
        self._history = MemoryHistory(
            DEFAULT_HISTORY_MAX_MEMORY if history_max_memory is None else history_max_memory
        )
        self._presence = MemoryPresence()
        self._keys = RecentKeys()
        self._sweep_interval = sweep_interval
        self._sweeper: asyncio.Task[None] | None = None

    @property
    def history_evictions(self) -> int:
        """Publications evicted from histories by a byte cap or the memory budget."""
        return self._history.evictions

    @property
    def history_bytes(self) -> int:
        """Bytes accounted for every history this process keeps (see `MemoryHistory`)."""
        return self._history.total_bytes

    @property
    def history_channels(self) -> int:
        """Channels whose history this process keeps."""
        return self._history.channels

    @property
    def history_max_memory(self) -> int:
        """The history memory budget in bytes (0: unbounded)."""
        return self._history.max_memory

    async def start(self, events: BrokerEvents) -> None:
        self._events = events
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().create_task(
                self._sweep_loop(), name="wshub-history-sweep"
            )
        self.state = BrokerState.CONNECTED
        events.on_state(self.state)

    async def close(self) -> None:
        self._events = None
        self._channels.clear()
        sweeper, self._sweeper = self._sweeper, None
        if sweeper is not None:
            sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sweeper
        self.state = BrokerState.CLOSED

    async def _sweep_loop(self) -> None:
        """Drop expired histories every ``sweep_interval``, so idle ones free memory too."""
        while True:
            await asyncio.sleep(self._sweep_interval)
            self._history.sweep()

    async def subscribe(self, channels: Sequence[str]) -> None:
        self._channels.update(channels)

    async def unsubscribe(self, channels: Sequence[str]) -> None:
        self._channels.difference_update(channels)

    async def publish(
        self,
        channel: str,
        data: bytes,
        *,
        origin: str | None = None,
        history: HistoryOptions | None = None,
        event: str | None = None,
        idempotency: Idempotency | None = None,
    ) -> PublishResult:
        if idempotency is not None:
            seen = self._keys.get(channel, idempotency.key)
            if isinstance(seen, PublishResult):
                return seen  # a retry: published already, answer the first result
        if history is not None and event is None:
            publication, epoch = self._history.append(channel, data, origin, history)
            result = PublishResult(publication.offset, epoch)
        else:
            publication, result = Publication(data, None, origin, event), PublishResult()
        if idempotency is not None:
            self._keys.put(channel, idempotency.key, idempotency.window, result)
        events = self._events
        if events is not None and channel in self._channels:
            events.on_publication(channel, publication)
        # Delivery above only enqueued; the hub lets writers run before the next publish
        # when queues fill up (`Hub._yield_to_writers`).
        return result

    async def history(
        self,
        channel: str,
        *,
        since: int | None = None,
        limit: int | None = None,
        options: HistoryOptions | None = None,
    ) -> HistoryPage:
        return self._history.read(channel, since, limit, options)

    async def presence_add(self, channel: str, entries: list[ClientInfo], ttl: float) -> None:
        self._presence.add(channel, entries, ttl)

    async def presence_remove(self, channel: str, clients: list[str]) -> None:
        self._presence.remove(channel, clients)

    async def presence(self, channel: str) -> dict[str, ClientInfo]:
        return self._presence.read(channel)
