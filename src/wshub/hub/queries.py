"""The hub's read-only queries: counts, connections, members, presence.

`HubQueries` is the part of the `Hub` facade that reads the `Registry` (and the
broker, for presence) without changing anything.
"""

from __future__ import annotations

from wshub.brokers import Broker
from wshub.brokers.presence import ClientInfo, Presence
from wshub.core.errors import ErrorCode, ProtocolError
from wshub.hub.connection import Connection
from wshub.hub.permissions import Permissions
from wshub.hub.registry import Registry

__all__ = ["HubQueries"]


class HubQueries:
    """Who is connected, and where, in this process; who is present, in every process."""

    def __init__(self, registry: Registry, permissions: Permissions, broker: Broker) -> None:
        self.registry = registry
        self.permissions = permissions
        self.broker = broker

    @property
    def connection_count(self) -> int:
        """Connections open in this process."""
        return len(self.registry.connections)

    @property
    def channel_count(self) -> int:
        """Channels with at least one local member."""
        return len(self.registry.channels)

    def connections(self) -> list[Connection]:
        """The connections open in this process."""
        return list(self.registry.connections.values())

    def channel_counts(self) -> dict[str, int]:
        """The channels with local members, each with its number of local members."""
        return {channel: len(members) for channel, members in self.registry.channels.items()}

    def subscribers(self, channel: str) -> list[Connection]:
        """The local members of ``channel``."""
        return list(self.registry.channels.get(channel, ()))

    def user_connections(self, user: str) -> list[Connection]:
        """The local connections of ``user``."""
        return list(self.registry.users.get(user, ()))

    async def presence(self, channel: str) -> dict[str, ClientInfo]:
        """Who is in ``channel``, in every process, keyed by client id.

        Raises:
            ProtocolError: ``bad_request`` when the channel tracks no presence.
            BrokerUnavailable: the broker cannot be read.
        """
        space = self.permissions.namespace(channel)
        if space is None or not space.presence or not isinstance(self.broker, Presence):
            raise ProtocolError(ErrorCode.BAD_REQUEST, f"{channel!r} tracks no presence")
        return await self.broker.presence(channel)
