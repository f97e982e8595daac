"""Lifecycle: a hub's start and close, and each connection's life inside it.

- start and close: the broker, the broadcast subscription, the background loops;
- attach and detach: a connection enters the registry under the limits, and leaves
  every registry, whatever ended it;
- two connection pools: a connection attached as `UNAUTHENTICATED` (the protocol
  endpoint waiting for a ``connect`` frame) counts against ``max_unauthenticated``,
  not ``max_connections``, until `identify` moves it to the main pool, so that
  sockets that never authenticate cannot take an authenticated user's slot;
- the heartbeat loop (pings, pong deadlines: 4009) and token expiry (4001);
- shutdown: refuse new connections, drain every queue, close with 1001, and cancel
  handlers that never return, so that shutdown is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from wshub.brokers.base import Broker, BrokerEvents
from wshub.core.channels import user_channel
from wshub.core.codecs import CODECS
from wshub.core.errors import CloseCode
from wshub.core.protocol import PING
from wshub.core.redaction import install_redaction
from wshub.hub.connection import Connection, ConnectionState
from wshub.hub.connection_log import log_connected, log_disconnected, log_refused
from wshub.hub.identity import Identity
from wshub.hub.membership import Membership
from wshub.hub.presence import PresenceTracker
from wshub.hub.registry import Registry
from wshub.hub.stats import HubStats
from wshub.settings import Settings

logger = logging.getLogger("wshub.hub")

#: The ``identity`` to attach a connection with while it has yet to authenticate (see
#: `Lifecycle.attach`). Compared by identity (``is``): it equals `Identity()`.
UNAUTHENTICATED = Identity()

#: The close reasons of the two connection caps (both with 1013).
TOO_MANY_CONNECTIONS = "too many connections"
TOO_MANY_UNAUTHENTICATED = "too many unauthenticated connections"


class Lifecycle:
    """Start, close and shutdown of one hub, and its connections' attach and detach.

    Args:
        settings: the hub's settings.
        broker: the hub's broker.
        registry: the hub's maps.
        membership: channel membership, emptied for each connection that ends.
        presence: the presence tracker, refreshed every ttl/3.
        stats: the hub's counters.

    Attributes:
        started: between `start` and `close`.
        draining: new connections are refused (shutting down).
        heartbeats: the connections that get app-level pings.
        expiring: the connections whose credentials expire.
        authenticated: the main pool, capped by ``max_connections``: every registered
            connection not attached as `UNAUTHENTICATED`, and those that identified since.
        unauthenticated: the connections attached as `UNAUTHENTICATED` and not
            identified yet, oldest first, capped by ``max_unauthenticated``.
    """

    def __init__(
        self,
        settings: Settings,
        broker: Broker,
        registry: Registry,
        membership: Membership,
        presence: PresenceTracker,
        stats: HubStats,
    ) -> None:
        self.settings = settings
        self.broker = broker
        self.registry = registry
        self.membership = membership
        self.presence = presence
        self.stats = stats
        self.started = False
        self.draining = False
        self.heartbeats: dict[Connection, None] = {}
        self.expiring: dict[Connection, None] = {}
        self.authenticated: dict[Connection, None] = {}
        self.unauthenticated: dict[Connection, None] = {}
        self._emptied: asyncio.Event | None = None
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self, events: BrokerEvents, secret_params: list[str]) -> None:
        """Start the broker and the background loops; see `Hub.start`."""
        self.started, self.draining = True, False
        self._emptied = asyncio.Event()
        install_redaction(secret_params)
        await self.broker.start(events)
        await self.membership.start()
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._heartbeat_loop(), name="wshub-heartbeat")]
        if self.presence.enabled:
            self._tasks.append(loop.create_task(self._presence_loop(), name="wshub-presence"))

    async def close(self) -> None:
        """Close every connection, stop the loops and the broker; see `Hub.close`."""
        await self.shutdown_connections()
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        await self.broker.close()
        self.membership.subscribed.clear()
        self.started = False

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
        self.draining = True
        connections = self.registry.connections
        if not connections:
            return
        timeout = self.settings.shutdown_timeout if drain_timeout is None else drain_timeout
        for conn in list(connections.values()):
            conn.close(code, reason, timeout=timeout)
        assert self._emptied is not None
        try:
            await asyncio.wait_for(self._emptied.wait(), timeout + 1.0)
            return
        except TimeoutError:
            stuck = list(connections.values())
        logger.warning("%d handler(s) still running after shutdown: cancelled", len(stuck))
        for conn in stuck:
            conn.cancel()
        try:
            await asyncio.wait_for(self._emptied.wait(), 1.0)
        except TimeoutError:
            logger.warning("%d connection(s) still open after shutdown", len(connections))

    async def attach(
        self,
        conn: Connection,
        subprotocol: str | None,
        heartbeat: bool,
        identity: Identity | None,
        refusal: str | None = None,
    ) -> None:
        """Accept ``conn`` and register it, or close it at a limit (1013) or at shutdown.

        Every accept names ``subprotocol``, refusals included, so that browsers see
        the close code. With ``refusal`` (no offered subprotocol is supported), the
        connection is closed at once with 4002 and that reason.

        With ``identity`` `UNAUTHENTICATED` the connection joins the unauthenticated
        pool: at ``max_unauthenticated`` its oldest member is closed with 1013 "too
        many unauthenticated connections" to make room (a flood of silent sockets
        churns through the pool instead of locking newcomers out). Otherwise it joins
        the main pool, where past ``max_connections`` the newcomer gets 1013 "too many
        connections"; unauthenticated sockets never count there.
        """
        if not self.started:
            raise RuntimeError(
                "the hub is not started: create the app with FastAPI(lifespan=hub.lifespan)"
            )
        await conn._open(subprotocol)
        if refusal is not None:
            self.stats.refused += 1
            conn.close(CloseCode.UNSUPPORTED_SUBPROTOCOL, refusal, drain=False)
            return
        if self.draining:
            conn.close(CloseCode.GOING_AWAY, "server shutting down")
            return
        pending = identity is UNAUTHENTICATED
        if pending:
            self._make_room_for_unauthenticated()
            self.unauthenticated[conn] = None
        elif len(self.authenticated) >= self.settings.max_connections:
            self.stats.refused += 1
            conn.close(CloseCode.TRY_AGAIN_LATER, TOO_MANY_CONNECTIONS)
            return
        else:
            self.authenticated[conn] = None
        self.stats.connections += 1
        self.registry.connections[conn.id] = conn
        assert self._emptied is not None
        self._emptied.clear()
        if heartbeat:
            conn.heartbeat = True
            conn.ping_due = asyncio.get_running_loop().time() + self.settings.ping_interval
            self.heartbeats[conn] = None
        if identity is not None and not pending:
            await self.identify(conn, identity)
        if conn.state is ConnectionState.OPEN:
            log_connected(conn)

    def _make_room_for_unauthenticated(self) -> None:
        """At ``max_unauthenticated``, close the oldest unauthenticated connections (1013)."""
        limit = self.settings.unauthenticated_limit()
        while len(self.unauthenticated) >= limit:
            oldest = next(iter(self.unauthenticated))
            del self.unauthenticated[oldest]
            self.stats.refused += 1
            oldest.close(CloseCode.TRY_AGAIN_LATER, TOO_MANY_UNAUTHENTICATED, drain=False)

    async def identify(self, conn: Connection, identity: Identity) -> bool:
        """Bind an open connection to the identity it authenticated as.

        Registers it for `send_to_user` and for expiry (4001 "token expired" at
        ``identity.expires_at``), and applies ``max_connections_per_user``. A
        connection attached as `UNAUTHENTICATED` moves to the main pool first, under
        ``max_connections``.

        Returns:
            False when the connection was closed instead (1013: too many connections,
            or too many for this user) or is not open.
        """
        if conn.state is not ConnectionState.OPEN:
            return False
        if conn in self.unauthenticated:
            del self.unauthenticated[conn]
            if len(self.authenticated) >= self.settings.max_connections:
                self.stats.refused += 1
                conn.close(CloseCode.TRY_AGAIN_LATER, TOO_MANY_CONNECTIONS)
                return False
            self.authenticated[conn] = None
        conn.info = identity.info
        self.set_expiry(conn, identity.expires_at)
        if identity.user is None:
            return True
        if self.registry.user_count(identity.user) >= self.settings.max_connections_per_user:
            self.stats.refused += 1
            conn.close(CloseCode.TRY_AGAIN_LATER, "too many connections for this user")
            return False
        conn.user = identity.user
        if self.registry.add_user(conn, identity.user):
            await self.membership.sync(user_channel(identity.user))
        return True

    def set_expiry(self, conn: Connection, expires_at: float | None) -> None:
        """Close ``conn`` with 4001 "token expired" at ``expires_at`` (Unix time; None: never)."""
        conn.expires_at = expires_at
        if expires_at is None:
            self.expiring.pop(conn, None)
        else:
            self.expiring[conn] = None

    async def detach(self, conn: Connection) -> None:
        """Remove a connection that ended from every registry, and count how it ended.

        It leaves `Registry.connections` last, once presence and the broker were told:
        a connection count of zero means that nothing of any connection is left.
        """
        self.stats.closes[conn.close_code or CloseCode.NORMAL] += 1
        self.authenticated.pop(conn, None)
        self.unauthenticated.pop(conn, None)
        connections = self.registry.connections
        if conn.id not in connections:
            # Never registered: refused by a limit (1013) or while shutting down (1001).
            log_refused(conn.websocket, conn.close_code or CloseCode.NORMAL, conn.close_reason)
            return
        log_disconnected(conn)
        if conn.queue.dropped:
            self.stats.drops[conn.queue.policy.value] += conn.queue.dropped
        self.stats.dropped += conn.queue.dropped
        self.heartbeats.pop(conn, None)
        self.expiring.pop(conn, None)
        try:
            await self.membership.forget(conn)
        finally:
            del connections[conn.id]
            if not connections and self._emptied is not None:
                self._emptied.set()

    async def _presence_loop(self) -> None:
        while True:
            await asyncio.sleep(self.presence.ttl / 3)
            await self.presence.refresh()

    async def _heartbeat_loop(self) -> None:
        s = self.settings
        tick = min(1.0, s.ping_interval / 4, s.pong_timeout / 4)
        pings = [codec.encode(PING) for codec in CODECS]
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(tick)
            now = loop.time()
            for conn in self.heartbeats:
                if conn.pong_deadline is not None:
                    if now >= conn.pong_deadline:
                        conn.close(CloseCode.HEARTBEAT_TIMEOUT, "heartbeat timeout", drain=False)
                elif now >= conn.ping_due:
                    conn.enqueue(pings[conn.codec.index], control=True)
                    conn.pong_deadline = now + s.pong_timeout
                    conn.ping_due = now + s.ping_interval
            self._expire(time.time())

    def _expire(self, now: float) -> None:
        expired = [c for c in self.expiring if c.expires_at is not None and c.expires_at <= now]
        for conn in expired:
            del self.expiring[conn]
            self.stats.auth_failed("token expired")
            conn.close(CloseCode.UNAUTHORIZED, "token expired", drain=False)
