"""Hub: the one object an application holds; a facade over the hub's parts.

Each part is a module of its own: `Registry` (who is where), `Membership`
(subscriptions, mirrored on the broker), `Delivery` (publish and fan-out),
`Recovery` (history and subscribe-with-since), `PresenceTracker`, and `Lifecycle`
(start, shutdown, heartbeats, expiry, attach and detach). The hub wires them
together and keeps the public methods; it knows no endpoint and no token scheme.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

from starlette.exceptions import WebSocketException
from starlette.websockets import WebSocket

from wshub.brokers import Broker, BrokerState, broker_from_url
from wshub.brokers.history import HistoryPage
from wshub.brokers.presence import ClientInfo, Presence
from wshub.core.channels import BROADCAST_CHANNEL, is_valid_channel, user_channel
from wshub.core.codecs import (
    RAW_JSON,
    Codec,
    negotiate_subprotocol,
    refusal_subprotocol,
    unsupported_reason,
)
from wshub.core.errors import CloseCode, ErrorCode, ProtocolError
from wshub.core.sendqueue import OverflowPolicy, SendQueue
from wshub.core.types import (
    MAX_IDEMPOTENCY_KEY,
    HistoryOptions,
    Idempotency,
    Publication,
    PublishResult,
)
from wshub.hub.connect import ConnectContext
from wshub.hub.connection import Connection
from wshub.hub.connection_log import log_refused
from wshub.hub.delivery import DISCONNECT_ORIGIN, Delivery, sendable_close_code
from wshub.hub.gaps import GapFiller
from wshub.hub.hooks import ConnectHooks
from wshub.hub.hooks import F as ConnectHookT
from wshub.hub.identity import ANONYMOUS, Authenticator, Identity, default_authenticator
from wshub.hub.identity import websocket_identity as websocket_identity
from wshub.hub.lifecycle import Lifecycle
from wshub.hub.membership import Membership
from wshub.hub.permissions import Namespace, Permissions, PublishHook, SubscribeHook
from wshub.hub.presence import PresenceTracker
from wshub.hub.publish_hooks import H, Prepared, PublishPipeline
from wshub.hub.recovery import Recovery
from wshub.hub.registry import Registry
from wshub.hub.rpc import H as RPCHandlerT
from wshub.hub.rpc import RPCMethod, RPCRegistry
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
                history_max_memory=settings.history_max_memory,
            )
        self.broker = broker
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
        self._gap_checks: asyncio.Task[None] | None = None
        self.lifecycle = Lifecycle(
            settings, broker, self.registry, self.membership, self.presence_tracker, self.stats
        )
        self.publish_pipeline = PublishPipeline(self.permissions)
        self.rpc_registry = RPCRegistry()
        self.connect_hooks = ConnectHooks()
        self.mark_dirty = self.delivery.mark_dirty
        self.on_publication: Callable[[str, Publication], None] = self.delivery.on_publication

    # -- life -------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the broker and the heartbeat. Idempotent."""
        if self.lifecycle.started:
            return
        await self.lifecycle.start(self, [self.auth.query_param] if self.auth else [])
        self._gap_checks = asyncio.get_running_loop().create_task(
            self.gaps.run(self.settings.position_check_interval), name="wshub-position-checks"
        )
        _RUNNING.add(self)

    async def close(self) -> None:
        """Close every connection (1001, after draining), then stop the broker. Idempotent."""
        if not self.lifecycle.started:
            return
        checks, self._gap_checks = self._gap_checks, None
        if checks is not None:
            checks.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await checks
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
        """Accept a WebSocket and manage it for the duration of an ``async with`` block.

        The block gets the `Connection`. On entry the socket is accepted, registered
        and its writer started; on exit, for any reason, it is flushed, closed and
        removed from every registry. A handler that returns closes with 1000, one that
        raises closes with 1011 (the exception propagates).

        Args:
            websocket: the Starlette/FastAPI WebSocket (accepted already or not).
            identity: who the connection belongs to (from `wshub.hub.identity`); None
                leaves it anonymous until `identify` is called.
            user: shorthand for ``identity=Identity(user)``.
            codec: how frames are encoded; library mode sends data as JSON text.
            subprotocol: the subprotocol to accept with, as it is (no negotiation).
            subprotocols: without ``subprotocol``, the subprotocols this route speaks:
                the first one the client offers is accepted. A client that offered
                subprotocols but none of these is accepted with its first offer (so
                that browsers see the close code) and closed at once with 4002
                "unsupported subprotocol". By default (none), a library-mode route
                accepts clients that offer no subprotocol only.
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
        refusal = None
        if subprotocol is None:
            offered = list(websocket.scope.get("subprotocols") or [])
            supported = tuple(subprotocols)
            subprotocol = negotiate_subprotocol(offered, supported)
            if subprotocol is None and offered:
                subprotocol = refusal_subprotocol(offered)
                refusal = unsupported_reason(supported)
        return ConnectContext(
            self,
            self.lifecycle,
            websocket,
            identity,
            codec,
            subprotocol,
            refusal,
            heartbeat,
            reader,
            queue,
        )

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

        ``who: Identity = Depends(hub.authenticate)``, then ``hub.connect(ws,
        identity=who)``. Without an authenticator every connection is anonymous;
        with one, a missing or bad token accepts and closes with 4001 before the
        endpoint runs (see `wshub.hub.identity.websocket_identity`).
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
        return len(self.registry.connections)

    @property
    def channel_count(self) -> int:
        """Channels with at least one local member."""
        return len(self.registry.channels)

    def connections(self) -> list[Connection]:
        """The connections open in this process."""
        return list(self.registry.connections.values())

    def channel_counts(self) -> dict[str, int]:
        """The channels with local members, each with its number of local members."""
        return {channel: len(members) for channel, members in self.registry.channels.items()}

    def subscribers(self, channel: str) -> list[Connection]:
        """The local members of ``channel``."""
        return list(self.registry.channels.get(channel, ()))

    def user_connections(self, user: str) -> list[Connection]:
        """The local connections of ``user``."""
        return list(self.registry.users.get(user, ()))

    # -- application logic: RPC methods, connect hooks ---------------------------------------

    def rpc(self, name: str | None = None) -> Callable[[RPCHandlerT], RPCHandlerT]:
        """Decorator: ``@hub.rpc("name")`` on ``async def handler(conn, params) -> result``.

        Protocol clients call it with ``{"op":"rpc","id":N,"method":"name","params":..}``.
        A ``params`` annotated with a Pydantic model is validated into it; a model result
        is sent as ``model_dump(mode="json")``. Raise `wshub.RPCError` to answer with
        an error code of your own. See `wshub.hub.rpc`.
        """
        return self.rpc_registry.decorator(name)

    def rpc_methods(self) -> dict[str, RPCMethod]:
        """The RPC methods by name: each `RPCMethod` has ``.handler``, ``.params_model``,
        ``.result_model`` (a Pydantic model class or None) and ``.summary``."""
        return self.rpc_registry.methods()

    def on_connect(self, hook: ConnectHookT) -> ConnectHookT:
        """Decorator: run ``async def hook(conn) -> None`` as each protocol connection opens.

        After authentication, before the welcome; ``await conn.subscribe(channel)`` in it
        subscribes the client server-side (listed in the welcome as ``subscribed``).
        Raise `wshub.RPCError` to refuse: close 4003. Protocol endpoint only. See
        `wshub.hub.hooks`.
        """
        return self.connect_hooks.add(hook)

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
        """Who is in ``channel``, in every process, keyed by client id.

        Raises:
            ProtocolError: ``bad_request`` when the channel tracks no presence.
            BrokerUnavailable: the broker cannot be read.
        """
        space = self.permissions.namespace(channel)
        if space is None or not space.presence or not isinstance(self.broker, Presence):
            raise ProtocolError(ErrorCode.BAD_REQUEST, f"{channel!r} tracks no presence")
        return await self.broker.presence(channel)

    # -- publishing ------------------------------------------------------------------------

    def on_publish(self, namespace: str) -> Callable[[H], H]:
        """Decorator: run ``async def hook(conn, channel, data) -> data`` on publishes.

        The hook runs for every publication to the channels of ``namespace`` (``"*"``:
        the namespaces not listed by name), after the permissions and the namespace's
        model, before the broker: what it returns is what history keeps and every
        subscriber receives. ``conn`` is the publishing `Connection`, None for
        server-side publishes (`publish`, the HTTP API). Raise `wshub.RPCError` to
        refuse with that code. Publications from a `Publisher` (other processes,
        straight to Redis) do not run it. See `wshub.hub.publish_hooks`.
        """
        return self.publish_pipeline.on_publish(namespace)

    async def publish(
        self,
        channel: str,
        data: object,
        *,
        origin: str | None = None,
        idempotency_key: str | None = None,
    ) -> PublishResult:
        """Publish ``data`` to every member of ``channel`` in every process.

        With a namespace model or ``on_publish`` hooks, ``data`` is validated and
        passed through the hooks first (``conn`` None), and their result is published.

        Args:
            channel: the channel name.
            data: any JSON-representable value; encoded once, here.
            origin: the publishing connection's id, sent to subscribers as ``from``.
            idempotency_key: 1 to 64 characters: a publish with the same key to the
                same channel within ``idempotency_window`` seconds publishes nothing
                and returns the first one's result (retry `PublishTimeout` with it).

        Returns:
            The broker's result (the offset, when the channel keeps history).

        Raises:
            InvalidPublication: ``data`` does not fit the namespace's model (a
                `PublishError`; its message names the field).
            RPCError: an ``on_publish`` hook refused the publication.
            PublishError: JSON cannot represent ``data``.
            ValueError: the channel name (or the idempotency key) is invalid.
            PublishTimeout: sent to the broker, no answer in time: outcome unknown.
            BrokerUnavailable: the broker is down; nobody received the publication.
        """
        if not is_valid_channel(channel):
            raise ValueError(f"invalid channel name {channel!r}")
        once = None
        if idempotency_key is not None:
            if not isinstance(idempotency_key, str) or not (
                0 < len(idempotency_key) <= MAX_IDEMPOTENCY_KEY
            ):
                raise ValueError(f"idempotency_key must be 1 to {MAX_IDEMPOTENCY_KEY} characters")
            once = Idempotency(idempotency_key, self.settings.idempotency_window)
        if type(data) is Prepared:
            # Prepared by the protocol endpoint, in frame order: no await before the broker.
            data = data.data
        elif self.publish_pipeline.needed(channel):
            data = await self.publish_pipeline.prepare(None, channel, data)
        history = self.recovery.history_options(channel)
        return await self.delivery.publish(channel, data, origin, history, once)

    async def send_to_user(self, user: str, data: object) -> PublishResult:
        """Send ``data`` to every connection of ``user``, in every process.

        Protocol clients receive it as a message on channel ``#user:<user>``.
        """
        return await self.delivery.publish(user_channel(user), data, None, None)

    async def broadcast(self, data: object) -> PublishResult:
        """Send ``data`` to every connection of every process (protocol channel ``#all``)."""
        return await self.delivery.publish(BROADCAST_CHANNEL, data, None, None)

    async def disconnect_user(
        self, user: str, code: int = CloseCode.NORMAL, reason: str = ""
    ) -> None:
        """Close every connection of ``user``, in every process sharing the broker.

        Returns once the broker took the command (see `Delivery.disconnect_user`).

        Raises:
            ValueError: ``code`` is not one a server may send.
            BrokerUnavailable: the broker is down; nothing was closed.
        """
        await self.delivery.disconnect_user(user_channel(user), code, reason)
