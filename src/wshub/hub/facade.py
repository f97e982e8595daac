"""Hub: the registries (channel -> connections, user -> connections), publish and fan-out.

Publishing goes through the broker even within one process, so that one code
path serves one worker and fifty: `Hub.publish` encodes the data once, the
broker hands the bytes to `Hub.on_publication` in every subscribed process,
and there each local member gets the same frame enqueued. Fan-out is a plain
synchronous loop: no task, future or socket write per recipient.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
import secrets
import time
import weakref
from collections.abc import AsyncIterator, Callable, Iterable
from types import TracebackType
from typing import Any

import orjson
from starlette.exceptions import WebSocketException
from starlette.websockets import WebSocket, WebSocketDisconnect

from wshub.brokers import Broker, BrokerState, Publication, PublishResult, broker_from_url
from wshub.brokers.base import HistoryOptions
from wshub.brokers.history import History, HistoryPage, recovered
from wshub.brokers.presence import ClientInfo, Presence, PresenceTracker
from wshub.core.buckets import LATENCY_BOUNDS, Buckets
from wshub.core.channels import (
    BROADCAST_CHANNEL,
    MAX_CHANNEL_LENGTH,
    USER_CHANNEL_PREFIX,
    is_valid_channel,
    user_channel,
)
from wshub.core.codecs import CODECS, RAW_JSON, Codec, encode_data
from wshub.core.errors import CloseCode, ErrorCode, ProtocolError, PublishError
from wshub.core.protocol import PING, publication_object
from wshub.core.sendqueue import Frame, OverflowPolicy, SendQueue
from wshub.hub.connection import Connection, ConnectionState
from wshub.hub.permissions import Namespace, Permissions, PublishHook, SubscribeHook
from wshub.ops.logs import install_redaction, log_connected, log_disconnected, log_refused
from wshub.server.auth import (
    ANONYMOUS,
    Authenticator,
    Identity,
    authenticator_from_settings,
    websocket_identity,
)
from wshub.settings import Settings

logger = logging.getLogger("wshub.hub")

_RUNNING: weakref.WeakSet[Hub] = weakref.WeakSet()

#: The ``origin`` marking a publication on a ``#user:`` channel as a disconnect command
#: (client ids are hex, so no client can be it); see `Hub.disconnect_user`.
DISCONNECT_ORIGIN = "#disconnect"
# Close codes a server may send besides the private range 3000-4999 (RFC 6455, 7.4.1).
_SENDABLE_CODES = frozenset({1000, 1001, 1008, 1011, 1012, 1013})


def sendable_close_code(code: int) -> bool:
    """Tell whether a server may close with ``code`` (1000, 1001, 1008, 1011-1013, 3000-4999)."""
    return code in _SENDABLE_CODES or 3000 <= code <= 4999


# Publications timed for the latency histogram and not back yet, at most.
_MAX_TIMED_PUBLISHES = 256  # each holds its payload: bounded memory if some never return


def running_hubs() -> list[Hub]:
    """Return the hubs started in this process and not closed yet (for the server's shutdown)."""
    return list(_RUNNING)


@dataclasses.dataclass
class HubStats:
    """Counters since the hub started.

    Attributes:
        connections: connections accepted.
        publications: publications received from the broker.
        deliveries: frames enqueued to local connections by fan-out.
        overflows: connections closed with 4008 because their queue overflowed.
        dropped: frames dropped by the drop_oldest / drop_newest policies (closed connections).
        refused: connections closed with 1013 by the connection limits.
        auth_failures: connections closed with 4001 (bad, missing or expired credentials).
        rate_limited: client frames refused by the rate limit.
        frames_received: WebSocket messages received from clients.
        frames_sent: frames sent to clients (several may share one packed message);
            added by each writer when it runs out of work, so a busy one lags a little.
        bytes_sent: encoded bytes of the frames sent, counted alike.
        closes: connections ended, by close code (refused ones included).
        drops: ``dropped``, by overflow policy (``drop_oldest`` / ``drop_newest``).
        auth_reasons: ``auth_failures``, by reason (the close reason sent).
        publish_latency: seconds from `Hub.publish` in this process to the publication
            being enqueued for its local members (publications to channels with local
            members only).
    """

    connections: int = 0
    publications: int = 0
    deliveries: int = 0
    overflows: int = 0
    dropped: int = 0
    refused: int = 0
    auth_failures: int = 0
    rate_limited: int = 0
    frames_received: int = 0
    frames_sent: int = 0
    bytes_sent: int = 0
    closes: collections.Counter[int] = dataclasses.field(default_factory=collections.Counter)
    drops: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    auth_reasons: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    publish_latency: Buckets = dataclasses.field(default_factory=lambda: Buckets(LATENCY_BOUNDS))

    def auth_failed(self, reason: str) -> None:
        """Count one authentication failure with its close reason."""
        self.auth_failures += 1
        self.auth_reasons[reason] += 1


class Hub:
    """The connection registry and router of one process.

    Args:
        broker: a `Broker`, or a broker URL; defaults to ``settings.broker`` (``memory://``).
        settings: the settings; by default read from ``WSHUB_*`` environment variables.
        auth: the authenticator; by default a JWT one when the settings name a key,
            else none (every connection is anonymous, as in the seed tutorial).
        namespaces: channel rules per namespace (see `wshub.permissions`).
        can_subscribe, can_publish: async permission hooks run after the rules.
        **overrides: settings fields to override, e.g. ``queue_max_messages=100``.

    Use ``FastAPI(lifespan=hub.lifespan)`` so the broker starts and stops with the app.
    """

    def __init__(
        self,
        broker: Broker | str | None = None,
        *,
        settings: Settings | None = None,
        auth: Authenticator | None = None,
        namespaces: dict[str, Namespace] | None = None,
        can_subscribe: SubscribeHook | None = None,
        can_publish: PublishHook | None = None,
        **overrides: Any,
    ) -> None:
        if settings is None:
            settings = Settings(**overrides)
        elif overrides:
            settings = settings.model_copy(update=overrides)
        self.settings = settings
        if broker is None or isinstance(broker, str):
            broker = broker_from_url(
                broker or settings.broker,
                prefix=settings.redis_prefix,
                probe_interval=settings.redis_probe_interval,
            )
        self.broker = broker
        self.auth = auth if auth is not None else authenticator_from_settings(settings)
        self.permissions = Permissions(
            namespaces, can_subscribe=can_subscribe, can_publish=can_publish
        )
        self.broker_state = BrokerState.CONNECTING
        self.stats = HubStats()
        self._connections: dict[str, Connection] = {}
        self._heartbeats: dict[Connection, None] = {}
        self._expiring: dict[Connection, None] = {}
        self._channels: dict[str, dict[Connection, None]] = {}
        self._users: dict[str, dict[Connection, None]] = {}
        self._subscribed: set[str] = set()
        self._locks: dict[str, tuple[asyncio.Lock, list[int]]] = {}
        self._started = False
        self._draining = False
        self._heartbeat_task: asyncio.Task[None] | None = None
        self._dirty: list[Connection] = []
        self._presence = PresenceTracker(broker, settings.presence_ttl)
        self._presence_task: asyncio.Task[None] | None = None
        self._emptied: asyncio.Event | None = None
        # (channel, payload) -> perf_counter() at publish, until it comes back for fan-out.
        self._publish_started: dict[tuple[str, bytes], float] = {}
        # Publishes since writers last got to run, and whether a recipient's queue is filling.
        self._unyielded = 0
        self._backlogged = False

    # -- life -------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the broker and the heartbeat. Idempotent."""
        if self._started:
            return
        self._started = True
        self._draining = False
        self._emptied = asyncio.Event()
        install_redaction([self.auth.query_param] if self.auth is not None else [])
        await self.broker.start(self)
        self._subscribed.add(BROADCAST_CHANNEL)
        await self.broker.subscribe([BROADCAST_CHANNEL])
        loop = asyncio.get_running_loop()
        self._heartbeat_task = loop.create_task(self._heartbeat_loop(), name="wshub-heartbeat")
        if self._presence.enabled:
            self._presence_task = loop.create_task(self._presence_loop(), name="wshub-presence")
        _RUNNING.add(self)

    async def close(self) -> None:
        """Close every connection (1001, after draining), then stop the broker. Idempotent."""
        if not self._started:
            return
        await self.shutdown_connections()
        for task in (self._heartbeat_task, self._presence_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self.broker.close()
        self._subscribed.clear()
        self._started = False
        _RUNNING.discard(self)

    @contextlib.asynccontextmanager
    async def lifespan(self, app: object = None) -> AsyncIterator[None]:
        """FastAPI/Starlette lifespan: ``FastAPI(lifespan=hub.lifespan)``."""
        await self.start()
        try:
            yield
        finally:
            await self.close()

    def mark_dirty(self, conn: Connection) -> None:
        """Flush ``conn`` straight to its transport at the end of this loop iteration.

        One ``call_soon`` per iteration for all connections: every publish of the
        iteration is enqueued first, so each connection gets one packed write.
        """
        dirty = self._dirty
        dirty.append(conn)
        if len(dirty) == 1:
            asyncio.get_running_loop().call_soon(self._flush_dirty)

    def _flush_dirty(self) -> None:
        dirty, self._dirty = self._dirty, []
        for conn in dirty:
            conn.flush()

    async def shutdown_connections(
        self,
        code: int = CloseCode.GOING_AWAY,
        reason: str = "server shutting down",
        drain_timeout: float | None = None,
    ) -> None:
        """Refuse new connections and close every open one after its queue drains.

        A connection whose handler is still running ``drain_timeout`` + 1 s later (a
        handler that never returns) is cancelled, so that it cannot hold up shutdown.

        Args:
            code: the close code, 1001 by default.
            reason: the close reason.
            drain_timeout: seconds to wait for queues to drain; defaults to ``shutdown_timeout``.
        """
        self._draining = True
        if not self._connections:
            return
        timeout = self.settings.shutdown_timeout if drain_timeout is None else drain_timeout
        for conn in list(self._connections.values()):
            conn.close(code, reason, timeout=timeout)
        assert self._emptied is not None
        try:
            await asyncio.wait_for(self._emptied.wait(), timeout + 1.0)
            return
        except TimeoutError:
            stuck = list(self._connections.values())
        logger.warning("%d handler(s) still running after shutdown: cancelled", len(stuck))
        for conn in stuck:
            conn.cancel()
        try:
            await asyncio.wait_for(self._emptied.wait(), 1.0)
        except TimeoutError:
            logger.warning("%d connection(s) still open after shutdown", len(self._connections))

    @property
    def ready(self) -> bool:
        """True when the hub accepts connections and its broker is connected."""
        return self._started and not self._draining and self.broker_state is BrokerState.CONNECTED

    # -- connections ----------------------------------------------------------------------

    def connect(
        self,
        websocket: WebSocket,
        *,
        identity: Identity | None = None,
        user: str | None = None,
        codec: Codec = RAW_JSON,
        subprotocol: str | None = None,
        heartbeat: bool = False,
        reader: bool = True,
        queue_max_messages: int | None = None,
        queue_max_bytes: int | None = None,
        overflow_policy: OverflowPolicy | None = None,
    ) -> ConnectContext:
        """Accept a WebSocket and manage it for the duration of an ``async with`` block.

        The block gets the `Connection`. On entry the socket is accepted, registered
        and its writer started; on exit, for any reason, it is flushed, closed and
        removed from every registry. A handler that returns closes with 1000, one that
        raises closes with 1011 (the exception propagates).

        Args:
            websocket: the Starlette/FastAPI WebSocket (accepted already or not).
            identity: who the connection belongs to (from `wshub.auth`); None leaves
                it anonymous until `identify` is called.
            user: shorthand for ``identity=Identity(user)``.
            codec: how frames are encoded; library mode sends data as JSON text.
            subprotocol: the subprotocol to accept with.
            heartbeat: send ``{"op":"ping"}`` and expect pongs (protocol endpoint).
            reader: read the socket in a task of its own, for ``conn.iter_*()``.
            queue_max_messages, queue_max_bytes, overflow_policy: per-connection
                overrides of the hub's send-queue settings.
        """
        s = self.settings
        queue = SendQueue(
            s.queue_max_messages if queue_max_messages is None else queue_max_messages,
            s.queue_max_bytes if queue_max_bytes is None else queue_max_bytes,
            s.overflow_policy if overflow_policy is None else overflow_policy,
        )
        if identity is None and user is not None:
            identity = Identity(user)
        return ConnectContext(
            self, websocket, identity, codec, subprotocol, heartbeat, reader, queue
        )

    async def _attach(
        self,
        conn: Connection,
        subprotocol: str | None,
        heartbeat: bool,
        identity: Identity | None,
    ) -> None:
        if not self._started:
            raise RuntimeError(
                "the hub is not started: create the app with FastAPI(lifespan=hub.lifespan)"
            )
        await conn._open(subprotocol)
        if self._draining:
            conn.close(CloseCode.GOING_AWAY, "server shutting down")
            return
        if len(self._connections) >= self.settings.max_connections:
            self.stats.refused += 1
            conn.close(CloseCode.TRY_AGAIN_LATER, "too many connections")
            return
        self.stats.connections += 1
        self._connections[conn.id] = conn
        assert self._emptied is not None
        self._emptied.clear()
        if heartbeat:
            conn.heartbeat = True
            conn.ping_due = asyncio.get_running_loop().time() + self.settings.ping_interval
            self._heartbeats[conn] = None
        if identity is not None:
            await self.identify(conn, identity)
        if conn.state is ConnectionState.OPEN:
            log_connected(conn)

    async def identify(self, conn: Connection, identity: Identity) -> bool:
        """Bind an open connection to the identity it authenticated as.

        Registers it for `send_to_user` and for expiry (4001 "token expired" at
        ``identity.expires_at``), and applies ``max_connections_per_user``.

        Returns:
            False when the connection was closed instead (1013: too many connections
            for this user) or is not open.
        """
        if conn.state is not ConnectionState.OPEN:
            return False
        conn.info = identity.info
        self.set_expiry(conn, identity.expires_at)
        if identity.user is None:
            return True
        members = self._users.setdefault(identity.user, {})
        if len(members) >= self.settings.max_connections_per_user:
            self.stats.refused += 1
            conn.close(CloseCode.TRY_AGAIN_LATER, "too many connections for this user")
            return False
        conn.user = identity.user
        members[conn] = None
        if len(members) == 1:
            await self._sync_broker(user_channel(identity.user))
        return True

    def set_expiry(self, conn: Connection, expires_at: float | None) -> None:
        """Close ``conn`` with 4001 "token expired" at ``expires_at`` (Unix time; None: never)."""
        conn.expires_at = expires_at
        if expires_at is None:
            self._expiring.pop(conn, None)
        else:
            self._expiring[conn] = None

    async def _detach(self, conn: Connection) -> None:
        self.stats.closes[conn.close_code or CloseCode.NORMAL] += 1
        if self._connections.pop(conn.id, None) is None:
            # Never registered: refused by a limit (1013) or while shutting down (1001).
            log_refused(conn.websocket, conn.close_code or CloseCode.NORMAL, conn.close_reason)
            return
        log_disconnected(conn)
        if conn.queue.dropped:
            self.stats.drops[conn.queue.policy.value] += conn.queue.dropped
        self._heartbeats.pop(conn, None)
        self._expiring.pop(conn, None)
        self.stats.dropped += conn.queue.dropped
        channels = list(conn.channels)
        emptied = [ch for ch in channels if self._remove_member(self._channels, ch, conn)]
        conn.channels.clear()
        if conn.user is not None and self._remove_member(self._users, conn.user, conn):
            emptied.append(user_channel(conn.user))
        for channel in channels:
            await self._presence_change(conn, channel, joined=False)
        for channel in emptied:
            await self._sync_broker(channel)
        if not self._connections and self._emptied is not None:
            self._emptied.set()

    @staticmethod
    def _remove_member(
        registry: dict[str, dict[Connection, None]], key: str, conn: Connection
    ) -> bool:
        members = registry.get(key)
        if members is None:
            return False
        members.pop(conn, None)
        if members:
            return False
        del registry[key]
        return True

    async def authenticate(self, websocket: WebSocket) -> Identity:
        """FastAPI dependency authenticating a library-mode endpoint's handshake.

        ``who: Identity = Depends(hub.authenticate)``, then ``hub.connect(ws,
        identity=who)``. Without an authenticator every connection is anonymous;
        with one, a missing or bad token accepts and closes with 4001 before the
        endpoint runs (see `wshub.auth.websocket_identity`).
        """
        if self.auth is None:
            return ANONYMOUS
        try:
            return await websocket_identity(self.auth)(websocket)  # type: ignore[no-any-return]
        except WebSocketException as exc:
            # Refused before `connect`: no Connection, so the close is counted and logged here.
            self.stats.auth_failed(exc.reason)
            self.stats.closes[exc.code] += 1
            log_refused(websocket, exc.code, exc.reason)
            raise

    @property
    def connection_count(self) -> int:
        """Connections open in this process."""
        return len(self._connections)

    @property
    def channel_count(self) -> int:
        """Channels with at least one local member."""
        return len(self._channels)

    def connections(self) -> list[Connection]:
        """The connections open in this process."""
        return list(self._connections.values())

    def channel_counts(self) -> dict[str, int]:
        """The channels with local members, each with its number of local members."""
        return {channel: len(members) for channel, members in self._channels.items()}

    def subscribers(self, channel: str) -> list[Connection]:
        """The local members of ``channel``."""
        return list(self._channels.get(channel, ()))

    def user_connections(self, user: str) -> list[Connection]:
        """The local connections of ``user``."""
        return list(self._users.get(user, ()))

    # -- subscriptions ---------------------------------------------------------------------

    async def subscribe(self, conn: Connection, channel: str) -> bool:
        """Make ``conn`` a member of ``channel``; subscribe the broker for its first member.

        Returns:
            False when ``conn`` was already a member or is closing.

        Raises:
            ProtocolError: ``bad_request`` for an invalid name or past ``max_subscriptions``.
        """
        if not is_valid_channel(channel):
            raise ProtocolError(
                ErrorCode.BAD_REQUEST, f"invalid channel name (1 to {MAX_CHANNEL_LENGTH} chars)"
            )
        if conn.state is not ConnectionState.OPEN or channel in conn.channels:
            return False
        limit = self.settings.max_subscriptions
        if len(conn.channels) >= limit:
            raise ProtocolError(ErrorCode.BAD_REQUEST, f"subscription limit reached ({limit})")
        conn.channels.add(channel)
        self._channels.setdefault(channel, {})[conn] = None
        if channel not in self._subscribed:
            await self._sync_broker(channel)
        await self._presence_change(conn, channel, joined=True)
        return True

    async def subscribe_and_recover(
        self,
        conn: Connection,
        channel: str,
        since: int | None,
        epoch: str | None,
        reply: Callable[[dict[str, Any]], None],
    ) -> None:
        """Subscribe, then answer with the channel's position and what ``conn`` missed.

        Live publications arriving while the history is read are held back and
        enqueued right after ``reply`` is called, skipping those the reply already
        carries: the hand-over from recovered to live has no gap and no duplicate.

        Args:
            conn: the connection.
            channel: the channel.
            since: the last offset the client saw, or None (no recovery).
            epoch: the epoch that offset belongs to.
            reply: called once, synchronously, with the subscribe result
                (``offset``, ``epoch``, and with ``since``: ``recovered``, ``messages``).

        Raises:
            ProtocolError: as `subscribe`.
            BrokerUnavailable: the history could not be read (the subscribe is undone).
        """
        if not self.keeps_history(channel):
            await self.subscribe(conn, channel)
            reply({} if since is None else {"recovered": False, "messages": []})
            return
        assert isinstance(self.broker, History)
        held: list[tuple[int | None, Frame]] = []
        conn.recovering[channel] = held
        try:
            await self.subscribe(conn, channel)
            # since=0 (saw nothing yet) asks for everything: only None means position only.
            limit = None if since is not None else 0
            page = await self.broker.history(channel, since=since, limit=limit)
        except BaseException:
            conn.recovering.pop(channel, None)
            await self.unsubscribe(conn, channel)
            raise
        # No await from here on: the reply and the held frames go out in this order.
        del conn.recovering[channel]
        reply(self._recovery_result(channel, page, since, epoch))
        for offset, frame in held:
            if offset is None or offset > page.position.offset:
                conn.enqueue(frame)

    @staticmethod
    def _recovery_result(
        channel: str, page: HistoryPage, since: int | None, epoch: str | None
    ) -> dict[str, Any]:
        result: dict[str, Any] = {"offset": page.position.offset, "epoch": page.position.epoch}
        if since is not None:
            ok = recovered(page, since, epoch)
            result["recovered"] = ok
            publications = page.publications if ok else []
            result["messages"] = [publication_object(channel, p) for p in publications]
        return result

    async def _presence_change(self, conn: Connection, channel: str, joined: bool) -> None:
        space = self.permissions.namespace(channel)
        if space is None or not (space.presence or space.join_leave):
            return
        entry = ClientInfo(conn.id, conn.user, conn.info)
        change = self._presence.join if joined else self._presence.leave
        await change(channel, entry, space.presence, space.join_leave)

    async def unsubscribe(self, conn: Connection, channel: str) -> bool:
        """Remove ``conn`` from ``channel``; unsubscribe the broker when it was the last member.

        Returns:
            False when ``conn`` was not a member.
        """
        if channel not in conn.channels:
            return False
        conn.channels.discard(channel)
        if self._remove_member(self._channels, channel, conn):
            await self._sync_broker(channel)
        await self._presence_change(conn, channel, joined=False)
        return True

    # -- history and presence ---------------------------------------------------------

    def history_options(self, channel: str) -> HistoryOptions | None:
        """The history ``channel`` keeps by its namespace, or None."""
        if channel[0] == "#":
            return None
        space = self.permissions.namespace(channel)
        if space is None or space.history_size <= 0:
            return None
        return HistoryOptions(space.history_size, space.history_ttl)

    def keeps_history(self, channel: str) -> bool:
        """Whether ``channel`` keeps history (its namespace says so and the broker can)."""
        return isinstance(self.broker, History) and self.history_options(channel) is not None

    async def history(
        self, channel: str, *, since: int | None = None, limit: int | None = None
    ) -> HistoryPage:
        """Read ``channel``'s history (server side; the ``history`` op uses it too).

        Args:
            channel: the channel.
            since: publications after this offset, oldest first; None for the newest.
            limit: at most this many.

        Raises:
            ProtocolError: ``bad_request`` when the channel keeps no history.
            BrokerUnavailable: the broker cannot be read.
        """
        if not self.keeps_history(channel):
            raise ProtocolError(ErrorCode.BAD_REQUEST, f"{channel!r} keeps no history")
        assert isinstance(self.broker, History)
        return await self.broker.history(channel, since=since, limit=limit)

    async def presence(self, channel: str) -> dict[str, ClientInfo]:
        """Who is in ``channel``, in every process, keyed by client id.

        Raises:
            ProtocolError: ``bad_request`` when the channel tracks no presence.
            BrokerUnavailable: the broker cannot be read.
        """
        space = self.permissions.namespace(channel)
        if space is None or not space.presence or not isinstance(self.broker, Presence):
            raise ProtocolError(ErrorCode.BAD_REQUEST, f"{channel!r} tracks no presence")
        return await self.broker.presence(channel)

    async def _presence_loop(self) -> None:
        while True:
            await asyncio.sleep(self._presence.ttl / 3)
            await self._presence.refresh()

    def _wanted(self, channel: str) -> bool:
        if channel == BROADCAST_CHANNEL:
            return self._started
        if channel.startswith(USER_CHANNEL_PREFIX):
            return channel[len(USER_CHANNEL_PREFIX) :] in self._users
        return channel in self._channels

    async def _sync_broker(self, channel: str) -> None:
        """Bring the broker's subscription to ``channel`` in line with local membership.

        Calls for one channel are serialised by a lock that lives only while in use,
        so a quick leave-and-rejoin can never leave the broker unsubscribed.
        """
        entry = self._locks.get(channel)
        if entry is None:
            entry = self._locks[channel] = (asyncio.Lock(), [0])
        entry[1][0] += 1
        try:
            async with entry[0]:
                wanted, have = self._wanted(channel), channel in self._subscribed
                if wanted and not have:
                    await self.broker.subscribe([channel])
                    self._subscribed.add(channel)
                elif have and not wanted:
                    self._subscribed.discard(channel)
                    await self.broker.unsubscribe([channel])
        finally:
            entry[1][0] -= 1
            if not entry[1][0]:
                del self._locks[channel]

    # -- publishing ------------------------------------------------------------------------

    async def publish(
        self, channel: str, data: object, *, origin: str | None = None
    ) -> PublishResult:
        """Publish ``data`` to every member of ``channel`` in every process.

        Args:
            channel: the channel name.
            data: any JSON-representable value; encoded once, here.
            origin: the publishing connection's id, sent to subscribers as ``from``.

        Returns:
            The broker's result (the offset, when the channel keeps history).

        Raises:
            PublishError: JSON cannot represent ``data``.
            ValueError: the channel name is invalid.
            BrokerUnavailable: the broker is down; nobody received the publication.
        """
        if not is_valid_channel(channel):
            raise ValueError(f"invalid channel name {channel!r}")
        return await self._publish(channel, data, origin)

    async def send_to_user(self, user: str, data: object) -> PublishResult:
        """Send ``data`` to every connection of ``user``, in every process.

        Protocol clients receive it as a message on channel ``#user:<user>``.
        """
        return await self._publish(user_channel(user), data, None)

    async def broadcast(self, data: object) -> PublishResult:
        """Send ``data`` to every connection of every process (protocol channel ``#all``)."""
        return await self._publish(BROADCAST_CHANNEL, data, None)

    async def _publish(self, channel: str, data: object, origin: str | None) -> PublishResult:
        await self._yield_to_writers()
        try:
            payload = encode_data(data)
        except TypeError as exc:
            raise PublishError(f"data cannot be encoded as JSON: {exc}") from None
        history = self.history_options(channel)
        timed = self._time_publish(channel, payload)
        try:
            return await self.broker.publish(channel, payload, origin=origin, history=history)
        except BaseException:
            if timed is not None:
                self._publish_started.pop(timed, None)
            raise

    async def _yield_to_writers(self) -> None:
        """Let the writers run before this publish if a queue is half full, or every 64.

        Fan-out only enqueues, and the memory broker never awaits: a tight publish loop
        would otherwise never let writers run, and overflow (4008) the queues of clients
        however fast they read. Yielding before every publish would cost one WebSocket
        message per frame instead: this way a burst is packed into few messages.
        """
        self._unyielded += 1
        if self._backlogged or self._unyielded >= 64:
            self._backlogged, self._unyielded = False, 0
            await asyncio.sleep(0)

    def _time_publish(self, channel: str, payload: bytes) -> tuple[str, bytes] | None:
        """Note when a publication to a channel with local members starts (for its latency)."""
        if channel not in self._subscribed:
            return None  # it will not come back here
        started = self._publish_started
        if len(started) >= _MAX_TIMED_PUBLISHES:
            started.clear()  # publications lost on the way (a broker outage) must not pile up
        key = (channel, payload)
        started[key] = time.perf_counter()
        return key

    async def disconnect_user(
        self, user: str, code: int = CloseCode.NORMAL, reason: str = ""
    ) -> None:
        """Close every connection of ``user``, in every process sharing the broker.

        The command travels on the user's own internal channel, so it reaches exactly
        the processes where ``user`` has connections; each closes them after their
        queues drain. It returns once the broker took the command, not once the
        connections are closed.

        Args:
            user: the user id.
            code: the close code (1000, 1001, 1008, 1011, 1013 or 3000-4999).
            reason: the close reason, cut to 123 bytes.

        Raises:
            ValueError: ``code`` is not one a server may send.
            BrokerUnavailable: the broker is down; nothing was closed.
        """
        if not sendable_close_code(code):
            raise ValueError(f"close code {code} cannot be sent by a server")
        command = orjson.dumps({"code": code, "reason": reason})
        await self.broker.publish(user_channel(user), command, origin=DISCONNECT_ORIGIN)

    def _disconnect(self, members: Iterable[Connection] | None, command: bytes) -> None:
        try:
            fields = orjson.loads(command)
            code, reason = int(fields["code"]), str(fields.get("reason", ""))
        except (ValueError, TypeError, KeyError):
            code, reason = 0, ""
        if not sendable_close_code(code):
            logger.warning("ignored a malformed disconnect command: %.100r", command)
            return
        for conn in list(members or ()):
            conn.close(code, reason)

    def on_publication(self, channel: str, publication: Publication) -> None:
        """Fan a publication out to local members (`BrokerEvents`); never blocks."""
        self.stats.publications += 1
        started = (
            self._publish_started.pop((channel, publication.data), None)
            if self._publish_started
            else None
        )
        members: Iterable[Connection] | None
        if channel[0] != "#":
            members = self._channels.get(channel)
        elif channel == BROADCAST_CHANNEL:
            members = self._connections.values()
        else:
            members = self._users.get(channel[len(USER_CHANNEL_PREFIX) :])
            if publication.origin == DISCONNECT_ORIGIN:
                self._disconnect(members, publication.data)
                return
        if not members:
            return
        # One frame per codec, built on first use: encoded once, not once per recipient.
        frames: list[Frame | None] = [None] * len(CODECS)
        built = [False] * len(CODECS)
        count = 0
        for conn in members:
            index = conn.codec.index
            if not built[index]:
                frames[index], built[index] = conn.codec.message(channel, publication), True
            frame = frames[index]
            if frame is None:
                continue  # this codec's clients don't get this kind of publication
            if conn.recovering and channel in conn.recovering:
                conn.recovering[channel].append((publication.offset, frame))
                continue
            conn.enqueue(frame)
            count += 1
            queue = conn.queue
            if len(queue) * 2 > queue.max_messages or queue.bytes * 2 > queue.max_bytes:
                self._backlogged = True  # the next publish lets writers run first
        self.stats.deliveries += count
        if started is not None:
            self.stats.publish_latency.observe(time.perf_counter() - started)

    def on_state(self, state: BrokerState) -> None:
        """Record the broker's state (`BrokerEvents`)."""
        if state is not self.broker_state:
            logger.info("broker %s", state.value)
        self.broker_state = state

    # -- heartbeat -------------------------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        s = self.settings
        tick = min(1.0, s.ping_interval / 4, s.pong_timeout / 4)
        pings = [codec.encode(PING) for codec in CODECS]
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(tick)
            now = loop.time()
            for conn in self._heartbeats:
                if conn.pong_deadline is not None:
                    if now >= conn.pong_deadline:
                        conn.close(CloseCode.HEARTBEAT_TIMEOUT, "heartbeat timeout", drain=False)
                elif now >= conn.ping_due:
                    conn.enqueue(pings[conn.codec.index], control=True)
                    conn.pong_deadline = now + s.pong_timeout
                    conn.ping_due = now + s.ping_interval
            self._expire(time.time())

    def _expire(self, now: float) -> None:
        expired = [c for c in self._expiring if c.expires_at is not None and c.expires_at <= now]
        for conn in expired:
            del self._expiring[conn]
            self.stats.auth_failed("token expired")
            conn.close(CloseCode.UNAUTHORIZED, "token expired", drain=False)


class ConnectContext:
    """The ``async with hub.connect(ws) as conn`` block; see `Hub.connect`."""

    def __init__(
        self,
        hub: Hub,
        websocket: WebSocket,
        identity: Identity | None,
        codec: Codec,
        subprotocol: str | None,
        heartbeat: bool,
        reader: bool,
        queue: SendQueue,
    ) -> None:
        self._hub = hub
        self._identity = identity
        self._subprotocol = subprotocol
        self._heartbeat = heartbeat
        self._reader = reader
        self.connection = Connection(
            hub, websocket, id=secrets.token_hex(8), user=None, codec=codec, queue=queue
        )

    async def __aenter__(self) -> Connection:
        conn = self.connection
        await self._hub._attach(conn, self._subprotocol, self._heartbeat, self._identity)
        conn._handler = asyncio.current_task()
        if self._reader:
            conn.start_reader()
        else:
            conn._owner = asyncio.current_task()
        return conn

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        conn = self.connection
        suppress = False
        if isinstance(exc, asyncio.CancelledError) and conn.aborted:
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            suppress, exc = True, None
        elif isinstance(exc, WebSocketDisconnect):
            suppress, exc = True, None
        try:
            await conn._finish(exc)
        finally:
            await self._hub._detach(conn)
        if exc is not None and not isinstance(exc, asyncio.CancelledError):
            logger.error("connection %s: handler raised %r; closed with 1011", conn.id, exc)
        return suppress
