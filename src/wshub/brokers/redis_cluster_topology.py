"""The slot map of the Redis Cluster broker: which master carries which channel.

`ClusterTopology` reads ``CLUSTER SLOTS`` (at start, every probe interval, and when a
session is lost or a command is redirected), keeps one `Shard` per master, routes
commands and subscriptions to the master owning a channel's slot, and maps their
failures to `BrokerUnavailable`/`PublishTimeout` (see `wshub.brokers.redis_cluster`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from redis.crc import key_slot
from redis.exceptions import AskError, MovedError, RedisError, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from wshub.brokers.base import BrokerEvents, BrokerState
from wshub.brokers.redis_cluster_session import (
    Address,
    ShardEvents,
    SlotMap,
    cluster_name,
    fetch_slot_map,
    owner_table,
)
from wshub.brokers.redis_cluster_shard import Shard
from wshub.brokers.redis_connections import ClusterTarget
from wshub.brokers.redis_pipeline import OutcomeUnknown
from wshub.brokers.redis_subscriptions import wait_batch
from wshub.core.errors import BrokerUnavailable, PublishTimeout

__all__ = ["ClusterTopology"]

logger = logging.getLogger("wshub.brokers.redis")

_T = TypeVar("_T")


class ClusterTopology:
    """The broker's shards and slot map, kept current by `supervise`.

    ``desired`` is the broker's own set of subscribed channels (shared, not copied);
    ``on_change`` recomputes the broker's state, ``on_down`` marks it DISCONNECTED.
    """

    def __init__(
        self,
        target: ClusterTarget,
        *,
        prefix: str,
        desired: set[str],
        on_change: Callable[[], None],
        on_down: Callable[[], None],
        probe_interval: float,
        probe_timeout: float,
        reconnect_base: float,
        reconnect_cap: float,
        timeout: float,
        max_connections: int,
    ) -> None:
        self.target = target
        self.where = target.location
        self.prefix = prefix
        self.probe_interval = probe_interval
        self.probe_timeout = probe_timeout
        self.max_connections = max_connections
        self.options: dict[str, Any] = {
            "timeout": timeout,
            "reconnect_base": reconnect_base,
            "reconnect_cap": reconnect_cap,
        }
        self._timeout = timeout
        self._reconnect_base = reconnect_base
        self._reconnect_cap = reconnect_cap
        self._desired = desired
        self._on_change = on_change
        self._on_down = on_down
        self.shards: dict[Address, Shard] = {}
        self.owners: list[Shard | None] = []
        self.slot_map: SlotMap = {}
        self.refresh_due = asyncio.Event()
        self.settled = asyncio.Event()
        self.map_failing = False
        self.retired = {"reconnects": 0, "probe_failures": 0, "invalid_payloads": 0}

    def owner(self, channel: str) -> Shard | None:
        """The shard owning ``channel``'s slot, if the map names one."""
        if not self.owners:
            return None
        return self.owners[key_slot(cluster_name(self.prefix, channel).encode())]

    async def close(self) -> None:
        """Close every shard's connections and forget them."""
        shards, self.shards = list(self.shards.values()), {}
        self.owners = []
        await asyncio.gather(*(s.close() for s in shards), return_exceptions=True)

    async def request(self, channels: Sequence[str], *, add: bool) -> None:
        """(Un)subscribe ``channels`` on their masters: one batch per master, side by side."""
        groups: dict[Address, list[str]] = {}
        for channel in channels:
            shard = self.owner(channel)
            if shard is not None:
                groups.setdefault(shard.address, []).append(channel)
        batches = []
        for address, group in groups.items():
            shard = self.shards[address]
            if add:
                shard.subs.desired.update(group)
            else:
                shard.subs.desired.difference_update(group)
            batches.append(wait_batch(shard.subs.request(group)))
        await asyncio.gather(*batches)

    async def catch_up(self, shard: Shard) -> None:
        """Wait until ``shard``'s subscriber connection saw an echo sent now."""
        try:
            await shard.probe.echo(shard.client, self._timeout)
        except TimeoutError as exc:
            raise RedisTimeoutError("the subscriber connection did not catch up") from exc

    async def command(
        self,
        action: str,
        channel: str,
        call: Callable[[Shard], Awaitable[_T]],
        state: BrokerState,
    ) -> _T:
        """Run ``call`` on the master owning ``channel``; every failure is BrokerUnavailable.

        ``state`` is the broker's, named in the error when no master owns the channel.
        """
        shard = self.owner(channel)
        if shard is None or shard.session.state is not BrokerState.CONNECTED:
            state = state if shard is None else shard.session.state
            where = self.where if shard is None else f"{shard.address[0]}:{shard.address[1]}"
            raise BrokerUnavailable(
                f"cannot {action}: Redis Cluster broker at {where} is {state.value}"
            )
        try:
            return await call(shard)
        except OutcomeUnknown as exc:
            shard.probe.request()
            self.request_refresh()
            raise PublishTimeout(
                f"could not {action} through Redis Cluster node "
                f"{shard.address[0]}:{shard.address[1]}: sent, but {exc}; "
                "it may have been published"
            ) from exc
        except RedisError as exc:
            if isinstance(exc, MovedError | AskError | TryAgainError):
                self.request_refresh()
            elif isinstance(exc, RedisConnectionError | RedisTimeoutError):
                shard.probe.request()
                self.request_refresh()
            raise BrokerUnavailable(
                f"could not {action} through Redis Cluster node "
                f"{shard.address[0]}:{shard.address[1]}: {exc}"
            ) from exc

    # -- the slot map -------------------------------------------------------------------

    def request_refresh(self) -> None:
        self.refresh_due.set()

    async def supervise(self, events: BrokerEvents) -> None:
        """Keep the slot map current: at start, every probe interval, and when asked."""
        attempt = 0
        while True:
            self.refresh_due.clear()
            try:
                await self._refresh(events)
                attempt = 0
                if self.map_failing:
                    logger.info("Redis Cluster broker: %s answers again", self.where)
                self.map_failing = False
                wait = self.probe_interval
            except Exception as exc:
                attempt += 1
                self._on_map_failure(exc)
                bound = min(self._reconnect_cap, self._reconnect_base * 2 ** min(attempt, 30))
                wait = bound
            if not self.settled.is_set():
                self.settled.set()
                self._on_change()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self.refresh_due.wait()
            # A burst of lost sessions asks many times: refresh once, a moment later.
            await asyncio.sleep(min(0.05, self._reconnect_base))

    def _on_map_failure(self, exc: Exception) -> None:
        if self.map_failing:
            logger.debug("Redis Cluster broker: reading the slot map failed: %s", exc)
        else:
            logger.warning(
                "Redis Cluster broker: no node of %s gave the slot map (%s); retrying",
                self.where,
                exc,
            )
        self.map_failing = True
        if not self.shards:
            self._on_down()

    async def _refresh(self, events: BrokerEvents) -> None:
        clients = [s.client for s in self.shards.values()]
        slot_map = await fetch_slot_map(self.target, clients, connect_timeout=self._timeout)
        if slot_map != self.slot_map:
            await self._reconcile(slot_map, events)

    async def _reconcile(self, slot_map: SlotMap, events: BrokerEvents) -> None:
        """Adopt a new slot map: new sessions for masters whose address or slots changed."""
        old = self.shards
        keep = {a: s for a, s in old.items() if slot_map.get(a) == s.spans}
        retired = [s for a, s in old.items() if a not in keep]
        if self.slot_map:
            logger.info(
                "Redis Cluster broker: the slot map of %s changed; %d shard(s) of %d start over",
                self.where,
                len(slot_map) - len(keep),
                len(slot_map),
            )
        new = {a: Shard(self, a, spans) for a, spans in slot_map.items() if a not in keep}
        self.shards = {**keep, **new}
        self.slot_map = slot_map
        table = owner_table(slot_map)
        self.owners = [None if a is None else self.shards[a] for a in table]
        for channel in self._desired:
            shard = self.owner(channel)
            if shard is not None and shard.address in new:
                shard.subs.desired.add(channel)
        for shard in retired:
            self.retired["reconnects"] += shard.session.reconnects
            self.retired["probe_failures"] += shard.probe.failures
            self.retired["invalid_payloads"] += shard.session.invalid_payloads
        await asyncio.gather(*(s.close() for s in retired), return_exceptions=True)
        await asyncio.gather(
            *(s.session.start(ShardEvents(events, self._on_change), s.client) for s in new.values())
        )
        self._on_change()
