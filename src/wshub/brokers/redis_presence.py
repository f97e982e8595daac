"""Presence kept in Redis: per channel, a hash of entries and a sorted set of expiries.

Keys, for a channel ``c`` and the broker's prefix (docs/redis.md, "Presence"):

- ``<prefix>presence:c``, a hash: client id -> ``{"user":..,"info":..}`` (JSON);
- ``<prefix>presence-expiry:c``, a sorted set: client id -> expiry (unix ms, by
  Redis's clock).

Each process refreshes its own entries every ttl/3 (`wshub.presence.PresenceTracker`).
An entry whose process died stops being refreshed: the next read drops it once its
expiry passed, and both keys expire by themselves once no process refreshed any entry
for ``ttl``, so nothing is left behind in Redis either.
"""

from __future__ import annotations

from typing import Final

import orjson
from redis.asyncio import Redis

from wshub.brokers.presence import ClientInfo
from wshub.brokers.redis_scripts import PRESENCE_ADD, PRESENCE_READ, LuaScript, milliseconds

#: Between the prefix and the channel in the name of a channel's presence hash.
ENTRIES_INFIX: Final = "presence:"
#: Between the prefix and the channel in the name of a channel's expiry sorted set.
EXPIRIES_INFIX: Final = "presence-expiry:"

_add_script = LuaScript(PRESENCE_ADD)
_read_script = LuaScript(PRESENCE_READ)


class RedisPresence:
    """Adds, removes and reads presence entries in Redis; the broker supplies the connection.

    Args:
        prefix: the broker's key and channel prefix.
    """

    def __init__(self, prefix: str) -> None:
        self._prefix = prefix

    def keys(self, channel: str) -> list[str]:
        """The keys of ``channel``'s presence: its entries hash, then its expiry set."""
        return [self._prefix + ENTRIES_INFIX + channel, self._prefix + EXPIRIES_INFIX + channel]

    async def add(self, client: Redis, channel: str, entries: list[ClientInfo], ttl: float) -> None:
        """Add or refresh ``entries``, all in one script call (one round trip).

        Args:
            client: the connection pool.
            channel: the channel name without the prefix.
            entries: the entries; an entry already there is replaced.
            ttl: seconds until they expire unless added again.

        Raises:
            RedisError: Redis failed the script.
        """
        if not entries:
            return
        args: list[bytes | str | int] = [milliseconds(ttl)]
        for entry in entries:
            args += (entry.client, orjson.dumps(entry.to_json()))
        await _add_script(client, self.keys(channel), args)

    async def remove(self, client: Redis, channel: str, clients: list[str]) -> None:
        """Remove the entries of ``clients`` (missing ones are ignored), in one transaction.

        Args:
            client: the connection pool.
            channel: the channel name without the prefix.
            clients: the client ids whose entries go.

        Raises:
            RedisError: Redis failed the commands.
        """
        if not clients:
            return
        entries, expiries = self.keys(channel)
        async with client.pipeline(transaction=True) as pipe:
            pipe.hdel(entries, *clients)
            pipe.zrem(expiries, *clients)
            await pipe.execute()

    async def read(self, client: Redis, channel: str) -> dict[str, ClientInfo]:
        """Drop the expired entries of ``channel`` and return the others, by client id.

        Args:
            client: the connection pool.
            channel: the channel name without the prefix.

        Returns:
            The live entries wshub wrote, keyed by client id.

        Raises:
            RedisError: Redis failed the script.
        """
        flat = await _read_script(client, self.keys(channel), ())
        found: dict[str, ClientInfo] = {}
        for raw_client, raw_entry in zip(flat[::2], flat[1::2], strict=True):
            entry = _entry(raw_client.decode(), raw_entry)
            if entry is not None:
                found[entry.client] = entry
        return found


def _entry(client: str, raw: bytes) -> ClientInfo | None:
    """Decode one stored entry; None for one that wshub did not write (skipped)."""
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(value, dict) or not isinstance(value.get("user"), str | None):
        return None
    info = value.get("info")
    return ClientInfo(client, value.get("user"), info if isinstance(info, dict) else None)
