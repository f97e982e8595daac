"""The subscriber session: one pub/sub connection, its reader, and its supervision.

`SubscriberSession` keeps ONE subscriber connection alive for the broker: it connects,
resubscribes the whole desired set, reports `BrokerState.CONNECTED`, reads every
reply in arrival order (handing publications to ``on_publication`` synchronously,
probe echoes to the `LivenessProbe`, confirmations to `Subscriptions`), and lets the
probe watch the connection. When any of that fails, it reports DISCONNECTED (one
warning per outage), backs off with capped exponential backoff and full jitter, and
starts over. The connection state it reports is the broker's `Broker.state`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
from collections.abc import Sequence

from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from wshub.brokers.base import BrokerEvents, BrokerState
from wshub.brokers.redis_connections import check_master, is_sentinel_url, new_subscriber
from wshub.brokers.redis_probe import LivenessProbe, ProbeFailed
from wshub.brokers.redis_subscriptions import CHUNK, Subscriptions, stop_tasks, wait_batch
from wshub.brokers.redis_wire import decode_payload

__all__ = ["SubscriberSession"]

# One logger for the whole engine, so that users configure it once.
logger = logging.getLogger("wshub.brokers.redis")

# Messages handled between yields of the reader: a burst buffered from Redis is read
# without ever suspending, and the writers must run before the send queues fill (4008).
_YIELD_EVERY = 100


class SubscriberSession:
    """Keeps the subscriber connection up, reads it in order, and reports the state.

    Attributes:
        state: the broker's connection state (CONNECTING until the first attempt).
        reconnects: how many times the subscriber connection came back after an
            outage (a Redis that was down at start counts as an outage).
        invalid_payloads: received payloads dropped for being neither JSON nor an
            envelope.
    """

    def __init__(
        self,
        url: str,
        *,
        where: str,
        prefix: str,
        subscriptions: Subscriptions,
        probe: LivenessProbe,
        timeout: float,
        reconnect_base: float,
        reconnect_cap: float,
    ) -> None:
        """Configure the session; nothing connects before `start`.

        Args:
            url: the Redis URL.
            where: the URL without credentials, for logs.
            prefix: prepended to every channel name in Redis.
            subscriptions: the desired channels, mirrored onto each connection.
            probe: the liveness probe, fed the echoes this session reads.
            timeout: seconds for connecting and for each command.
            reconnect_base: first reconnect delay bound, doubled per failed attempt.
            reconnect_cap: the longest delay between reconnect attempts.
        """
        self._url = url
        self._where = where
        self._prefix_len = len(prefix.encode())
        self._subs = subscriptions
        self._probe = probe
        self._timeout = timeout
        self._reconnect_base = reconnect_base
        self._reconnect_cap = reconnect_cap
        self.state = BrokerState.CONNECTING
        self.reconnects = 0
        self.invalid_payloads = 0
        self._events: BrokerEvents | None = None
        self._client: Redis | None = None
        self._task: asyncio.Task[None] | None = None
        self._settled = asyncio.Event()  # the first connection attempt has an outcome
        self._outage_since: float | None = None
        self._warned: set[str] = set()  # channels whose invalid payloads were logged

    @property
    def started(self) -> bool:
        """Whether `start` ran and `close` did not yet."""
        return self._task is not None

    async def start(self, events: BrokerEvents, client: Redis) -> None:
        """Start the supervisor; return once the first attempt succeeded or failed.

        Args:
            events: the receiver of publications and state changes.
            client: the publishing pool, for probes (and dropped idle after outages).
        """
        self._events = events
        self._client = client
        self._task = asyncio.create_task(self._run(), name="wshub-redis-broker")
        # A healthy Redis is CONNECTED when start returns; a refused connection settles
        # at once, a black-holed host after `timeout`. Either way we never raise.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2 * self._timeout + 1):
                await self._settled.wait()

    async def close(self) -> None:
        """Report CLOSED, stop the reader and the probe, close the subscriber connection."""
        self.state = BrokerState.CLOSED
        task, self._task = self._task, None
        await stop_tasks(task)
        self._client = None
        self._events = None

    def forget_warnings(self, channels: Sequence[str]) -> None:
        """Channels were unsubscribed: warn again if they come back with invalid payloads."""
        self._warned.difference_update(channels)

    # -- the supervisor: sessions, outages, backoff -------------------------------------

    async def _run(self) -> None:
        """Keep a subscriber session alive: connect, serve, back off, repeat; until cancelled."""
        attempt = 0
        while True:
            try:
                await self._session()
            except Exception as exc:  # any failure of a session means: reconnect
                attempt = 0 if self.state is BrokerState.CONNECTED else attempt + 1
                self._on_lost(exc)
            await asyncio.sleep(self._backoff(attempt))

    def _backoff(self, attempt: int) -> float:
        # Full jitter: restarted fleets spread their reconnects instead of stampeding.
        bound = min(self._reconnect_cap, self._reconnect_base * 2 ** min(attempt, 30))
        return random.uniform(0, bound)

    async def _session(self) -> None:
        """Run one subscriber connection until it fails; always raises."""
        conn = self._new_subscriber()
        reader = keeper = follower = None
        try:
            await conn.connect()  # type: ignore[no-untyped-call]  # redis-py leaves it unannotated
            self._subs.attach(conn)
            reader = asyncio.create_task(self._read(conn), name="wshub-redis-reader")
            keeper = asyncio.create_task(self._keep(), name="wshub-redis-keeper")
            tasks = [reader, keeper]
            if is_sentinel_url(self._url):
                follower = asyncio.create_task(self._follow(conn), name="wshub-redis-follower")
                tasks.append(follower)
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()
            raise RedisConnectionError("subscriber session ended")  # pragma: no cover
        finally:
            with contextlib.suppress(Exception):
                await conn.disconnect(nowait=True)
            await self._subs.detach()
            await stop_tasks(reader, keeper, follower)

    def _new_subscriber(self) -> AbstractConnection:
        """A subscriber connection, not connected yet (a cluster shard's goes to its node)."""
        pool = self._client.connection_pool if self._client is not None else None
        # A sentinel URL's subscriber finds the master through the pool's sentinels.
        return new_subscriber(self._url, timeout=self._timeout, pool=pool)

    async def _keep(self) -> None:
        """Resubscribe everything, report CONNECTED, then probe the subscriber until it fails."""
        batch = self._subs.request(())
        async with asyncio.timeout(self._timeout * (1 + len(self._subs.desired) // CHUNK)):
            await wait_batch(batch)
        if self._outage_since is not None and self._client is not None:
            # Idle publishing connections may be as deaf as the old subscriber was.
            await self._client.connection_pool.disconnect(inuse_connections=False)
        self._on_connected()
        assert self._client is not None  # set by start, before this task exists
        await self._probe.watch(self._client)

    async def _follow(self, conn: AbstractConnection) -> None:
        """Sentinel URLs: every probe interval, check the sentinels still name our master.

        A demoted master that is still up keeps its clients until Sentinel reconfigures
        it, and echoes our probes meanwhile; this ends the session (raising
        `MasterMoved`) as soon as the sentinels name another master, so the next one
        connects to it.
        """
        while True:
            await asyncio.sleep(self._probe.interval)
            await check_master(conn)

    def _on_connected(self) -> None:
        if self._outage_since is not None:
            self.reconnects += 1
            logger.info(
                "Redis broker reconnected to %s after %.1fs; resubscribed %d channels",
                self._where,
                time.monotonic() - self._outage_since,
                len(self._subs.desired),
            )
            self._outage_since = None
        self._set_state(BrokerState.CONNECTED)
        self._settled.set()

    def _on_lost(self, exc: Exception) -> None:
        """Record a failed session: one warning per outage, debug lines for each retry."""
        expected = isinstance(exc, RedisError | OSError | TimeoutError | ProbeFailed)
        if self._outage_since is not None:
            logger.debug("Redis broker: reconnecting to %s failed: %s", self._where, exc)
        elif expected and self.state is BrokerState.CONNECTING:
            # Never connected yet (startup): nothing was lost, Redis is just not there.
            logger.warning(
                "cannot reach Redis at %s (%s); publishes fail until it answers, "
                "retrying with backoff",
                self._where,
                exc,
            )
        elif expected:
            logger.warning(
                "Redis broker lost its connection to %s (%s); publishes fail until it is "
                "back, reconnecting with backoff",
                self._where,
                exc,
            )
        else:
            logger.error("Redis broker: unexpected error, reconnecting", exc_info=exc)
        if self._outage_since is None:
            self._outage_since = time.monotonic()
        self._set_state(BrokerState.DISCONNECTED)
        self._settled.set()

    def _set_state(self, state: BrokerState) -> None:
        if self.state is state or self.state is BrokerState.CLOSED:
            return
        self.state = state
        if self._events is not None:
            try:
                self._events.on_state(state)
            except Exception:
                logger.exception("BrokerEvents.on_state(%s) raised", state)

    # -- the reader ---------------------------------------------------------------------

    async def _read(self, conn: AbstractConnection) -> None:
        """Consume the subscriber connection in order until it fails; always raises."""
        read = conn.read_response
        count = 0
        while True:
            reply = await read(timeout=math.inf, disconnect_on_error=False)
            kind = reply[0]
            if kind == b"message":
                self._on_message(reply[1], reply[2])
                count += 1
                if count % _YIELD_EVERY == 0:
                    # Reading a buffered burst never suspends: let the writers send.
                    await asyncio.sleep(0)
            elif kind == b"subscribe" or kind == b"unsubscribe":
                self._subs.on_ack()

    def _on_message(self, name: bytes, payload: bytes) -> None:
        if name == self._probe.name:
            self._probe.on_echo(payload)
            return
        self._deliver(name[self._prefix_len :].decode(), payload)

    def _deliver(self, channel: str, payload: bytes) -> None:
        """Hand a publication received on ``channel`` (without prefix) to the events."""
        if channel not in self._subs.desired:
            return  # still in flight when the hub unsubscribed: nobody local wants it
        publication = decode_payload(payload)
        if publication is None:
            self._reject(channel, payload)
            return
        events = self._events
        if events is None:
            return
        try:
            events.on_publication(channel, publication)
        except Exception:
            logger.exception("BrokerEvents.on_publication(%r) raised", channel)

    def _reject(self, channel: str, payload: bytes) -> None:
        self.invalid_payloads += 1
        if channel in self._warned:
            return
        self._warned.add(channel)
        logger.warning(
            "Redis broker dropped a payload on channel %r: neither JSON nor a wshub "
            "envelope (starts %r); further ones on this channel are only counted",
            channel,
            payload[:40],
        )
