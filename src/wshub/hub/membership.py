"""Membership: subscribing connections to channels, and the broker to what they need.

A channel's first local member subscribes the broker, its last one leaving
unsubscribes it, and every change is announced to presence when the channel's
namespace asks for it. `Registry` holds the maps; this module keeps the broker's
subscriptions in line with them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from wshub.brokers.base import Broker
from wshub.brokers.presence import ClientInfo
from wshub.core.channels import BROADCAST_CHANNEL, MAX_CHANNEL_LENGTH, is_valid_channel
from wshub.core.errors import ErrorCode, ProtocolError
from wshub.hub.connection import Connection, ConnectionState
from wshub.hub.permissions import Permissions
from wshub.hub.presence import PresenceTracker
from wshub.hub.registry import Registry


class Membership:
    """Channel membership of one hub's connections, mirrored on the broker.

    Args:
        broker: the hub's broker.
        registry: the hub's maps.
        permissions: the namespaces, for their presence options.
        presence: the hub's presence tracker.
        max_subscriptions: channels one connection may be a member of.

    Attributes:
        subscribed: the channels the broker is subscribed to for this process.
    """

    def __init__(
        self,
        broker: Broker,
        registry: Registry,
        permissions: Permissions,
        presence: PresenceTracker,
        max_subscriptions: int,
    ) -> None:
        self.broker = broker
        self.registry = registry
        self.permissions = permissions
        self.presence = presence
        self.max_subscriptions = max_subscriptions
        self.subscribed: set[str] = set()
        #: Called with a channel the broker leaves (its last local member left).
        self.on_unsubscribed: Callable[[str], None] | None = None
        self._locks: dict[str, tuple[asyncio.Lock, list[int]]] = {}

    async def start(self) -> None:
        """Subscribe the broker to the broadcast channel, which every process wants."""
        self.subscribed.add(BROADCAST_CHANNEL)
        await self.broker.subscribe([BROADCAST_CHANNEL])

    async def subscribe(self, conn: Connection, channel: str) -> bool:
        """Make ``conn`` a member of ``channel``; see `Hub.subscribe`."""
        if not is_valid_channel(channel):
            raise ProtocolError(
                ErrorCode.BAD_REQUEST, f"invalid channel name (1 to {MAX_CHANNEL_LENGTH} chars)"
            )
        if conn.state is not ConnectionState.OPEN or channel in conn.channels:
            return False
        limit = self.max_subscriptions
        if len(conn.channels) >= limit:
            raise ProtocolError(ErrorCode.BAD_REQUEST, f"subscription limit reached ({limit})")
        self.registry.join(conn, channel)
        if channel not in self.subscribed:
            await self.sync(channel)
        await self.presence_change(conn, channel, joined=True)
        return True

    async def unsubscribe(self, conn: Connection, channel: str) -> bool:
        """Remove ``conn`` from ``channel``; see `Hub.unsubscribe`."""
        if channel not in conn.channels:
            return False
        if self.registry.leave(conn, channel):
            await self.sync(channel)
        await self.presence_change(conn, channel, joined=False)
        return True

    async def forget(self, conn: Connection) -> None:
        """Remove a connection that ended from every channel, telling presence and the broker."""
        channels, emptied = self.registry.forget(conn)
        for channel in channels:
            await self.presence_change(conn, channel, joined=False)
        for channel in emptied:
            await self.sync(channel)

    async def presence_change(self, conn: Connection, channel: str, joined: bool) -> None:
        """Record a join or leave in presence, as ``channel``'s namespace asks."""
        space = self.permissions.namespace(channel)
        if space is None or not (space.presence or space.join_leave):
            return
        entry = ClientInfo(conn.id, conn.user, conn.info)
        change = self.presence.join if joined else self.presence.leave
        await change(channel, entry, space.presence, space.join_leave)

    async def sync(self, channel: str) -> None:
        """Bring the broker's subscription to ``channel`` in line with local membership.

        Calls for one channel are serialised by a lock that lives only while in use,
        so a quick leave-and-rejoin can never leave the broker unsubscribed.
        """
        entry = self._locks.get(channel)
        if entry is None:
            entry = self._locks[channel] = (asyncio.Lock(), [0])
        entry[1][0] += 1
        try:
            async with entry[0]:
                wanted, have = self.registry.wanted(channel), channel in self.subscribed
                if wanted and not have:
                    await self.broker.subscribe([channel])
                    self.subscribed.add(channel)
                elif have and not wanted:
                    self.subscribed.discard(channel)
                    if self.on_unsubscribed is not None:
                        self.on_unsubscribed(channel)
                    await self.broker.unsubscribe([channel])
        finally:
            entry[1][0] -= 1
            if not entry[1][0]:
                del self._locks[channel]
