"""One Redis Cluster shard as the cluster broker sees it: its subscriber session and slot map.

`RedisClusterBroker` (``redis_cluster``) holds one `ShardSession` per master of the
cluster. Each is a `SubscriberSession` (same reconnects, backoff, resubscribes, state
and reader) whose connection goes to its master and speaks sharded pub/sub:

- `ShardSubscriptions` names a wshub channel ``c`` ``<prefix>{c}`` (a hash tag, so the
  channel shares its slot with the channel's history and presence keys) and sends
  ``SSUBSCRIBE``/``SUNSUBSCRIBE``, one command per slot (Redis refuses sharded
  channels of several slots in one command), all of a batch in one write;
- `ShardProbe` publishes its tokens with ``SPUBLISH`` on a probe channel whose slot the
  shard owns, so each shard's subscriber is probed through its own node;
- the reader takes ``smessage``/``ssubscribe``/``sunsubscribe`` replies; a
  ``sunsubscribe`` nobody asked for (Redis sends one when a slot moves away) ends the
  session, and every lost session asks the broker to refresh the slot map.

`fetch_slot_map` reads ``CLUSTER SLOTS`` from the first node that answers.
"""

from __future__ import annotations

import asyncio
import math
import secrets
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Final

from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection
from redis.crc import key_slot
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from wshub.brokers.base import BrokerEvents, BrokerState
from wshub.brokers.redis_connections import ClusterTarget, node_client, node_subscriber
from wshub.brokers.redis_probe import PROBE_INFIX, LivenessProbe
from wshub.brokers.redis_session import SubscriberSession
from wshub.brokers.redis_subscriptions import CHUNK, Subscriptions

__all__ = [
    "SLOTS",
    "Address",
    "ShardMoved",
    "ShardProbe",
    "ShardSession",
    "ShardSubscriptions",
    "SlotMap",
    "cluster_name",
    "fetch_slot_map",
]

#: Hash slots of a Redis Cluster.
SLOTS: Final = 16384

#: A node's ``(host, port)``.
Address = tuple[str, int]
#: Each master's address -> its slot ranges ``(first, last)``, inclusive, sorted.
SlotMap = dict[Address, tuple[tuple[int, int], ...]]


def cluster_name(prefix: str, channel: str) -> str:
    """The Redis (sharded) channel of a wshub channel in cluster mode: ``<prefix>{<channel>}``."""
    return f"{prefix}{{{channel}}}"


class ShardMoved(RedisConnectionError):
    """The shard lost channels or slots: its session must start over on a fresh slot map."""


class ShardSubscriptions(Subscriptions):
    """`Subscriptions` in sharded pub/sub: hash-tagged names, one SSUBSCRIBE per slot."""

    def __init__(self, prefix: str, probe_channel: str) -> None:
        super().__init__(prefix, probe_channel)
        self._start = len(prefix.encode()) + 1  # the name after "<prefix>{"

    def redis_name(self, channel: str) -> str:
        """The sharded channel of ``channel``: ``<prefix>{<channel>}``."""
        return cluster_name(self._prefix, channel)

    def channel_of(self, name: bytes) -> str:
        """The wshub channel a received sharded channel name stands for."""
        return name[self._start : -1].decode()

    @property
    def pending(self) -> bool:
        """Whether Redis still owes replies to (un)subscribe commands sent."""
        return bool(self._acks)

    def _commands(self, subs: list[str], unsubs: list[str]) -> list[tuple[str, ...]]:
        return [*_by_slot("SSUBSCRIBE", subs), *_by_slot("SUNSUBSCRIBE", unsubs)]


def _by_slot(verb: str, names: list[str]) -> list[tuple[str, ...]]:
    groups: dict[int, list[str]] = defaultdict(list)
    for name in names:
        groups[key_slot(name.encode())].append(name)
    commands = []
    for group in groups.values():
        for start in range(0, len(group), CHUNK):
            commands.append((verb, *group[start : start + CHUNK]))
    return commands


class ShardProbe(LivenessProbe):
    """The liveness probe of one shard: ``SPUBLISH`` on a channel in one of its slots."""

    def __init__(
        self,
        prefix: str,
        owns: Callable[[int], bool],
        *,
        interval: float,
        timeout: float,
    ) -> None:
        super().__init__(prefix, interval=interval, timeout=timeout)
        ident = secrets.token_hex(8)
        for n in range(SLOTS * 8):
            channel = cluster_name(prefix, f"{PROBE_INFIX}{ident}.{n}")
            if owns(key_slot(channel.encode())):
                break
        else:  # pragma: no cover - a shard always owns some slot
            raise ValueError("the shard owns no slot")
        self.channel = channel
        self.name = channel.encode()

    async def _publish(self, client: Redis, token: bytes) -> None:
        await client.spublish(self.channel, token)


class ShardSession(SubscriberSession):
    """A `SubscriberSession` on one cluster master, in sharded pub/sub.

    Args:
        target: the cluster URL's nodes and credentials.
        address: the master's ``(host, port)``.
        on_lost: called whenever the session fails: the broker refreshes its slot map.
        **options: `SubscriberSession`'s.
    """

    def __init__(
        self,
        target: ClusterTarget,
        address: Address,
        *,
        on_lost: Callable[[], None],
        subscriptions: ShardSubscriptions,
        **options: Any,
    ) -> None:
        super().__init__("", subscriptions=subscriptions, **options)
        self._target = target
        self._address = address
        self._on_lost_hook = on_lost
        self._shard_subs = subscriptions

    def _new_subscriber(self) -> AbstractConnection:
        host, port = self._address
        return node_subscriber(self._target, host, port, timeout=self._timeout)

    def _on_lost(self, exc: Exception) -> None:
        super()._on_lost(exc)
        self._on_lost_hook()

    async def _read(self, conn: AbstractConnection) -> None:
        """Consume the sharded subscriber connection in order until it fails; always raises."""
        read = conn.read_response
        subs = self._shard_subs
        probe_name = self._probe.name
        count = 0
        while True:
            reply = await read(timeout=math.inf, disconnect_on_error=False)
            kind = reply[0]
            if kind == b"smessage":
                name = reply[1]
                if name == probe_name:
                    self._probe.on_echo(reply[2])
                else:
                    self._deliver(subs.channel_of(name), reply[2])
                count += 1
                if count % 100 == 0:
                    await asyncio.sleep(0)  # a buffered burst never suspends: let writers send
            elif kind == b"ssubscribe":
                subs.on_ack()
            elif kind == b"sunsubscribe":
                if not subs.pending:
                    # Not ours: Redis unsubscribed us because the slot moved away.
                    raise ShardMoved(f"Redis dropped the sharded channel {reply[1]!r}")
                subs.on_ack()


class ShardEvents:
    """The events a shard's session reports to: publications go straight to the hub's."""

    def __init__(self, events: BrokerEvents, on_state: Callable[[], None]) -> None:
        self.on_publication = events.on_publication
        self._on_state = on_state

    def on_state(self, state: BrokerState) -> None:
        """A shard's state changed: the broker recomputes its own."""
        self._on_state()


async def fetch_slot_map(
    target: ClusterTarget, clients: Iterable[Redis], *, connect_timeout: float
) -> SlotMap:
    """Read ``CLUSTER SLOTS`` from the first node that answers: the shards' own clients
    first (pooled), then the URL's startup nodes (a connection each, closed after).

    Raises:
        RedisError: no node answered; the last node's error.
    """
    error: Exception = RedisConnectionError(f"no node of {target.location} answered")
    for client in clients:
        try:
            reply = await client.execute_command("CLUSTER", "SLOTS")  # type: ignore[no-untyped-call]
            return _parse_slots(reply, None)
        except (RedisError, OSError) as exc:
            error = exc
    for host, port in target.nodes:
        client = node_client(target, host, port, timeout=connect_timeout, max_connections=1)
        try:
            reply = await client.execute_command("CLUSTER", "SLOTS")  # type: ignore[no-untyped-call]
            return _parse_slots(reply, host)
        except (RedisError, OSError) as exc:
            error = exc
        finally:
            await client.aclose()
    if isinstance(error, RedisError):
        raise error
    raise RedisConnectionError(str(error)) from error


def _parse_slots(reply: Sequence[Any], asked: str | None) -> SlotMap:
    ranges: dict[Address, list[tuple[int, int]]] = defaultdict(list)
    for entry in reply:
        first, last, master = int(entry[0]), int(entry[1]), entry[2]
        host = master[0].decode() if isinstance(master[0], bytes) else str(master[0])
        if host in ("", "?") and asked is not None:
            host = asked  # the node does not know its own address: the one we asked
        ranges[(host, int(master[1]))].append((first, last))
    return {address: tuple(sorted(spans)) for address, spans in ranges.items()}


def owner_table(slot_map: SlotMap) -> list[Address | None]:
    """Each slot's master, or None for a slot no master serves."""
    table: list[Address | None] = [None] * SLOTS
    for address, spans in slot_map.items():
        for first, last in spans:
            for slot in range(first, last + 1):
                table[slot] = address
    return table
