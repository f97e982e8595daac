"""The in-memory broker: one process, no dependencies, the embedded default.

It keeps history in ring buffers and presence in a table of this process, so
both work for a single worker; several workers need a shared broker (Redis).
"""

from __future__ import annotations

from collections.abc import Sequence

from wshub.brokers.base import (
    Broker,
    BrokerEvents,
    BrokerState,
    HistoryOptions,
    Publication,
    PublishResult,
)
from wshub.brokers.history import History, HistoryPage, MemoryHistory
from wshub.brokers.presence import ClientInfo, MemoryPresence, Presence


class MemoryBroker(Broker, History, Presence):
    """Delivers publications within this process, synchronously and in publish order."""

    def __init__(self) -> None:
        self._events: BrokerEvents | None = None
        self._channels: set[str] = set()
        self._history = MemoryHistory()
        self._presence = MemoryPresence()

    async def start(self, events: BrokerEvents) -> None:
        self._events = events
        self.state = BrokerState.CONNECTED
        events.on_state(self.state)

    async def close(self) -> None:
        self._events = None
        self._channels.clear()
        self.state = BrokerState.CLOSED

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
    ) -> PublishResult:
        if history is not None and event is None:
            publication = self._history.append(channel, data, origin, history)
            result = PublishResult(publication.offset, self._history.position(channel).epoch)
        else:
            publication, result = Publication(data, None, origin, event), PublishResult()
        events = self._events
        if events is not None and channel in self._channels:
            events.on_publication(channel, publication)
        # Delivery above only enqueued; the hub lets writers run before the next publish
        # when queues fill up (`Hub._yield_to_writers`).
        return result

    async def history(
        self, channel: str, *, since: int | None = None, limit: int | None = None
    ) -> HistoryPage:
        return self._history.read(channel, since, limit)

    async def presence_add(self, channel: str, entries: list[ClientInfo], ttl: float) -> None:
        self._presence.add(channel, entries, ttl)

    async def presence_remove(self, channel: str, clients: list[str]) -> None:
        self._presence.remove(channel, clients)

    async def presence(self, channel: str) -> dict[str, ClientInfo]:
        return self._presence.read(channel)
