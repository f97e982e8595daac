"""Registry: who is connected and subscribed where, in this process.

Three maps, kept consistent by the hub: connection id -> connection, channel ->
members, user -> connections. Pure bookkeeping: nothing here awaits, so a change
and the fan-out that reads it never interleave. Members are dicts used as ordered
sets, so fan-out visits them in subscription order.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from wshub.core.channels import BROADCAST_CHANNEL, USER_CHANNEL_PREFIX

if TYPE_CHECKING:
    from wshub.hub.connection import Connection

Members = dict["Connection", None]


class Registry:
    """The connection, channel and user maps of one hub.

    Attributes:
        connections: the open connections by id.
        channels: each channel with local members, mapped to them.
        users: each user with local connections, mapped to them.
    """

    __slots__ = ("channels", "connections", "users")

    def __init__(self) -> None:
        self.connections: dict[str, Connection] = {}
        self.channels: dict[str, Members] = {}
        self.users: dict[str, Members] = {}

    def join(self, conn: Connection, channel: str) -> None:
        """Make ``conn`` a member of ``channel`` (the caller checked it was not)."""
        conn.channels.add(channel)
        self.channels.setdefault(channel, {})[conn] = None

    def leave(self, conn: Connection, channel: str) -> bool:
        """Remove ``conn`` from ``channel``; return True when that emptied the channel."""
        conn.channels.discard(channel)
        return _remove(self.channels, channel, conn)

    def add_user(self, conn: Connection, user: str) -> bool:
        """Register ``conn`` as one of ``user``'s; return True when it is the first."""
        members = self.users.setdefault(user, {})
        members[conn] = None
        return len(members) == 1

    def user_count(self, user: str) -> int:
        """How many local connections ``user`` has."""
        return len(self.users.get(user, ()))

    def forget(self, conn: Connection) -> tuple[list[str], list[str]]:
        """Remove ``conn`` from every channel and from its user.

        Returns:
            The channels it was a member of, and those of them (plus its user's
            ``#user:`` channel) that it was the last local member of.
        """
        channels = list(conn.channels)
        emptied = [ch for ch in channels if _remove(self.channels, ch, conn)]
        conn.channels.clear()
        if conn.user is not None and _remove(self.users, conn.user, conn):
            emptied.append(USER_CHANNEL_PREFIX + conn.user)
        return channels, emptied

    def members(self, channel: str) -> Iterable[Connection] | None:
        """The local recipients of a publication to ``channel`` (``#all``, ``#user:`` too)."""
        if channel[0] != "#":
            return self.channels.get(channel)
        if channel == BROADCAST_CHANNEL:
            return self.connections.values()
        return self.users.get(channel[len(USER_CHANNEL_PREFIX) :])

    def wanted(self, channel: str) -> bool:
        """Whether this process needs the broker's publications to ``channel``."""
        if channel == BROADCAST_CHANNEL:
            return True
        if channel.startswith(USER_CHANNEL_PREFIX):
            return channel[len(USER_CHANNEL_PREFIX) :] in self.users
        return channel in self.channels


def _remove(registry: dict[str, Members], key: str, conn: Connection) -> bool:
    members = registry.get(key)
    if members is None:
        return False
    members.pop(conn, None)
    if members:
        return False
    del registry[key]
    return True
