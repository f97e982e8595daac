"""Hub: the one object an application holds; a facade over the hub's parts.

Each part is a module of its own: `Registry` (who is where), `Membership`
(subscriptions, mirrored on the broker), `Delivery` (publish and fan-out),
`Recovery` (history and subscribe-with-since), `PresenceTracker`, and `Lifecycle`
(start, shutdown, heartbeats, expiry, attach and detach). The hub wires them
together and keeps the public methods; it knows no endpoint and no token scheme.
"""

from __future__ import annotations

import contextlib
import logging
import weakref
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

from starlette.websockets import WebSocket

from wshub.brokers import Broker, BrokerState
from wshub.brokers.history import HistoryPage
from wshub.brokers.presence import ClientInfo
from wshub.core.codecs import (
    RAW_JSON,
    Codec,
)
from wshub.core.errors import CloseCode
from wshub.core.sendqueue import OverflowPolicy
from wshub.core.types import (
    HistoryOptions,
    Publication,
    PublishResult,
)
from wshub.hub.accept import authenticate, connect_context
from wshub.hub.app_hooks import AppHooks
from wshub.hub.config import resolve_broker, resolve_settings
from wshub.hub.connect import ConnectContext
from wshub.hub.connection import Connection
from wshub.hub.delivery import DISCONNECT_ORIGIN, Delivery, sendable_close_code
from wshub.hub.gaps import GapFiller
from wshub.hub.hooks import F as ConnectHookT
from wshub.hub.identity import Authenticator, Identity, default_authenticator
from wshub.hub.identity import websocket_identity as websocket_identity
from wshub.hub.lifecycle import Lifecycle
from wshub.hub.membership import Membership
from wshub.hub.permissions import Namespace, Permissions, PublishHook, SubscribeHook
from wshub.hub.position_checks import PositionChecks
from wshub.hub.presence import PresenceTracker
from wshub.hub.publish_hooks import H
from wshub.hub.publishing import Publishing
from wshub.hub.queries import HubQueries
from wshub.hub.recovery import Recovery
from wshub.hub.registry import Registry
from wshub.hub.rpc import H as RPCHandlerT
from wshub.hub.rpc import RPCMethod
from wshub.hub.stats import HubStats
from wshub.settings import Settings

__all__ = ["DISCONNECT_ORIGIN", "Hub", "HubStats", "running_hubs", "sendable_close_code"]

logger = logging.getLogger("wshub.hub")

_RUNNING: weakref.WeakSet[Hub] = weakref.WeakSet()


def running_hubs() -> list[Hub]:
    """Return the hubs started in this process and not closed yet (for the server's shutdown)."""
    return list(_RUNNING)


class Hub:
    """The connection registry and router of one process.

    Args:
        broker: a `Broker`, or a broker URL; defaults to ``settings.broker`` (``memory://``).
        settings: the settings; by default read from ``WSHUB_*`` environment variables.
        auth: the authenticator; by default a JWT one when the settings name a key,
            else none (every connection is anonymous, as in the seed tutorial).
        namespaces: channel rules per namespace (see `wshub.hub.permissions`).
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
        self.settings = settings = resolve_settings(settings, overrides)
        self.broker = broker = resolve_broker(broker, settings)
        self.auth = auth if auth is not None else default_authenticator(settings)
        self.permissions = Permissions(
            namespaces, can_subscribe=can_subscribe, can_publish=can_publish
        )
        self.broker_state = BrokerState.CONNECTING
        self.stats = HubStats()
        self.registry = Registry()
        self.presence_tracker = PresenceTracker(broker, settings.presence_ttl)
        self.membership = Membership(
            broker, self.registry, self.permissions, self.presence_tracker,
            settings.max_subscriptions,
        )  # fmt: skip
        self.delivery = Delivery(broker, self.registry, self.membership.subscribed, self.stats)
        self.recovery = Recovery(broker, self.permissions, self.membership)
        # Gap detection and refill on channels with history (wshub.hub.gaps).
        self.gaps = GapFiller(
            broker, self.registry, self.delivery, self.recovery.history_options, self.stats
        )
        self.delivery.gaps, self.delivery.positions = self.gaps, self.gaps.last
        self.recovery.gaps = self.gaps
        self.membership.on_unsubscribed = self.gaps.untrack
        self.position_checks = PositionChecks(self.gaps)
        self.lifecycle = Lifecycle(
            settings, broker, self.registry, self.membership, self.presence_tracker, self.stats
        )
        self.app_hooks = AppHooks(self.permissions)
        self.publish_pipeline = self.app_hooks.publish_pipeline
        self.rpc_registry = self.app_hooks.rpc_registry
        self.connect_hooks = self.app_hooks.connect_hooks
        self.queries = HubQueries(self.registry, self.permissions, broker)
        self.publishing = Publishing(settings, self.publish_pipeline, self.recovery, self.delivery)
        self.mark_dirty = self.delivery.mark_dirty
        self.on_publication: Callable[[str, Publication], None] = self.delivery.on_publication

    # -- life -------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the broker and the heartbeat. Idempotent."""
        if self.lifecycle.started:
            return
        await self.lifecycle.start(self, [self.auth.query_param] if self.auth else [])
        self.position_checks.start(self.settings.position_check_interval)
        _RUNNING.add(self)

    async def close(self) -> None:
        """Close every connection (1001, after draining), then stop the broker. Idempotent."""
        if not self.lifecycle.started:
            return
        await self.position_checks.stop()
        await self.gaps.close()
        await self.lifecycle.close()
        _RUNNING.discard(self)

    @contextlib.asynccontextmanager
    async def lifespan(self, app: object = None) -> AsyncIterator[None]:
        """FastAPI/Starlette lifespan: ``FastAPI(lifespan=hub.lifespan)``."""
        await self.start()
        try:
            yield
        finally:
            await self.close()

    async def shutdown_connections(
        self,
        code: int = CloseCode.GOING_AWAY,
        reason: str = "server shutting down",
        drain_timeout: float | None = None,
    ) -> None:
        """Refuse new connections and close every open one after its queue drains.

        Bounded: handlers still running after ``drain_timeout`` (default
        ``shutdown_timeout``) + 1 s are cancelled (see `Lifecycle.shutdown_connections`).
        """
        await self.lifecycle.shutdown_connections(code, reason, drain_timeout)

    @property
    def ready(self) -> bool:
        """True when the hub accepts connections and its broker is connected."""
        life = self.lifecycle
        return life.started and not life.draining and self.broker_state is BrokerState.CONNECTED

    def on_state(self, state: BrokerState) -> None:
        """Record the broker's state (`BrokerEvents`)."""
        if state is not self.broker_state:
            logger.info("broker %s", state.value)
            if state is BrokerState.CONNECTED and self.broker_state is BrokerState.DISCONNECTED:
                # Reconnected and resubscribed: publications made meanwhile reached
                # nobody here; refill them from the history (wshub.hub.gaps).
                self.gaps.check_all()
        self.broker_state = state

    # -- connections ----------------------------------------------------------------------

    def connect(
        self,
        websocket: WebSocket,
        *,
        identity: Identity | None = None,
        user: str | None = None,
        codec: Codec = RAW_JSON,
        subprotocol: str | None = None,
        subprotocols: Iterable[str] = (),
        heartbeat: bool = False,
        reader: bool = True,
        queue_max_messages: int | None = None,
        queue_max_bytes: int | None = None,
        overflow_policy: OverflowPolicy | None = None,
    ) -> ConnectContext:
        """Accept a WebSocket and manage it in an ``async with`` block (`connect_context`)."""
        return connect_context(
            self, self.lifecycle, self.settings, websocket, identity=identity, user=user,
            codec=codec, subprotocol=subprotocol, subprotocols=subprotocols,
            heartbeat=heartbeat, reader=reader, queue_max_messages=queue_max_messages,
            queue_max_bytes=queue_max_bytes, overflow_policy=overflow_policy,
        )  # fmt: skip

    async def identify(self, conn: Connection, identity: Identity) -> bool:
        """Bind an open connection to its identity (for `send_to_user`, expiry, user limits).

        Returns:
            False when the connection is not open or was closed (1013, user limit).
        """
        return await self.lifecycle.identify(conn, identity)

    def set_expiry(self, conn: Connection, expires_at: float | None) -> None:
        """Close ``conn`` with 4001 "token expired" at ``expires_at`` (Unix time; None: never)."""
        self.lifecycle.set_expiry(conn, expires_at)

    async def authenticate(self, websocket: WebSocket) -> Identity:
        """FastAPI dependency authenticating a library-mode endpoint's handshake.

        ``who: Identity = Depends(hub.authenticate)``; see `wshub.hub.accept.authenticate`.
        """
        return await authenticate(self.auth, self.stats, websocket)

    @property
    def connection_count(self) -> int:
        """Connections open in this process."""
        return self.queries.connection_count

    @property
    def channel_count(self) -> int:
        """Channels with at least one local member."""
        return self.queries.channel_count

    def connections(self) -> list[Connection]:
        """The connections open in this process."""
        return self.queries.connections()

    def channel_counts(self) -> dict[str, int]:
        """The channels with local members, each with its number of local members."""
        return self.queries.channel_counts()

    def subscribers(self, channel: str) -> list[Connection]:
        """The local members of ``channel``."""
        return self.queries.subscribers(channel)

    def user_connections(self, user: str) -> list[Connection]:
        """The local connections of ``user``."""
        return self.queries.user_connections(user)

    # -- application logic: RPC methods, connect hooks ---------------------------------------

    def rpc(self, name: str | None = None) -> Callable[[RPCHandlerT], RPCHandlerT]:
        """Decorator: ``@hub.rpc("name")`` on an RPC method (see `AppHooks.rpc`)."""
        return self.app_hooks.rpc(name)

    def rpc_methods(self) -> dict[str, RPCMethod]:
        """The RPC methods by name (see `AppHooks.rpc_methods`)."""
        return self.app_hooks.rpc_methods()

    def on_connect(self, hook: ConnectHookT) -> ConnectHookT:
        """Decorator: run ``hook(conn)`` as each protocol connection opens (`AppHooks`)."""
        return self.app_hooks.on_connect(hook)

    # -- subscriptions, history, presence -----------------------------------------------

    async def subscribe(self, conn: Connection, channel: str) -> bool:
        """Make ``conn`` a member of ``channel``; subscribe the broker for its first member.

        Returns:
            False when ``conn`` was already a member or is closing.

        Raises:
            ProtocolError: ``bad_request`` for an invalid name or past ``max_subscriptions``.
        """
        return await self.membership.subscribe(conn, channel)

    async def unsubscribe(self, conn: Connection, channel: str) -> bool:
        """Remove ``conn`` from ``channel``; unsubscribe the broker when it was the last member.

        Returns:
            False when ``conn`` was not a member.
        """
        return await self.membership.unsubscribe(conn, channel)

    async def subscribe_and_recover(
        self,
        conn: Connection,
        channel: str,
        since: int | None,
        epoch: str | None,
        reply: Callable[[dict[str, Any]], None],
    ) -> None:
        """Subscribe, then ``reply`` with the channel's position and what ``conn`` missed.

        The hand-over from recovered to live has no gap and no duplicate; see
        `Recovery.subscribe` for the arguments and the errors.
        """
        await self.recovery.subscribe(conn, channel, since, epoch, reply)

    def history_options(self, channel: str) -> HistoryOptions | None:
        """The history ``channel`` keeps by its namespace, or None."""
        return self.recovery.history_options(channel)

    def keeps_history(self, channel: str) -> bool:
        """Whether ``channel`` keeps history (its namespace says so and the broker can)."""
        return self.recovery.keeps_history(channel)

    async def history(
        self, channel: str, *, since: int | None = None, limit: int | None = None
    ) -> HistoryPage:
        """Read ``channel``'s history: after ``since`` oldest first, else the newest ``limit``.

        Raises:
            ProtocolError: ``bad_request`` when the channel keeps no history.
            BrokerUnavailable: the broker cannot be read.
        """
        return await self.recovery.history(channel, since=since, limit=limit)

    async def presence(self, channel: str) -> dict[str, ClientInfo]:
        """Who is in ``channel``, in every process (see `HubQueries.presence`)."""
        return await self.queries.presence(channel)

    # -- publishing ------------------------------------------------------------------------

    def on_publish(self, namespace: str) -> Callable[[H], H]:
        """Decorator: run ``hook(conn, channel, data) -> data`` on publishes (`AppHooks`)."""
        return self.app_hooks.on_publish(namespace)

    async def publish(
        self,
        channel: str,
        data: object,
        *,
        origin: str | None = None,
        idempotency_key: str | None = None,
    ) -> PublishResult:
        """Publish ``data`` to every member of ``channel`` in every process.

        Args, Returns and Raises: see `Publishing.publish` (the model and ``on_publish``
        hooks run first; ``idempotency_key`` makes retries publish once).
        """
        return await self.publishing.publish(
            channel, data, origin=origin, idempotency_key=idempotency_key
        )

    async def send_to_user(self, user: str, data: object) -> PublishResult:
        """Send ``data`` to every connection of ``user`` (channel ``#user:<user>``)."""
        return await self.publishing.send_to_user(user, data)

    async def broadcast(self, data: object) -> PublishResult:
        """Send ``data`` to every connection of every process (protocol channel ``#all``)."""
        return await self.publishing.broadcast(data)

    async def disconnect_user(
        self, user: str, code: int = CloseCode.NORMAL, reason: str = ""
    ) -> None:
        """Close every connection of ``user``, in every process (`Publishing.disconnect_user`)."""
        await self.publishing.disconnect_user(user, code, reason)
