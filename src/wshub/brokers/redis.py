"""The Redis broker: publications travel through Redis pub/sub to every process.

Contract, on top of the one in `wshub.brokers.base`:

- Each process holds ONE subscriber connection (RESP2, in pub/sub mode) and a small
  pool of normal connections for ``PUBLISH``. A Redis channel is named
  ``prefix + channel``; the subscriber only subscribes to channels with local
  members, plus one liveness-probe channel of its own.
- Wire format (docs/redis.md): a payload that is a JSON text is the publication's
  ``data`` as it is, so ``redis-cli PUBLISH wshub:chat '{"text":"hi"}'`` reaches
  ``chat``. A payload starting with `ENVELOPE_MARK` (0x1E, which never starts a JSON
  text) is an envelope: ``0x1E <header JSON object> 0x0A <data JSON text>``, the
  header carrying ``from`` (origin client id) and later ``offset``. Payloads that are
  neither are dropped, counted in ``invalid_payloads`` and logged once per channel.
- Order: one reader task consumes the subscriber connection and calls
  ``on_publication`` synchronously in arrival order. Redis keeps per-channel publish
  order on every connection, so every process sees the same order.
- ``subscribe``/``unsubscribe`` never raise because Redis is down: they update the
  desired set and, while connected, wait until Redis confirmed the change. Requests
  made together (or while one is on the wire) go out as one command. Whenever the
  connection comes (back) up, the whole desired set is subscribed again.
- ``publish`` raises `BrokerUnavailable` at once while not connected, and when Redis
  fails the command (connection lost, timeout, error reply). It is never retried:
  delivery stays at most once.
- Outages: on connection loss the state becomes DISCONNECTED (one warning per outage),
  the broker reconnects with capped exponential backoff and full jitter, resubscribes,
  becomes CONNECTED and logs the recovery once. Redis holds no state the broker cannot
  rebuild, so a restart with an empty dataset is survivable.
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
from collections import deque
from collections.abc import Iterator, Sequence
from typing import Any, Final
from urllib.parse import urlsplit

import orjson
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.connection import AbstractConnection, Connection, parse_url
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from wshub.brokers.base import (
    Broker,
    BrokerEvents,
    BrokerState,
    HistoryOptions,
    Publication,
    PublishResult,
)
from wshub.errors import BrokerUnavailable

logger = logging.getLogger(__name__)

#: First byte of an envelope: ASCII Record Separator, which can never start a JSON text.
ENVELOPE_MARK: Final = b"\x1e"
#: Between the prefix and the process id in the name of a broker's probe channel.
PROBE_INFIX: Final = "__probe__:"
#: URL schemes this engine serves.
SCHEMES: Final = frozenset({"redis", "rediss", "unix"})
# At most this many channels per SUBSCRIBE/UNSUBSCRIBE, so that resubscribing a huge
# set after an outage stays a pipeline of ordinary-sized commands.
_CHUNK = 10_000


def encode_payload(data: bytes, origin: str | None = None) -> bytes:
    """Build the Redis payload for a publication.

    Args:
        data: the publication, already a JSON text.
        origin: the publishing client's id, if any.

    Returns:
        ``data`` itself without metadata, else the envelope
        ``0x1E {"from":origin} 0x0A data``.
    """
    if origin is None:
        return data
    return b"".join((ENVELOPE_MARK, orjson.dumps({"from": origin}), b"\n", data))


def decode_payload(payload: bytes) -> Publication | None:
    """Read a Redis payload back into a publication.

    Args:
        payload: the bytes Redis delivered.

    Returns:
        The publication; its ``data`` is ``payload`` itself for plain JSON. None
        when the payload is neither a JSON text nor a well-formed envelope.
    """
    try:
        if payload.startswith(ENVELOPE_MARK):
            return _decode_envelope(payload)
        orjson.loads(payload)  # validation only: the bytes are handed on unchanged
        return Publication(payload)
    except ValueError:  # orjson.JSONDecodeError, or an envelope without its newline
        return None


def _decode_envelope(payload: bytes) -> Publication | None:
    end = payload.index(b"\n")
    header = orjson.loads(payload[1:end])
    data = payload[end + 1 :]
    orjson.loads(data)
    if not isinstance(header, dict):
        return None
    origin, offset = header.get("from"), header.get("offset")
    if origin is not None and not isinstance(origin, str):
        return None
    if offset is not None and type(offset) is not int:
        return None
    return Publication(data, offset, origin)


def redis_location(url: str) -> str:
    """Describe where a Redis URL points, without its credentials (for logs and errors)."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return f"unix:{parts.path}"
    return f"{parts.hostname or 'localhost'}:{parts.port or 6379}"


def check_url(url: str) -> None:
    """Refuse a URL this engine cannot serve.

    Raises:
        ValueError: the scheme is not ``redis``, ``rediss`` or ``unix``.
    """
    scheme = urlsplit(url).scheme
    if scheme not in SCHEMES:
        # The URL itself stays out of the message: it may carry a password.
        raise ValueError(f"not a Redis URL (scheme {scheme!r}); use redis://, rediss:// or unix://")


class _ProbeFailed(Exception):
    """The subscriber connection did not echo a probe in time: it is deaf or gone."""


class _Ack:
    """Replies still expected for one batch of SUBSCRIBE/UNSUBSCRIBE commands."""

    __slots__ = ("future", "remaining")

    def __init__(self, remaining: int, future: asyncio.Future[None]) -> None:
        self.remaining = remaining
        self.future = future


def _settle(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _chunks(verb: str, names: list[str]) -> Iterator[tuple[str, ...]]:
    for start in range(0, len(names), _CHUNK):
        yield (verb, *names[start : start + _CHUNK])


class _Subscriptions:
    """The channels the hub wants, mirrored onto the current subscriber connection.

    ``request`` marks channels changed. One flusher task turns changed channels into
    batched SUBSCRIBE/UNSUBSCRIBE commands (requests made while a batch is on the wire
    join the next one); the reader counts Redis's replies off with ``on_ack``, which
    settles each batch's future. Without a connection, requests only change ``desired``:
    ``attach`` makes everything desired due again on the next connection.
    """

    def __init__(self, prefix: str, probe_channel: str) -> None:
        self.desired: set[str] = set()  # what the hub asked for, without prefix
        self._prefix = prefix
        self._probe_channel = probe_channel
        self._probe_sent = False
        self._server: set[str] = set()  # sent on the current connection
        self._dirty: set[str] = set()  # changed since the last batch went out
        self._conn: AbstractConnection | None = None
        self._acks: deque[_Ack] = deque()
        self._batch: asyncio.Future[None] | None = None  # requests not sent yet
        self._flusher: asyncio.Task[None] | None = None

    def attach(self, conn: AbstractConnection) -> None:
        """Adopt a fresh connection: nothing is subscribed on it yet, all desired is due."""
        self._conn = conn
        self._server.clear()
        self._dirty.update(self.desired)
        self._probe_sent = False

    async def detach(self) -> None:
        """Forget the connection; let every waiting request return (the next one resubscribes)."""
        self._conn = None
        for ack in self._acks:
            _settle(ack.future)
        self._acks.clear()
        if self._batch is not None:
            _settle(self._batch)
            self._batch = None
        flusher, self._flusher = self._flusher, None
        await _stop(flusher)

    def request(self, channels: Sequence[str]) -> asyncio.Future[None] | None:
        """Mark ``channels`` changed; return the batch that will carry them, if connected."""
        self._dirty.update(channels)
        conn = self._conn
        if conn is None:
            return None
        if self._batch is None:
            self._batch = asyncio.get_running_loop().create_future()
            if self._flusher is None or self._flusher.done():
                self._flusher = asyncio.create_task(self._flush(conn), name="wshub-redis-flush")
        return self._batch

    def on_ack(self) -> None:
        """Count off one reply; Redis answers each channel of (UN)SUBSCRIBE, in order."""
        if not self._acks:
            return
        ack = self._acks[0]
        ack.remaining -= 1
        if ack.remaining <= 0:
            self._acks.popleft()
            _settle(ack.future)

    async def _flush(self, conn: AbstractConnection) -> None:
        try:
            while self._batch is not None:
                batch, self._batch = self._batch, None
                await self._send(conn, batch)
        except Exception as exc:
            # The reader sees the closed socket and ends the session, which detaches us.
            logger.debug("Redis broker: sending subscriptions failed: %s", exc)
            await conn.disconnect(nowait=True)

    async def _send(self, conn: AbstractConnection, batch: asyncio.Future[None]) -> None:
        subs, unsubs = self._take_changes()
        count = len(subs) + len(unsubs)
        if count == 0:
            # Nothing to send, but finish after any batch still on the wire.
            if self._acks:
                self._acks[-1].future.add_done_callback(lambda _: _settle(batch))
            else:
                _settle(batch)
            return
        self._acks.append(_Ack(count, batch))
        commands = [*_chunks("SUBSCRIBE", subs), *_chunks("UNSUBSCRIBE", unsubs)]
        await conn.send_packed_command(conn.pack_commands(commands), check_health=False)

    def _take_changes(self) -> tuple[list[str], list[str]]:
        """Turn changed channels into Redis names to (un)subscribe, recording them as sent."""
        desired, server, prefix = self.desired, self._server, self._prefix
        subs = [c for c in self._dirty if c in desired and c not in server]
        unsubs = [c for c in self._dirty if c not in desired and c in server]
        self._dirty.clear()
        server.update(subs)
        server.difference_update(unsubs)
        names = [prefix + c for c in subs]
        if not self._probe_sent:
            names.append(self._probe_channel)
            self._probe_sent = True
        return names, [prefix + c for c in unsubs]


class RedisBroker(Broker):
    """Carries publications between processes through Redis pub/sub (see the module docstring).

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
            prefix: prepended to every channel name in Redis.
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
        self._probe_waiter: tuple[bytes, asyncio.Future[None]] | None = None
        self._warned: set[str] = set()  # channels whose invalid payloads were logged
        self._subs = _Subscriptions(prefix, self._probe_channel)

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
        self._client = self._new_client()
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
        await _stop(task)
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
        await _wait(self._subs.request(channels))

    async def unsubscribe(self, channels: Sequence[str]) -> None:
        """Remove ``channels`` from the desired set; while connected, wait until Redis confirms.

        Args:
            channels: channel names without the prefix.
        """
        self._subs.desired.difference_update(channels)
        self._warned.difference_update(channels)
        await _wait(self._subs.request(channels))

    async def publish(
        self,
        channel: str,
        data: bytes,
        *,
        origin: str | None = None,
        history: HistoryOptions | None = None,
        event: str | None = None,
    ) -> PublishResult:
        """Publish ``data`` on ``prefix + channel``; plain JSON, or an envelope with ``origin``.

        Args:
            channel: the channel name without the prefix.
            data: the payload, a JSON text; handed on unchanged.
            origin: the publishing client's id, carried to subscribers as ``from``.

        Returns:
            An empty result: Redis pub/sub keeps no history, so no offset.

        Raises:
            BrokerUnavailable: not connected (raised at once, without network I/O),
                or Redis failed the command.
        """
        if history is not None or event is not None:
            raise NotImplementedError("history and presence events on Redis: not yet")
        client = self._client
        if client is None or self.state is not BrokerState.CONNECTED:
            raise BrokerUnavailable(
                f"cannot publish to {channel!r}: Redis broker at {self._where} is "
                f"{self.state.value}"
            )
        try:
            await client.publish(self._prefix + channel, encode_payload(data, origin))
        except RedisError as exc:
            raise self._publish_failed(channel, exc) from exc
        return PublishResult()

    def _publish_failed(self, channel: str, exc: RedisError) -> BrokerUnavailable:
        if isinstance(exc, RedisConnectionError | RedisTimeoutError):
            self._probe_now.set()  # the subscriber may be just as dead: check it now
        return BrokerUnavailable(
            f"could not publish to {channel!r} through Redis at {self._where}: {exc}"
        )

    # -- connections ---------------------------------------------------------------

    def _new_client(self) -> Redis:
        # No retries: a PUBLISH retried after a timeout could be delivered twice.
        pool = BlockingConnectionPool.from_url(
            self._url,
            max_connections=self._max_connections,
            timeout=self._timeout,
            socket_timeout=self._timeout,
            socket_connect_timeout=self._timeout,
            retry=Retry(NoBackoff(), 0),
            client_name="wshub-pub",
        )
        return Redis.from_pool(pool)

    def _new_subscriber(self) -> AbstractConnection:
        options: dict[str, Any] = {
            "socket_timeout": self._timeout,
            "socket_connect_timeout": self._timeout,
            "retry": Retry(NoBackoff(), 0),
            "client_name": "wshub-sub",
        }
        options.update(parse_url(self._url))
        connection_class = options.pop("connection_class", Connection)
        # RESP2 whatever the URL says: pub/sub messages then arrive as plain replies.
        options["protocol"] = 2
        conn: AbstractConnection = connection_class(**options)
        return conn

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
            await _stop(reader, keeper)

    async def _keep(self) -> None:
        """Resubscribe everything, report CONNECTED, then probe the subscriber until it fails."""
        batch = self._subs.request(())
        async with asyncio.timeout(self._timeout * (1 + len(self._subs.desired) // _CHUNK)):
            await _wait(batch)
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
        """Publish a token on the probe channel; expect it back on the subscriber connection."""
        assert self._client is not None
        token = secrets.token_hex(4).encode()
        waiter = asyncio.get_running_loop().create_future()
        self._probe_waiter = (token, waiter)
        try:
            async with asyncio.timeout(self._probe_timeout):
                await self._client.publish(self._probe_channel, token)
                await waiter
        except (TimeoutError, RedisError) as exc:
            self.probe_failures += 1
            reason = str(exc) or "no echo"
            raise _ProbeFailed(
                f"liveness probe failed within {self._probe_timeout:g}s: {reason}"
            ) from exc
        finally:
            self._probe_waiter = None

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
        while True:
            reply = await read(timeout=math.inf, disconnect_on_error=False)
            kind = reply[0]
            if kind == b"message":
                self._on_message(reply[1], reply[2])
            elif kind == b"subscribe" or kind == b"unsubscribe":
                self._subs.on_ack()

    def _on_message(self, name: bytes, payload: bytes) -> None:
        if name == self._probe_name:
            waiter = self._probe_waiter
            if waiter is not None and payload == waiter[0]:
                _settle(waiter[1])
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


async def _wait(batch: asyncio.Future[None] | None) -> None:
    # Shielded: the batch is shared, one cancelled caller must not cancel it for others.
    if batch is not None:
        await asyncio.shield(batch)


async def _stop(*tasks: asyncio.Task[None] | None) -> None:
    """Cancel tasks and wait for them to end; their failures were handled where they arose."""
    live = [task for task in tasks if task is not None]
    for task in live:
        task.cancel()
    if live:
        await asyncio.wait(live)
    for task in live:
        if not task.cancelled():
            task.exception()
