"""The Redis broker: publications travel through Redis pub/sub to every process.

It also keeps channel histories (`RedisHistory`, streams) and presence
(`RedisPresence`, hashes with expiries) in Redis, shared by every process. The
engine is split by what each part holds: this module the connections and their
supervision, `redis_connections` the URL and how connections are opened,
`redis_subscriptions` the subscriber's channel set, `redis_wire` the
payload format, `redis_history`/`redis_presence` the keys, `redis_scripts` the Lua.

Contract, on top of the ones in `wshub.brokers.base`, `wshub.history` and
`wshub.presence`:

- Each process holds ONE subscriber connection (RESP2, in pub/sub mode) and a small
  pool of normal connections for ``PUBLISH``. A Redis channel is named
  ``prefix + channel``; the subscriber only subscribes to channels with local
  members, plus one liveness-probe channel of its own.
- Wire format (docs/redis.md): a payload that is a JSON text is the publication's
  ``data`` as it is, so ``redis-cli PUBLISH wshub:chat '{"text":"hi"}'`` reaches
  ``chat``. A payload starting with `redis_wire.ENVELOPE_MARK` (0x1E, which never starts a JSON
  text) is an envelope: ``0x1E <header JSON object> 0x0A <data JSON text>``, the
  header carrying ``offset``, ``from`` (origin client id) and ``event``. Payloads that
  are neither are dropped, counted in ``invalid_payloads`` and logged once per channel.
- Order: one reader task consumes the subscriber connection and calls
  ``on_publication`` synchronously in arrival order. Redis keeps per-channel publish
  order on every connection, so every process sees the same order.
- ``subscribe``/``unsubscribe`` never raise because Redis is down: they update the
  desired set and, while connected, wait until Redis confirmed the change. Requests
  made together (or while one is on the wire) go out as one command. Whenever the
  connection comes (back) up, the whole desired set is subscribed again.
- History: a publish with ``history`` runs ONE Lua script that assigns the offset,
  keeps the publication in the channel's stream and publishes the envelope carrying
  the offset, atomically, so offset order is delivery order in every process.
- ``publish``, ``history`` and the presence calls raise `BrokerUnavailable` at once
  while not connected, and when Redis fails the command (connection lost, timeout,
  error reply). A publish is never retried: delivery stays at most once.
- Outages: on connection loss the state becomes DISCONNECTED (one warning per outage),
  the broker reconnects with capped exponential backoff and full jitter, resubscribes,
  becomes CONNECTED and logs the recovery once. A restart with an empty dataset is
  survivable: histories start again under new epochs (clients learn they cannot
  recover), and every process adds its presence entries again on its next refresh.
- Liveness: every ``probe_interval`` seconds a token is published to the probe channel
  and must come back on the subscriber connection within ``probe_timeout``. A
  connection dropped for exceeding ``client-output-buffer-limit pubsub``, or left deaf
  by a failover, is then treated as lost. The probe channel shows in ``PUBSUB CHANNELS``
  (``prefix + "__probe__:" + process id``) but never in `RedisBroker.channels`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Final, TypeVar

from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from wshub.brokers.base import (
    Broker,
    BrokerEvents,
    BrokerState,
    HistoryOptions,
    PublishResult,
)
from wshub.brokers.history import History, HistoryPage
from wshub.brokers.presence import ClientInfo, Presence
from wshub.brokers.redis_connections import (
    SCHEMES,
    check_url,
    new_pool,
    new_subscriber,
    redis_location,
)
from wshub.brokers.redis_history import RedisHistory
from wshub.brokers.redis_presence import RedisPresence
from wshub.brokers.redis_subscriptions import CHUNK, Subscriptions, settle, stop_tasks, wait_batch
from wshub.brokers.redis_wire import decode_payload, encode_payload
from wshub.core.errors import BrokerUnavailable

__all__ = ["PROBE_INFIX", "SCHEMES", "RedisBroker", "check_url", "redis_location"]

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

#: Between the prefix and the process id in the name of a broker's probe channel.
PROBE_INFIX: Final = "__probe__:"
# Messages handled between yields of the reader: a burst buffered from Redis is read
# without ever suspending, and the writers must run before the send queues fill (4008).
_YIELD_EVERY = 100


class _ProbeFailed(Exception):
    """The subscriber connection did not echo a probe in time: it is deaf or gone."""


class RedisBroker(Broker, History, Presence):
    """Carries publications through Redis pub/sub; keeps history and presence in Redis.

    See the module docstring for the contract and docs/redis.md for the keys.

    Attributes:
        reconnects: how many times the subscriber connection came back after an
            outage (a Redis that was down at start counts as an outage).
        probe_failures: liveness probes that got no echo in time.
        invalid_payloads: received payloads dropped for being neither JSON nor an
            envelope.
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
            url: ``redis://[user:password@]host:port/db``, ``rediss://...`` or
                ``unix:///path/to/socket``.
            prefix: prepended to every channel and key name in Redis.
            probe_interval: seconds between liveness probes of the subscriber.
            probe_timeout: seconds a probe may take to come back; defaults to ``timeout``.
            reconnect_base: first reconnect delay bound, doubled per failed attempt.
            reconnect_cap: the longest delay between reconnect attempts.
            timeout: seconds for connecting and for each command.
            max_connections: size of the publishing connection pool.

        Raises:
            ValueError: the URL is not a Redis URL.
        """
        check_url(url)
        self._url = url
        self._where = redis_location(url)
        self._prefix = prefix
        self._prefix_len = len(prefix.encode())
        self._probe_channel = f"{prefix}{PROBE_INFIX}{secrets.token_hex(8)}"
        self._probe_name = self._probe_channel.encode()
        self._probe_interval = probe_interval
        self._probe_timeout = probe_timeout if probe_timeout is not None else timeout
        self._reconnect_base = reconnect_base
        self._reconnect_cap = reconnect_cap
        self._timeout = timeout
        self._max_connections = max_connections
        self.reconnects = 0
        self.probe_failures = 0
        self.invalid_payloads = 0
        self._events: BrokerEvents | None = None
        self._client: Redis | None = None
        self._task: asyncio.Task[None] | None = None
        self._settled = asyncio.Event()  # the first connection attempt has an outcome
        self._probe_now = asyncio.Event()  # a publish failed: probe without waiting
        self._outage_since: float | None = None
        self._echoes: dict[bytes, asyncio.Future[None]] = {}  # tokens sent to the probe channel
        self._warned: set[str] = set()  # channels whose invalid payloads were logged
        self._subs = Subscriptions(prefix, self._probe_channel)
        self._history_store = RedisHistory(prefix)
        self._presence_store = RedisPresence(prefix)

    @property
    def channels(self) -> frozenset[str]:
        """The channels the hub subscribed to (without prefix, without the probe channel)."""
        return frozenset(self._subs.desired)

    @property
    def probe_channel(self) -> str:
        """This broker's probe channel, as named in Redis."""
        return self._probe_channel

    # -- the Broker interface -------------------------------------------------------

    async def start(self, events: BrokerEvents) -> None:
        """Start connecting; return once the first attempt succeeded or failed.

        Args:
            events: the receiver of publications and state changes.

        Raises:
            RuntimeError: the broker was started or closed before.
        """
        if self._task is not None or self.state is BrokerState.CLOSED:
            raise RuntimeError("RedisBroker.start() may be called once")
        self._events = events
        self._client = new_pool(
            self._url, timeout=self._timeout, max_connections=self._max_connections
        )
        self._task = asyncio.create_task(self._run(), name="wshub-redis-broker")
        # A healthy Redis is CONNECTED when start returns; a refused connection settles
        # at once, a black-holed host after `timeout`. Either way we never raise.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2 * self._timeout + 1):
                await self._settled.wait()

    async def close(self) -> None:
        """Stop the reader and the probe, close every connection. Idempotent."""
        if self.state is BrokerState.CLOSED:
            return
        self.state = BrokerState.CLOSED
        task, self._task = self._task, None
        await stop_tasks(task)
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()
        self._events = None

    async def subscribe(self, channels: Sequence[str]) -> None:
        """Add ``channels`` to the desired set; while connected, wait until Redis confirms.

        Args:
            channels: channel names without the prefix.
        """
        self._subs.desired.update(channels)
        await wait_batch(self._subs.request(channels))

    async def unsubscribe(self, channels: Sequence[str]) -> None:
        """Remove ``channels`` from the desired set; while connected, wait until Redis confirms.

        Args:
            channels: channel names without the prefix.
        """
        self._subs.desired.difference_update(channels)
        self._warned.difference_update(channels)
        await wait_batch(self._subs.request(channels))

    async def publish(
        self,
        channel: str,
        data: bytes,
        *,
        origin: str | None = None,
        history: HistoryOptions | None = None,
        event: str | None = None,
    ) -> PublishResult:
        """Publish ``data`` on ``prefix + channel``: plain JSON, or an envelope with metadata.

        With ``history`` (and no ``event``), the history script assigns the offset,
        keeps the publication and publishes it in one atomic step.

        Args:
            channel: the channel name without the prefix.
            data: the payload, a JSON text; handed on unchanged.
            origin: the publishing client's id, carried to subscribers as ``from``.
            history: keep the publication in the channel's history.
            event: ``"join"``/``"leave"`` for a presence change; never kept in history.

        Returns:
            The offset and epoch when kept in history, else an empty result.

        Raises:
            BrokerUnavailable: not connected (raised at once, without network I/O),
                or Redis failed the command.
        """
        action = f"publish to {channel!r}"
        if history is not None and event is None:
            options = history
            return await self._command(
                action,
                lambda client: self._history_store.publish(client, channel, data, origin, options),
            )
        payload = encode_payload(data, origin, event=event)
        await self._command(action, lambda client: client.publish(self._prefix + channel, payload))
        return PublishResult()

    # -- the History and Presence interfaces ----------------------------------------

    async def history(
        self, channel: str, *, since: int | None = None, limit: int | None = None
    ) -> HistoryPage:
        """Read publications of ``channel`` kept in Redis (see `History.history`).

        While this process is subscribed to ``channel``, the read returns only once
        every publication up to the page's position has reached ``on_publication``:
        one echo through the probe channel (see `_echo`) after the read.

        Args:
            channel: the channel name without the prefix.
            since: return those after this offset, oldest first; None: the newest.
            limit: at most this many; None for all kept, 0 for the position only.

        Returns:
            The page; a channel without history is at `wshub.history.NO_HISTORY`.

        Raises:
            BrokerUnavailable: not connected (at once), or Redis failed the read.
        """
        action = f"read the history of {channel!r}"
        page = await self._command(
            action, lambda client: self._history_store.read(client, channel, since, limit)
        )
        if channel in self._subs.desired:
            # Live copies of the page's newest publications may still be on their way
            # over the subscriber connection. Recovery drops live ones the page covers,
            # so they must not arrive after we return: wait until they are through.
            await self._command(action, self._catch_up)
        return page

    async def presence_add(self, channel: str, entries: list[ClientInfo], ttl: float) -> None:
        """Add or refresh entries of ``channel`` that expire after ``ttl`` seconds.

        Args:
            channel: the channel name without the prefix.
            entries: the entries, written in one round trip.
            ttl: seconds until they expire unless added again.

        Raises:
            BrokerUnavailable: not connected (at once), or Redis failed the write.
        """
        await self._command(
            f"add presence in {channel!r}",
            lambda client: self._presence_store.add(client, channel, entries, ttl),
        )

    async def presence_remove(self, channel: str, clients: list[str]) -> None:
        """Remove entries of ``channel`` (missing ones are ignored).

        Args:
            channel: the channel name without the prefix.
            clients: the client ids whose entries go.

        Raises:
            BrokerUnavailable: not connected (at once), or Redis failed the write; the
                entries then expire by themselves.
        """
        await self._command(
            f"remove presence in {channel!r}",
            lambda client: self._presence_store.remove(client, channel, clients),
        )

    async def presence(self, channel: str) -> dict[str, ClientInfo]:
        """Return the live entries of ``channel``, from every process, keyed by client id.

        Args:
            channel: the channel name without the prefix.

        Returns:
            The entries whose expiry has not passed (expired ones are deleted).

        Raises:
            BrokerUnavailable: not connected (at once), or Redis failed the read.
        """
        return await self._command(
            f"read the presence of {channel!r}",
            lambda client: self._presence_store.read(client, channel),
        )

    async def _catch_up(self, client: Redis) -> None:
        """Wait until everything published so far has come through the subscriber.

        Raises:
            RedisError: the publish failed, or no echo within ``timeout`` (a
                `RedisTimeoutError`, so that the subscriber gets probed at once).
        """
        try:
            await self._echo(client, self._timeout)
        except TimeoutError as exc:
            raise RedisTimeoutError("the subscriber connection did not catch up") from exc

    async def _command(self, action: str, call: Callable[[Redis], Awaitable[_T]]) -> _T:
        """Run one call on the connection pool, turning every failure into BrokerUnavailable.

        Args:
            action: what the call does, for the error message ("publish to 'chat'").
            call: the call, given the pool.

        Returns:
            What the call returned.

        Raises:
            BrokerUnavailable: not connected (raised at once, without network I/O), or
                Redis failed the call. Never retried: a publish must not go out twice.
        """
        client = self._client
        if client is None or self.state is not BrokerState.CONNECTED:
            raise BrokerUnavailable(
                f"cannot {action}: Redis broker at {self._where} is {self.state.value}"
            )
        try:
            return await call(client)
        except RedisError as exc:
            if isinstance(exc, RedisConnectionError | RedisTimeoutError):
                self._probe_now.set()  # the subscriber may be just as dead: check it now
            raise BrokerUnavailable(
                f"could not {action} through Redis at {self._where}: {exc}"
            ) from exc

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
        conn = new_subscriber(self._url, timeout=self._timeout)
        reader = keeper = None
        try:
            await conn.connect()  # type: ignore[no-untyped-call]  # redis-py leaves it unannotated
            self._subs.attach(conn)
            reader = asyncio.create_task(self._read(conn), name="wshub-redis-reader")
            keeper = asyncio.create_task(self._keep(), name="wshub-redis-keeper")
            done, _ = await asyncio.wait((reader, keeper), return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()
            raise RedisConnectionError("subscriber session ended")  # pragma: no cover
        finally:
            with contextlib.suppress(Exception):
                await conn.disconnect(nowait=True)
            await self._subs.detach()
            await stop_tasks(reader, keeper)

    async def _keep(self) -> None:
        """Resubscribe everything, report CONNECTED, then probe the subscriber until it fails."""
        batch = self._subs.request(())
        async with asyncio.timeout(self._timeout * (1 + len(self._subs.desired) // CHUNK)):
            await wait_batch(batch)
        if self._outage_since is not None and self._client is not None:
            # Idle publishing connections may be as deaf as the old subscriber was.
            await self._client.connection_pool.disconnect(inuse_connections=False)
        self._on_connected()
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._probe_interval):
                    await self._probe_now.wait()
            self._probe_now.clear()
            await self._probe()

    async def _probe(self) -> None:
        """Check that the subscriber connection still hears what is published."""
        assert self._client is not None
        try:
            await self._echo(self._client, self._probe_timeout)
        except (TimeoutError, RedisError) as exc:
            self.probe_failures += 1
            reason = str(exc) or "no echo"
            raise _ProbeFailed(
                f"liveness probe failed within {self._probe_timeout:g}s: {reason}"
            ) from exc

    async def _echo(self, client: Redis, within: float) -> None:
        """Publish a token on the probe channel and wait until the subscriber reads it back.

        Redis sends one connection's pub/sub messages in the order it executed the
        publishes, so once the token is back, everything published before it on this
        process's channels has been handed to ``on_publication``.

        Args:
            client: the connection pool to publish through.
            within: seconds the round trip may take.

        Raises:
            TimeoutError: no echo in time (the subscriber is deaf, slow, or gone).
            RedisError: the publish failed.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        token = secrets.token_hex(8).encode()
        waiter = self._echoes[token] = loop.create_future()
        try:
            async with asyncio.timeout_at(deadline):
                await client.publish(self._probe_channel, token)
            # On Python 3.11, asyncio.wait_for inside redis-py can swallow the
            # cancellation a timeout (or close()) sends: the publish then returns as if
            # nothing happened. So the wait for the echo keeps its own deadline.
            done, _ = await asyncio.wait((waiter,), timeout=max(0.0, deadline - loop.time()))
            if not done:
                raise TimeoutError("no echo")
        finally:
            del self._echoes[token]

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
        expected = isinstance(exc, RedisError | OSError | TimeoutError | _ProbeFailed)
        if self._outage_since is not None:
            logger.debug("Redis broker: reconnecting to %s failed: %s", self._where, exc)
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
        if name == self._probe_name:
            waiter = self._echoes.get(payload)
            if waiter is not None:
                settle(waiter)
            return
        channel = name[self._prefix_len :].decode()
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
