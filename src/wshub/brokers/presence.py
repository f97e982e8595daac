"""Presence: who is in a channel, across every process.

Each process adds an entry for each of its connections in a channel that tracks
presence and removes it when the connection leaves. Entries carry an expiry
(``presence_ttl``) that the owning process refreshes; a process that dies without
cleaning up (SIGKILL, power loss) has its entries expire, so they vanish within
``presence_ttl`` seconds everywhere.

This module holds the interface brokers implement (`Presence`), the entry type,
and `MemoryPresence`, the table the memory broker keeps.
"""

from __future__ import annotations

import abc
import dataclasses
import logging
import time
from typing import Any

logger = logging.getLogger("wshub.presence")


@dataclasses.dataclass(frozen=True, slots=True)
class ClientInfo:
    """One connection present in a channel.

    Attributes:
        client: the connection's id.
        user: its user, or None when anonymous.
        info: public information about the user, or None.
    """

    client: str
    user: str | None
    info: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        """The entry as the ``presence`` reply shows it (keyed by client elsewhere)."""
        return {"user": self.user, "info": self.info}


class Presence(abc.ABC):
    """Keeps presence entries; implemented by brokers that track presence."""

    @abc.abstractmethod
    async def presence_add(self, channel: str, entries: list[ClientInfo], ttl: float) -> None:
        """Add or refresh entries of ``channel`` that expire after ``ttl`` seconds.

        Raises:
            BrokerUnavailable: the entries could not be written.
        """

    @abc.abstractmethod
    async def presence_remove(self, channel: str, clients: list[str]) -> None:
        """Remove entries of ``channel`` (missing ones are ignored)."""

    @abc.abstractmethod
    async def presence(self, channel: str) -> dict[str, ClientInfo]:
        """Return the live entries of ``channel``, keyed by client id.

        Raises:
            BrokerUnavailable: the entries could not be read.
        """


class MemoryPresence:
    """The presence table of one process."""

    def __init__(self) -> None:
        self._channels: dict[str, dict[str, tuple[float, ClientInfo]]] = {}

    def add(self, channel: str, entries: list[ClientInfo], ttl: float) -> None:
        """Add or refresh entries."""
        expires = time.monotonic() + ttl
        table = self._channels.setdefault(channel, {})
        for entry in entries:
            table[entry.client] = (expires, entry)

    def remove(self, channel: str, clients: list[str]) -> None:
        """Remove entries."""
        table = self._channels.get(channel)
        if table is None:
            return
        for client in clients:
            table.pop(client, None)
        if not table:
            del self._channels[channel]

    def read(self, channel: str) -> dict[str, ClientInfo]:
        """Return live entries, dropping expired ones."""
        table = self._channels.get(channel)
        if not table:
            return {}
        now = time.monotonic()
        for client in [c for c, (expires, _) in table.items() if expires <= now]:
            del table[client]
        return {client: entry for client, (_, entry) in table.items()}
