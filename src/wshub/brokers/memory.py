"""The in-memory broker: one process, no dependencies, the embedded default."""

from __future__ import annotations

from collections.abc import Sequence

from wshub.brokers.base import Broker, BrokerEvents, BrokerState, Publication, PublishResult


class MemoryBroker(Broker):
    """Delivers publications within this process, synchronously and in publish order."""

    def __init__(self) -> None:
        self._events: BrokerEvents | None = None
        self._channels: set[str] = set()

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
        self, channel: str, data: bytes, *, origin: str | None = None
    ) -> PublishResult:
        events = self._events
        if events is not None and channel in self._channels:
            events.on_publication(channel, Publication(data, None, origin))
        return PublishResult()
