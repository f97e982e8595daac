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
from typing import Any, Final, TypeVar

from redis.crc import key_slot
from redis.exceptions import AskError, MovedError, RedisError, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

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
from wshub.brokers.redis_cluster_session import (
    Address,
    ShardEvents,
    ShardProbe,
    ShardSession,
    ShardSubscriptions,
    SlotMap,
    cluster_name,
    fetch_slot_map,
    owner_table,
)
from wshub.brokers.redis_connections import (
    check_cluster_url,
    node_client,
    parse_cluster_url,
)
from wshub.brokers.redis_history import (
    META_INFIX,
    STREAM_INFIX,
    RedisHistory,
    publish_once_command,
)
from wshub.brokers.redis_pipeline import OutcomeUnknown, PublishPipeline
from wshub.brokers.redis_presence import ENTRIES_INFIX, EXPIRIES_INFIX, RedisPresence
from wshub.brokers.redis_scripts import PUBLISH_ONCE, PUBLISH_WITH_HISTORY, LuaScript
from wshub.brokers.redis_subscriptions import stop_tasks, wait_batch
from wshub.brokers.redis_wire import encode_payload
from wshub.core.errors import BrokerUnavailable, PublishTimeout

__all__ = ["ClusterHistory", "ClusterPresence", "RedisClusterBroker", "cluster_name"]

logger = logging.getLogger("wshub.brokers.redis")

_T = TypeVar("_T")

_PUBLISH_CALL: Final = "redis.call('PUBLISH', "


def _sharded(name: str, source: str) -> LuaScript:
    """A publish script of `redis_scripts`, publishing with SPUBLISH (the slot's channel).

    Derived from the plain engine's script, so that both always do the same thing.
    """
    if source.count(_PUBLISH_CALL) != 1:
        raise RuntimeError(
            f"redis_scripts.{name} must PUBLISH exactly once (as {_PUBLISH_CALL}...) "
            "for the cluster engine to make it SPUBLISH"
        )
    return LuaScript(source.replace(_PUBLISH_CALL, "redis.call('SPUBLISH', "))


_cluster_publish_script = _sharded("PUBLISH_WITH_HISTORY", PUBLISH_WITH_HISTORY)
_cluster_once_script = _sharded("PUBLISH_ONCE", PUBLISH_ONCE)
_plain_once_sha = LuaScript(PUBLISH_ONCE).sha


class ClusterHistory(RedisHistory):
    """`RedisHistory` with hash-tagged keys and the sharded channel: one slot per channel."""

    publish_script = _cluster_publish_script
    SCRIPTS = {
        _cluster_publish_script.sha: _cluster_publish_script.source,
        _cluster_once_script.sha: _cluster_once_script.source,
    }

    def keys(self, channel: str) -> list[str]:
        """``<prefix>history-meta:{c}``, ``<prefix>history:{c}``."""
        tag = f"{{{channel}}}"
        return [self._prefix + META_INFIX + tag, self._prefix + STREAM_INFIX + tag]

    def pubsub_channel(self, channel: str) -> str:
        """``<prefix>{c}``: SPUBLISH in a script must stay in the keys' slot."""
        return cluster_name(self._prefix, channel)

    def publish_once_command(
        self, channel: str, payload: bytes, idempotency: Idempotency
    ) -> tuple[bytes | str | int, ...]:
        """`publish_once_command`, SPUBLISHing on the sharded channel."""
        plain = list(publish_once_command(self._prefix, channel, payload, idempotency))
        plain_name = self._prefix + channel
        if plain[1] != _plain_once_sha or plain.count(plain_name) != 1:
            raise RuntimeError("publish_once_command changed shape: update ClusterHistory")
        plain[1] = _cluster_once_script.sha
        plain[plain.index(plain_name)] = self.pubsub_channel(channel)
        return tuple(plain)


class ClusterPresence(RedisPresence):
    """`RedisPresence` with hash-tagged keys: ``<prefix>presence:{c}``, ``...-expiry:{c}``."""

    def keys(self, channel: str) -> list[str]:
        """The entries hash and the expiry set of ``channel``, in its slot."""
        tag = f"{{{channel}}}"
        return [self._prefix + ENTRIES_INFIX + tag, self._prefix + EXPIRIES_INFIX + tag]


class _Shard:
    """One master: its pool, its publish pipeline, its subscriber session and probe."""

    def __init__(
        self,
        broker: RedisClusterBroker,
        address: Address,
        spans: tuple[tuple[int, int], ...],
    ) -> None:
        self.address = address
        self.spans = spans
        host, port = address
        options = broker._options
        self.client = node_client(
            broker._target,
            host,
            port,
            timeout=options["timeout"],
            max_connections=broker._max_connections,
        )
        self.pipeline = PublishPipeline(self.client, ClusterHistory.SCRIPTS)

        def owns(slot: int) -> bool:
            return any(first <= slot <= last for first, last in spans)

        self.probe = ShardProbe(
            broker._prefix,
            owns,
            interval=broker._probe_interval,
            timeout=broker._probe_timeout,
        )
        self.subs = ShardSubscriptions(broker._prefix, self.probe.channel)
        self.session = ShardSession(
            broker._target,
            address,
            on_lost=broker._request_refresh,
            where=f"cluster node {host}:{port}",
            prefix=broker._prefix,
            subscriptions=self.subs,
            probe=self.probe,
            **options,
        )

    async def close(self) -> None:
        await self.session.close()
        await self.pipeline.close()
        await self.client.aclose()


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
        self._probe_interval = probe_interval
        self._probe_timeout = probe_timeout if probe_timeout is not None else timeout
        self._max_connections = max_connections
        self._reconnect_base = reconnect_base
        self._reconnect_cap = reconnect_cap
        self._options: dict[str, Any] = {
            "timeout": timeout,
            "reconnect_base": reconnect_base,
            "reconnect_cap": reconnect_cap,
        }
        self._desired: set[str] = set()
        self._shards: dict[Address, _Shard] = {}
        self._owners: list[_Shard | None] = []
        self._slot_map: SlotMap = {}
        self._events: BrokerEvents | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._refresh_due = asyncio.Event()
        self._settled = asyncio.Event()
        self._map_failing = False
        self._retired = {"reconnects": 0, "probe_failures": 0, "invalid_payloads": 0}
        self._state = BrokerState.CONNECTING
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
        return self._retired["reconnects"] + sum(
            s.session.reconnects for s in self._shards.values()
        )

    @property
    def probe_failures(self) -> int:
        """Liveness probes (of any shard) that got no echo in time."""
        return self._retired["probe_failures"] + sum(
            s.probe.failures for s in self._shards.values()
        )

    @property
    def invalid_payloads(self) -> int:
        """Received payloads dropped for being neither JSON nor an envelope."""
        return self._retired["invalid_payloads"] + sum(
            s.session.invalid_payloads for s in self._shards.values()
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
        return {f"{h}:{p}": s.probe.channel for (h, p), s in self._shards.items()}

    def shard_of(self, channel: str) -> str | None:
        """The master (``host:port``) that carries ``channel`` now, if the map names one."""
        shard = self._owner(channel)
        return None if shard is None else f"{shard.address[0]}:{shard.address[1]}"

    def _recompute_state(self) -> None:
        if self._state is BrokerState.CLOSED:
            return
        shards = list(self._shards.values())
        if shards and all(s.session.state is BrokerState.CONNECTED for s in shards):
            state = BrokerState.CONNECTED
        elif not self._settled.is_set():
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
        self._supervisor = asyncio.create_task(self._supervise(), name="wshub-redis-cluster")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(4 * self._timeout + 2):
                await self._settled.wait()

    async def close(self) -> None:
        """Stop supervising, close every shard's connections. Idempotent."""
        if self._state is BrokerState.CLOSED:
            return
        self._state = BrokerState.CLOSED
        supervisor, self._supervisor = self._supervisor, None
        await stop_tasks(supervisor)
        shards, self._shards = list(self._shards.values()), {}
        self._owners = []
        await asyncio.gather(*(s.close() for s in shards), return_exceptions=True)
        self._events = None

    async def subscribe(self, channels: Sequence[str]) -> None:
        """Add ``channels`` to the desired set; while connected, wait until their masters
        confirm (one batch per master, sent side by side).
        """
        self._desired.update(channels)
        await self._request(channels, add=True)

    async def unsubscribe(self, channels: Sequence[str]) -> None:
        """Remove ``channels`` from the desired set; wait until their masters confirm."""
        self._desired.difference_update(channels)
        for shard in self._shards.values():
            shard.session.forget_warnings(channels)
        await self._request(channels, add=False)

    async def _request(self, channels: Sequence[str], *, add: bool) -> None:
        groups: dict[Address, list[str]] = {}
        for channel in channels:
            shard = self._owner(channel)
            if shard is not None:
                groups.setdefault(shard.address, []).append(channel)
        batches = []
        for address, group in groups.items():
            shard = self._shards[address]
            if add:
                shard.subs.desired.update(group)
            else:
                shard.subs.desired.difference_update(group)
            batches.append(wait_batch(shard.subs.request(group)))
        await asyncio.gather(*batches)

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

        def submit(shard: _Shard) -> Awaitable[Any]:
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

    async def _catch_up(self, shard: _Shard) -> None:
        try:
            await shard.probe.echo(shard.client, self._timeout)
        except TimeoutError as exc:
            raise RedisTimeoutError("the subscriber connection did not catch up") from exc

    def _owner(self, channel: str) -> _Shard | None:
        if not self._owners:
            return None
        return self._owners[key_slot(cluster_name(self._prefix, channel).encode())]

    async def _command(
        self, action: str, channel: str, call: Callable[[_Shard], Awaitable[_T]]
    ) -> _T:
        """Run ``call`` on the master owning ``channel``; every failure is BrokerUnavailable."""
        shard = self._owner(channel)
        if shard is None or shard.session.state is not BrokerState.CONNECTED:
            state = self._state if shard is None else shard.session.state
            where = self._where if shard is None else f"{shard.address[0]}:{shard.address[1]}"
            raise BrokerUnavailable(
                f"cannot {action}: Redis Cluster broker at {where} is {state.value}"
            )
        try:
            return await call(shard)
        except OutcomeUnknown as exc:
            shard.probe.request()
            self._request_refresh()
            raise PublishTimeout(
                f"could not {action} through Redis Cluster node "
                f"{shard.address[0]}:{shard.address[1]}: sent, but {exc}; "
                "it may have been published"
            ) from exc
        except RedisError as exc:
            if isinstance(exc, MovedError | AskError | TryAgainError):
                self._request_refresh()
            elif isinstance(exc, RedisConnectionError | RedisTimeoutError):
                shard.probe.request()
                self._request_refresh()
            raise BrokerUnavailable(
                f"could not {action} through Redis Cluster node "
                f"{shard.address[0]}:{shard.address[1]}: {exc}"
            ) from exc

    # -- the slot map -------------------------------------------------------------------

    def _request_refresh(self) -> None:
        self._refresh_due.set()

    async def _supervise(self) -> None:
        """Keep the slot map current: at start, every probe interval, and when asked."""
        attempt = 0
        while True:
            self._refresh_due.clear()
            try:
                await self._refresh()
                attempt = 0
                if self._map_failing:
                    logger.info("Redis Cluster broker: %s answers again", self._where)
                self._map_failing = False
                wait = self._probe_interval
            except Exception as exc:
                attempt += 1
                self._on_map_failure(exc)
                bound = min(self._reconnect_cap, self._reconnect_base * 2 ** min(attempt, 30))
                wait = bound
            if not self._settled.is_set():
                self._settled.set()
                self._recompute_state()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._refresh_due.wait()
            # A burst of lost sessions asks many times: refresh once, a moment later.
            await asyncio.sleep(min(0.05, self._reconnect_base))

    def _on_map_failure(self, exc: Exception) -> None:
        if self._map_failing:
            logger.debug("Redis Cluster broker: reading the slot map failed: %s", exc)
        else:
            logger.warning(
                "Redis Cluster broker: no node of %s gave the slot map (%s); retrying",
                self._where,
                exc,
            )
        self._map_failing = True
        if not self._shards:
            self._state_if_open(BrokerState.DISCONNECTED)

    def _state_if_open(self, state: BrokerState) -> None:
        if self._state is BrokerState.CLOSED or self._state is state:
            return
        self._state = state
        if self._events is not None:
            with contextlib.suppress(Exception):
                self._events.on_state(state)

    async def _refresh(self) -> None:
        clients = [s.client for s in self._shards.values()]
        slot_map = await fetch_slot_map(self._target, clients, connect_timeout=self._timeout)
        if slot_map != self._slot_map:
            await self._reconcile(slot_map)

    async def _reconcile(self, slot_map: SlotMap) -> None:
        """Adopt a new slot map: new sessions for masters whose address or slots changed."""
        old = self._shards
        keep = {a: s for a, s in old.items() if slot_map.get(a) == s.spans}
        retired = [s for a, s in old.items() if a not in keep]
        if self._slot_map:
            logger.info(
                "Redis Cluster broker: the slot map of %s changed; %d shard(s) of %d start over",
                self._where,
                len(slot_map) - len(keep),
                len(slot_map),
            )
        assert self._events is not None
        new = {a: _Shard(self, a, spans) for a, spans in slot_map.items() if a not in keep}
        self._shards = {**keep, **new}
        self._slot_map = slot_map
        table = owner_table(slot_map)
        self._owners = [None if a is None else self._shards[a] for a in table]
        for channel in self._desired:
            shard = self._owner(channel)
            if shard is not None and shard.address in new:
                shard.subs.desired.add(channel)
        for shard in retired:
            self._retired["reconnects"] += shard.session.reconnects
            self._retired["probe_failures"] += shard.probe.failures
            self._retired["invalid_payloads"] += shard.session.invalid_payloads
        await asyncio.gather(*(s.close() for s in retired), return_exceptions=True)
        events = self._events
        await asyncio.gather(
            *(
                s.session.start(ShardEvents(events, self._recompute_state), s.client)
                for s in new.values()
            )
        )
        self._recompute_state()
