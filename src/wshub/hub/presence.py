"""The hub's side of presence: its connections' entries, join/leave events, refreshes.

Which channels track presence, and which announce joins and leaves, is the
namespace's choice (`wshub.hub.permissions.Namespace`); the entries themselves live
in the broker (`wshub.brokers.presence.Presence`), so every process sees them.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable

import orjson

from wshub.brokers.presence import ClientInfo, Presence
from wshub.core.errors import WshubError

logger = logging.getLogger("wshub.presence")


class PresenceTracker:
    """A hub's side of presence: its connections' entries, join/leave events, refreshes.

    Args:
        broker: the hub's broker; presence needs it to implement `Presence`.
        ttl: seconds an entry lives unless refreshed (`refresh` runs every ttl/3).

    Broker failures are logged, not raised: a missed entry is added again by the
    next refresh once the broker is back, and a missed removal expires by itself.
    """

    def __init__(self, broker: object, ttl: float) -> None:
        self._broker = broker if isinstance(broker, Presence) else None
        self._publish = getattr(broker, "publish", None)
        self.ttl = ttl
        self._local: dict[str, dict[str, ClientInfo]] = {}

    @property
    def enabled(self) -> bool:
        """Whether the broker keeps presence."""
        return self._broker is not None

    async def join(self, channel: str, entry: ClientInfo, presence: bool, events: bool) -> None:
        """Record ``entry`` in ``channel`` and/or tell its subscribers."""
        if presence and self._broker is not None:
            self._local.setdefault(channel, {})[entry.client] = entry
            await self._quietly(self._broker.presence_add(channel, [entry], self.ttl))
        if events:
            await self._event(channel, "join", entry)

    async def leave(self, channel: str, entry: ClientInfo, presence: bool, events: bool) -> None:
        """Remove ``entry`` from ``channel`` and/or tell its subscribers."""
        if presence and self._broker is not None:
            local = self._local.get(channel)
            if local is not None:
                local.pop(entry.client, None)
                if not local:
                    del self._local[channel]
            await self._quietly(self._broker.presence_remove(channel, [entry.client]))
        if events:
            await self._event(channel, "leave", entry)

    async def refresh(self) -> None:
        """Re-add every local entry, pushing their expiry back."""
        if self._broker is None:
            return
        for channel, entries in list(self._local.items()):
            await self._quietly(
                self._broker.presence_add(channel, list(entries.values()), self.ttl)
            )

    async def _event(self, channel: str, event: str, entry: ClientInfo) -> None:
        if self._publish is None:
            return
        data = orjson.dumps({"client": entry.client, "user": entry.user})
        await self._quietly(self._publish(channel, data, event=event))

    @staticmethod
    async def _quietly(call: Awaitable[object]) -> None:
        try:
            await call
        except WshubError as exc:  # BrokerUnavailable: refreshes and expiry make up for it
            logger.debug("presence update skipped: %s", exc)
