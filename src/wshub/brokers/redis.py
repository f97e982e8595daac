"""The Redis broker: publications travel through Redis pub/sub to every process.

It also keeps channel histories (`RedisHistory`, streams) and presence
(`RedisPresence`, hashes with expiries) in Redis, shared by every process. The
engine is split by what each part holds: this module the command surface,
`redis_session` the subscriber connection, its reader and its supervision
(reconnects, backoff, state), `redis_probe` the liveness probe,
`redis_connections` the URL and how connections are opened,
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
  error reply). A publish that was written to Redis but got no reply in time (or
  whose connection broke after the write) raises `PublishTimeout` instead: it may
  have been published. A publish is never retried here; with an idempotency key the
  caller may retry it safely (the publish scripts remember the key atomically).
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

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
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
from wshub.brokers.redis_connections import (
    SCHEMES,
    check_url,
    close_client,
    new_pool,
    redis_location,
)
from wshub.brokers.redis_history import RedisHistory, publish_once_command
from wshub.brokers.redis_pipeline import OutcomeUnknown, PublishPipeline
from wshub.brokers.redis_presence import RedisPresence
from wshub.brokers.redis_probe import PROBE_INFIX, LivenessProbe
from wshub.brokers.redis_session import SubscriberSession
from wshub.brokers.redis_subscriptions import Subscriptions, wait_batch
from wshub.brokers.redis_wire import encode_payload
from wshub.core.errors import BrokerUnavailable, PublishTimeout

__all__ = ["PROBE_INFIX", "SCHEMES", "RedisBroker", "check_url", "redis_location"]

_T = TypeVar("_T")


class RedisBroker(Broker, History, Presence):
    """Carries publications through Redis pub/sub; keeps history and presence in Redis.

    See the module docstring for the contract and docs/redis.md for the keys. This
    class is the command surface; the subscriber connection and its supervision are a
    `SubscriberSession`, the liveness probe a `LivenessProbe`.
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
            url: ``redis://[user:password@]host:port/db``, ``rediss://...``,
                ``unix:///path/to/socket`` or
                ``redis+sentinel://[user:password@]host:port[,host:port]/service[?db=N]``
                (the master the sentinels name, followed through failovers).
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
        self._timeout = timeout
        self._max_connections = max_connections
        self._client: Redis | None = None
        self._pipeline: PublishPipeline | None = None
        self._probe = LivenessProbe(
            prefix,
            interval=probe_interval,
            timeout=probe_timeout if probe_timeout is not None else timeout,
        )
        self._subs = Subscriptions(prefix, self._probe.channel)
        self._session = SubscriberSession(
            url,
            where=self._where,
            prefix=prefix,
            subscriptions=self._subs,
            probe=self._probe,
            timeout=timeout,
            reconnect_base=reconnect_base,
            reconnect_cap=reconnect_cap,
        )
        self._history_store = RedisHistory(prefix)
        self._presence_store = RedisPresence(prefix)

    # The session reports the connection state, so the broker's state is the session's;
    # a property with a setter, since `Broker` declares ``state`` a writable attribute.
    @property
    def state(self) -> BrokerState:
        """The connection state, as reported through ``on_state``."""
        return self._session.state

    @state.setter
    def state(self, state: BrokerState) -> None:
        self._session.state = state

    @property
    def reconnects(self) -> int:
        """Times the subscriber connection came back after an outage (or a Redis down at start)."""
        return self._session.reconnects

    @property
    def probe_failures(self) -> int:
        """Liveness probes that got no echo in time."""
        return self._probe.failures

    @property
    def invalid_payloads(self) -> int:
        """Received payloads dropped for being neither JSON nor an envelope."""
        return self._session.invalid_payloads

    @property
    def channels(self) -> frozenset[str]:
        """The channels the hub subscribed to (without prefix, without the probe channel)."""
        return frozenset(self._subs.desired)

    @property
    def history_evictions(self) -> int:
        """Publications this process's publishes evicted from histories by a byte cap."""
        return self._history_store.evictions

    @property
    def probe_channel(self) -> str:
        """This broker's probe channel, as named in Redis."""
        return self._probe.channel

    # -- the Broker interface -------------------------------------------------------

    async def start(self, events: BrokerEvents) -> None:
        """Start connecting (``events`` receives publications and state changes); return
        once the first attempt succeeded or failed.

        Raises:
            RuntimeError: the broker was started or closed before.
        """
        if self._session.started or self.state is BrokerState.CLOSED:
            raise RuntimeError("RedisBroker.start() may be called once")
        self._client = new_pool(
            self._url, timeout=self._timeout, max_connections=self._max_connections
        )
        self._pipeline = PublishPipeline(self._client, RedisHistory.SCRIPTS)
        await self._session.start(events, self._client)

    async def close(self) -> None:
        """Stop the reader and the probe, close every connection. Idempotent."""
        if self.state is BrokerState.CLOSED:
            return
        await self._session.close()
        pipeline, self._pipeline = self._pipeline, None
        if pipeline is not None:
            await pipeline.close()
        client, self._client = self._client, None
        if client is not None:
            await close_client(client)

    async def subscribe(self, channels: Sequence[str]) -> None:
        """Add ``channels`` to the desired set; while connected, wait until Redis confirms."""
        self._subs.desired.update(channels)
        await wait_batch(self._subs.request(channels))

    async def unsubscribe(self, channels: Sequence[str]) -> None:
        """Remove ``channels`` from the desired set; while connected, wait until Redis confirms."""
        self._subs.desired.difference_update(channels)
        self._session.forget_warnings(channels)
        await wait_batch(self._subs.request(channels))

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
        """Publish ``data`` on ``prefix + channel``: plain JSON, or an envelope with metadata.

        Arguments and result: those of `Broker.publish`. With ``history`` (and no
        ``event``), the history script assigns the offset, keeps the publication and
        publishes it in one atomic step; an ``idempotency`` key is checked atomically in
        the same script (see `RedisHistory`).

        Raises:
            PublishTimeout: written to Redis, but no reply within ``timeout``: it may
                have been published.
            BrokerUnavailable: not connected (raised at once, without network I/O),
                no connection could be made, or Redis refused the command: it was
                not published.
        """
        action = f"publish to {channel!r}"
        store = self._history_store
        command: tuple[Any, ...]
        if history is not None and event is None:
            command = store.publish_command(channel, data, origin, history, idempotency)
        else:
            payload = encode_payload(data, origin, event=event)
            if idempotency is not None:
                command = publish_once_command(self._prefix, channel, payload, idempotency)
            else:
                command = ("PUBLISH", self._prefix + channel, payload)

        def submit(_: Redis) -> Awaitable[Any]:
            # Submitted now, before any await, so publishes keep their order (redis_pipeline).
            assert self._pipeline is not None  # set with the pool, which _command checked
            return self._pipeline.submit(*command)

        reply = await self._command(action, submit)
        if command[0] == "EVALSHA" and history is not None and event is None:
            return store.publish_result(reply)
        return PublishResult()

    # -- the History and Presence interfaces ----------------------------------------

    async def history(
        self,
        channel: str,
        *,
        since: int | None = None,
        limit: int | None = None,
        options: HistoryOptions | None = None,
    ) -> HistoryPage:
        """Read publications of ``channel`` kept in Redis (see `History.history`).

        While this process is subscribed to ``channel``, the read returns only once
        every publication up to the page's position has reached ``on_publication``:
        one echo through the probe channel (see `LivenessProbe.echo`) after the read.

        With ``options``, a missing history is created (offset 0, a new epoch) in the
        same script; without, a channel without history is at `NO_HISTORY`.

        Raises:
            BrokerUnavailable: not connected (at once), or Redis failed the read.
        """
        action = f"read the history of {channel!r}"
        page = await self._command(
            action,
            lambda client: self._history_store.read(client, channel, since, limit, options),
        )
        if channel in self._subs.desired:
            # Live copies of the page's newest publications may still be on their way
            # over the subscriber connection. Recovery drops live ones the page covers,
            # so they must not arrive after we return: wait until they are through.
            await self._command(action, self._catch_up)
        return page

    async def presence_add(self, channel: str, entries: list[ClientInfo], ttl: float) -> None:
        """Add or refresh entries of ``channel`` in one round trip (see `Presence`).

        Raises:
            BrokerUnavailable: not connected (at once), or Redis failed the write.
        """
        await self._command(
            f"add presence in {channel!r}",
            lambda client: self._presence_store.add(client, channel, entries, ttl),
        )

    async def presence_remove(self, channel: str, clients: list[str]) -> None:
        """Remove entries of ``channel`` (see `Presence.presence_remove`).

        Raises:
            BrokerUnavailable: not connected (at once), or Redis failed the write (the
                entries then expire by themselves).
        """
        await self._command(
            f"remove presence in {channel!r}",
            lambda client: self._presence_store.remove(client, channel, clients),
        )

    async def presence(self, channel: str) -> dict[str, ClientInfo]:
        """The live entries of ``channel``, from every process (expired ones are deleted).

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
            await self._probe.echo(client, self._timeout)
        except TimeoutError as exc:
            raise RedisTimeoutError("the subscriber connection did not catch up") from exc

    async def _command(self, action: str, call: Callable[[Redis], Awaitable[_T]]) -> _T:
        """Run ``call`` on the connection pool, turning every failure into BrokerUnavailable;
        ``action`` says what the call does, for the error message ("publish to 'chat'").

        Raises:
            PublishTimeout: a publish was written but not answered (`OutcomeUnknown`).
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
        except OutcomeUnknown as exc:
            self._probe.request()  # the subscriber may be just as dead: check it now
            raise PublishTimeout(
                f"could not {action} through Redis at {self._where}: sent, but {exc}; "
                "it may have been published"
            ) from exc
        except RedisError as exc:
            if isinstance(exc, RedisConnectionError | RedisTimeoutError):
                self._probe.request()  # the subscriber may be just as dead: check it now
            raise BrokerUnavailable(
                f"could not {action} through Redis at {self._where}: {exc}"
            ) from exc
