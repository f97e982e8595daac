"""The Redis Cluster broker: sharded pub/sub, one subscriber connection per master.

``Hub(broker="redis+cluster://host:7000,host:7001")`` runs on a Redis Cluster (7.0 or
newer). Contract: the one of `wshub.brokers.redis` (wire format, order, at most once,
outages, history, presence), with these differences (docs/redis.md, "Redis Cluster"):

- Names carry a hash tag, so a channel's traffic and keys live in ONE slot: the
  channel ``c`` is the sharded channel ``<prefix>{c}``; its history keys are
  ``<prefix>history-meta:{c}`` and ``<prefix>history:{c}``, its presence keys
  ``<prefix>presence:{c}`` and ``<prefix>presence-expiry:{c}``. The history script
  runs on the slot's master and publishes with ``SPUBLISH``.
- Publications travel by ``SPUBLISH``/``SSUBSCRIBE``: only the master owning a
  channel's slot carries it (no cluster-bus broadcast). Each process holds one
  `ShardSession` per master (its subscriber connection, probe and reconnects) and one
  small connection pool per master, with its own `PublishPipeline`: commands go to
  the master owning their slot, batched per master, in submit order per master, so a
  channel's publishes keep their order.
- The slot map (``CLUSTER SLOTS``) is read at start, every ``probe_interval``, and at
  once when a session is lost or a command is redirected (MOVED/ASK). A master whose
  address or slots changed gets a new session; its channels are subscribed on their
  new owner. Redirected commands are not followed: they fail with
  `BrokerUnavailable` (the command did not run; the caller decides), like any command
  during a topology change.
- State: CONNECTED while every master's session is; a shard that is down makes the
  broker DISCONNECTED, and publishes to its channels fail at once; the other shards'
  channels keep working as long as the cluster serves them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from wshub.brokers.base import (
    Broker,
    BrokerEvents,
    BrokerState,
    HistoryOptions,
    Idempotency,
    PublishResult,
)
from wshub.brokers.history import History, HistoryPage
from wshub.brokers.presence import ClientInfo, Presence
from wshub.brokers.redis_cluster_session import cluster_name
from wshub.brokers.redis_cluster_shard import Shard
from wshub.brokers.redis_cluster_stores import ClusterHistory, ClusterPresence
from wshub.brokers.redis_cluster_topology import ClusterTopology
from wshub.brokers.redis_connections import check_cluster_url, parse_cluster_url
from wshub.brokers.redis_subscriptions import stop_tasks
from wshub.brokers.redis_wire import encode_payload

__all__ = ["ClusterHistory", "ClusterPresence", "RedisClusterBroker", "cluster_name"]

logger = logging.getLogger("wshub.brokers.redis")

_T = TypeVar("_T")


class RedisClusterBroker(Broker, History, Presence):
    """Carries publications through a Redis Cluster's sharded pub/sub; history and presence
    in the cluster, each channel's keys in its own slot.

    See the module docstring for the contract and docs/redis.md for the keys.
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "wshub:",
        probe_interval: float = 5.0,
        probe_timeout: float | None = None,
        reconnect_base: float = 0.1,
        reconnect_cap: float = 5.0,
        timeout: float = 2.0,
        max_connections: int = 32,
    ) -> None:
        """Configure the broker; nothing connects before `start`.

        Args:
            url: ``redis+cluster://[user:password@]host:port[,host:port...]``, some
                nodes of the cluster (any of them answers with the slot map).
            prefix: prepended to every channel and key name; no ``{`` or ``}`` (the
                hash tag that follows it must be the first one in each name).
            probe_interval: seconds between liveness probes of each subscriber, and
                between slot map checks.
            probe_timeout: seconds a probe may take to come back; defaults to ``timeout``.
            reconnect_base: first reconnect delay bound, doubled per failed attempt.
            reconnect_cap: the longest delay between reconnect attempts.
            timeout: seconds for connecting and for each command.
            max_connections: size of the publishing connection pool of each master.

        Raises:
            ValueError: the URL is not a ``redis+cluster://`` URL, or the prefix holds
                a brace.
        """
        check_cluster_url(url)
        if "{" in prefix or "}" in prefix:
            raise ValueError(f"a cluster broker's prefix cannot hold braces: {prefix!r}")
        self._target = parse_cluster_url(url)
        self._where = self._target.location
        self._prefix = prefix
        self._timeout = timeout
        self._desired: set[str] = set()
        self._events: BrokerEvents | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._state = BrokerState.CONNECTING
        self._topology = ClusterTopology(
            self._target,
            prefix=prefix,
            desired=self._desired,
            on_change=self._recompute_state,
            on_down=lambda: self._state_if_open(BrokerState.DISCONNECTED),
            probe_interval=probe_interval,
            probe_timeout=probe_timeout if probe_timeout is not None else timeout,
            reconnect_base=reconnect_base,
            reconnect_cap=reconnect_cap,
            timeout=timeout,
            max_connections=max_connections,
        )
        self._history_store = ClusterHistory(prefix)
        self._presence_store = ClusterPresence(prefix)

    # -- state and counters -----------------------------------------------------------

    @property
    def state(self) -> BrokerState:
        """CONNECTED while every master's subscriber is; see the module docstring."""
        return self._state

    @state.setter
    def state(self, state: BrokerState) -> None:
        self._state = state

    @property
    def reconnects(self) -> int:
        """How many times a shard's subscriber connection came back after an outage."""
        return self._topology.retired["reconnects"] + sum(
            s.session.reconnects for s in self._topology.shards.values()
        )

    @property
    def probe_failures(self) -> int:
        """Liveness probes (of any shard) that got no echo in time."""
        return self._topology.retired["probe_failures"] + sum(
            s.probe.failures for s in self._topology.shards.values()
        )

    @property
    def invalid_payloads(self) -> int:
        """Received payloads dropped for being neither JSON nor an envelope."""
        return self._topology.retired["invalid_payloads"] + sum(
            s.session.invalid_payloads for s in self._topology.shards.values()
        )

    @property
    def channels(self) -> frozenset[str]:
        """The channels the hub subscribed to (without prefix, without probe channels)."""
        return frozenset(self._desired)

    @property
    def history_evictions(self) -> int:
        """Publications this process's publishes evicted from histories by a byte cap."""
        return self._history_store.evictions

    @property
    def probe_channels(self) -> dict[str, str]:
        """Each master's (``host:port``) probe channel, as named in Redis."""
        return {f"{h}:{p}": s.probe.channel for (h, p), s in self._topology.shards.items()}

    def shard_of(self, channel: str) -> str | None:
        """The master (``host:port``) that carries ``channel`` now, if the map names one."""
        shard = self._owner(channel)
        return None if shard is None else f"{shard.address[0]}:{shard.address[1]}"

    def _recompute_state(self) -> None:
        if self._state is BrokerState.CLOSED:
            return
        shards = list(self._topology.shards.values())
        if shards and all(s.session.state is BrokerState.CONNECTED for s in shards):
            state = BrokerState.CONNECTED
        elif not self._topology.settled.is_set():
            state = BrokerState.CONNECTING
        else:
            state = BrokerState.DISCONNECTED
        if state is self._state:
            return
        self._state = state
        if self._events is not None:
            try:
                self._events.on_state(state)
            except Exception:
                logger.exception("BrokerEvents.on_state(%s) raised", state)

    # -- the Broker interface -----------------------------------------------------------

    async def start(self, events: BrokerEvents) -> None:
        """Read the slot map, connect to every master; return once each first attempt
        succeeded or failed (a cluster that is down leaves the broker DISCONNECTED).

        Raises:
            RuntimeError: the broker was started or closed before.
        """
        if self._supervisor is not None or self._state is BrokerState.CLOSED:
            raise RuntimeError("RedisClusterBroker.start() may be called once")
        self._events = events
        self._supervisor = asyncio.create_task(
            self._topology.supervise(events), name="wshub-redis-cluster"
        )
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(4 * self._timeout + 2):
                await self._topology.settled.wait()

    async def close(self) -> None:
        """Stop supervising, close every shard's connections. Idempotent."""
        if self._state is BrokerState.CLOSED:
            return
        self._state = BrokerState.CLOSED
        supervisor, self._supervisor = self._supervisor, None
        await stop_tasks(supervisor)
        await self._topology.close()
        self._events = None

    async def subscribe(self, channels: Sequence[str]) -> None:
        """Add ``channels`` to the desired set; while connected, wait until their masters
        confirm (one batch per master, sent side by side).
        """
        self._desired.update(channels)
        await self._topology.request(channels, add=True)

    async def unsubscribe(self, channels: Sequence[str]) -> None:
        """Remove ``channels`` from the desired set; wait until their masters confirm."""
        self._desired.difference_update(channels)
        for shard in self._topology.shards.values():
            shard.session.forget_warnings(channels)
        await self._topology.request(channels, add=False)

    async def publish(
        self,
        channel: str,
        data: bytes,
        *,
        origin: str | None = None,
        history: HistoryOptions | None = None,
        event: str | None = None,
        idempotency: Idempotency | None = None,
    ) -> PublishResult:
        """Publish on ``<prefix>{channel}`` with SPUBLISH, or through the history script,
        on the master owning the channel's slot (see `RedisBroker.publish`).

        Raises:
            PublishTimeout: written to Redis, but no reply in time: it may have been
                published.
            BrokerUnavailable: the channel's master is not connected (at once), the
                slot map is stale (MOVED/ASK: the command did not run), or Redis refused
                the command.
        """
        store = self._history_store
        command: tuple[Any, ...]
        if history is not None and event is None:
            command = store.publish_command(channel, data, origin, history, idempotency)
        else:
            payload = encode_payload(data, origin, event=event)
            if idempotency is not None:
                command = store.publish_once_command(channel, payload, idempotency)
            else:
                command = ("SPUBLISH", cluster_name(self._prefix, channel), payload)

        def submit(shard: Shard) -> Awaitable[Any]:
            return shard.pipeline.submit(*command)  # before any await: order kept

        reply = await self._command(f"publish to {channel!r}", channel, submit)
        if command[0] == "EVALSHA" and history is not None and event is None:
            return store.publish_result(reply)
        return PublishResult()

    # -- the History and Presence interfaces --------------------------------------------

    async def history(
        self,
        channel: str,
        *,
        since: int | None = None,
        limit: int | None = None,
        options: HistoryOptions | None = None,
    ) -> HistoryPage:
        """Read publications of ``channel`` kept in its slot (see `RedisBroker.history`);
        the catch-up echo goes through the channel's own shard.
        """
        action = f"read the history of {channel!r}"
        page = await self._command(
            action,
            channel,
            lambda shard: self._history_store.read(shard.client, channel, since, limit, options),
        )
        if channel in self._desired:
            await self._command(action, channel, self._catch_up)
        return page

    async def presence_add(self, channel: str, entries: list[ClientInfo], ttl: float) -> None:
        """Add or refresh entries of ``channel`` (see `RedisBroker.presence_add`)."""
        await self._command(
            f"add presence in {channel!r}",
            channel,
            lambda shard: self._presence_store.add(shard.client, channel, entries, ttl),
        )

    async def presence_remove(self, channel: str, clients: list[str]) -> None:
        """Remove entries of ``channel`` (see `RedisBroker.presence_remove`)."""
        await self._command(
            f"remove presence in {channel!r}",
            channel,
            lambda shard: self._presence_store.remove(shard.client, channel, clients),
        )

    async def presence(self, channel: str) -> dict[str, ClientInfo]:
        """The live entries of ``channel`` (see `RedisBroker.presence`)."""
        return await self._command(
            f"read the presence of {channel!r}",
            channel,
            lambda shard: self._presence_store.read(shard.client, channel),
        )

    async def _catch_up(self, shard: Shard) -> None:
        await self._topology.catch_up(shard)

    def _owner(self, channel: str) -> Shard | None:
        return self._topology.owner(channel)

    async def _command(
        self, action: str, channel: str, call: Callable[[Shard], Awaitable[_T]]
    ) -> _T:
        """Run ``call`` on the master owning ``channel`` (`ClusterTopology.command`)."""
        return await self._topology.command(action, channel, call, self._state)

    def _state_if_open(self, state: BrokerState) -> None:
        if self._state is BrokerState.CLOSED or self._state is state:
            return
        self._state = state
        if self._events is not None:
            with contextlib.suppress(Exception):
                self._events.on_state(state)
