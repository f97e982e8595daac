"""The Python client of wire protocol v1 (docs/protocol.md), on asyncio and `websockets`.

It does what the browser client (``static/wshub.js``) does, for services, scripts,
tests and the benchmark::

    async with Client("ws://127.0.0.1:8000/ws", token=token) as client:
        sub = await client.subscribe("chat:lobby")
        offset = await client.publish("chat:lobby", {"text": "hi"})
        async for message in sub:
            print(message.data)

- The first frame of every connection is ``{"op":"connect","token":...}`` (``token``,
  or ``get_token`` asked before every connection); `Client.connect` returns the
  ``welcome``.
- Connections that end are reopened with exponential backoff and full jitter.
  After 4001/4003 only with a different token from ``get_token``; a static token
  stops the client and `connect` raises `ClientError`.
- ``ping`` is answered with ``pong``; a server silent for longer than the announced
  ping interval plus ``ping_grace`` is dropped and reconnected.
- Subscriptions survive reconnects: each channel is resubscribed with ``since`` and
  ``epoch``, recovered messages are delivered before live ones, duplicates are dropped
  by offset, and ``on_recover`` learns whether recovery worked. A recovery reply with
  ``more`` is followed by ``history`` reads of the rest, live messages held meanwhile.
- Consecutive 4008 (slow consumer) closes back off longer each time.
- Replies are matched to requests by id, with a timeout; requests in flight fail
  with ``disconnected`` when the connection drops.

Callbacks run in the reader task: keep them quick and never block in them.

`Client` is the facade; the parts it is made of live next to it: `models` (what
applications receive), `frames` (parsing, reply matching), `subscriptions` (the channel
registry), `positions` (dedupe), `recovery` (history reads, paginated recovery),
`publishing` (retries, idempotency keys), `token_refresh`, `connection` (one
connection) and `reconnect` (backoff, token policy).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from websockets.asyncio.client import ClientConnection

from wshub.client.connection import Connector, SessionHooks
from wshub.client.frames import PendingRequests, split_frames, token_expiry
from wshub.client.models import (
    ClientError,
    ClientState,
    HistoryPage,
    Message,
    MessageHandler,
    PresenceEvent,
    PresenceHandler,
    Recovery,
    RecoveryHandler,
    StateChange,
    TokenSource,
    run_callback,
)
from wshub.client.publishing import publish
from wshub.client.reconnect import Policy, ReconnectLoop, backoff_delay, reconnect_policy
from wshub.client.recovery import read_history
from wshub.client.subscriptions import (
    ChannelPositions,
    ChannelRegistry,
    Subscription,
    wait_subscribed,
)
from wshub.client.tasks import BackgroundTasks
from wshub.client.token_refresh import TokenRefresher

logger = logging.getLogger("wshub.client")

# Everything this module held before the split stays importable from it.
__all__ = [
    "ChannelPositions",
    "Client",
    "ClientError",
    "ClientState",
    "HistoryPage",
    "Message",
    "MessageHandler",
    "Policy",
    "PresenceEvent",
    "PresenceHandler",
    "Recovery",
    "RecoveryHandler",
    "StateChange",
    "Subscription",
    "TokenSource",
    "backoff_delay",
    "reconnect_policy",
    "split_frames",
    "token_expiry",
]


class Client:
    """A protocol client that reconnects, resubscribes and recovers by itself.

    Args:
        url: the protocol endpoint, e.g. ``ws://127.0.0.1:8000/ws``.
        token: credentials for the first frame.
        get_token: asked before every connection and refresh, with ``True`` after a
            4001/4003; may be async.
        backoff_base, backoff_cap: reconnect delay ceilings in seconds (0.5 s doubling to 20 s).
        healthy_after: seconds a connection must stay up for a 4008 close not to count
            as one more in a row; 4008 closes in a row back off longer each time.
        request_timeout: seconds a request waits for its reply (and for a connection).
        connect_timeout: seconds to open the socket and receive ``welcome``.
        ping_grace: seconds of silence tolerated past the announced ping interval.
        refresh_margin: refresh a JWT this many seconds before it expires.
        on_state, on_error, on_message: callbacks for state changes, errors nobody
            else sees, and every message (channels without a subscription included).
        **connect_options: passed to `websockets.asyncio.client.connect` (``proxy=None``, ...).
    """

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        get_token: TokenSource | None = None,
        backoff_base: float = 0.5,
        backoff_cap: float = 20.0,
        healthy_after: float = 10.0,
        request_timeout: float = 10.0,
        connect_timeout: float = 10.0,
        ping_grace: float = 10.0,
        refresh_margin: float = 30.0,
        on_state: Callable[[StateChange], object] | None = None,
        on_error: Callable[[ClientError], object] | None = None,
        on_message: MessageHandler | None = None,
        **connect_options: Any,
    ) -> None:
        self.url, self.token, self.get_token = url, token, get_token
        self.backoff_base, self.backoff_cap = backoff_base, backoff_cap
        self.healthy_after = healthy_after
        self.request_timeout, self.connect_timeout = request_timeout, connect_timeout
        self.ping_grace, self.refresh_margin = ping_grace, refresh_margin
        self.on_state, self.on_error, self.on_message = on_state, on_error, on_message
        self.connect_options = connect_options
        self.state = ClientState.DISCONNECTED
        self.welcome: dict[str, Any] | None = None
        self.last_close: tuple[int, str] | None = None
        self.positions = ChannelPositions()
        self._ws: ClientConnection | None = None
        self._changed = asyncio.Event()
        self._stop_error: ClientError | None = None
        self._tasks = BackgroundTasks()
        self._requests = PendingRequests(lambda: self.request_timeout)
        self._channels = ChannelRegistry(
            self,
            send=self._requests.send,
            connection=lambda: self._ws,
            report=self._report,
            spawn=self._tasks.spawn,
        )
        hooks = SessionHooks(
            opened=self._opened,
            ready=self._ready,
            closed=self._closed,
            reply=self._requests.resolve,
            message=self._channels.on_message,
            presence=self._channels.on_presence,
            report=self._report,
            stop=self._stop,
        )
        self._reconnect = ReconnectLoop(
            self,
            connect=Connector(self, hooks).run,
            set_state=self._set_state,
            stop=self._stop,
            report=self._report,
        )
        self._refresher = TokenRefresher(
            self, reconnect=self._reconnect, tasks=self._tasks, report=self._report
        )

    # -- life --------------------------------------------------------------------------

    async def connect(self) -> dict[str, Any]:
        """Start the client (it keeps reconnecting until `close`) and wait for ``welcome``.

        Returns:
            The ``welcome`` frame (``client``, ``user``, ``ping``, ``version``).

        Raises:
            ClientError: ``unauthorized``/``forbidden`` when the server refused the
                token and no other came, ``closed`` when `close` was called meanwhile.
        """
        if not self._reconnect.wanted:
            self._stop_error = None
            self._reconnect.start()
        await self._wait_connected()
        assert self.welcome is not None
        return self.welcome

    async def close(self) -> None:
        """Close the connection and stop reconnecting; iterating subscriptions end."""
        self._reconnect.halt()
        ws = self._ws
        if ws is not None:
            await ws.close()
        await self._reconnect.cancel()
        self._tasks.cancel_all()
        self._requests.fail_all(ClientError("closed", "the client was closed"))
        self._channels.stop_iterators()
        self._set_state(StateChange(ClientState.DISCONNECTED, 1000, "client closed"))

    async def __aenter__(self) -> Client:
        await self.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def wait_for_state(self, state: ClientState) -> None:
        """Wait until the client is in ``state`` (bound it with ``asyncio.timeout``)."""
        while self.state is not state:
            await self._changed.wait()

    # -- requests ----------------------------------------------------------------------

    async def subscribe(
        self,
        channel: str,
        *,
        on_message: MessageHandler | None = None,
        on_join: PresenceHandler | None = None,
        on_leave: PresenceHandler | None = None,
        on_recover: RecoveryHandler | None = None,
        since: int | None = None,
        epoch: str | None = None,
    ) -> Subscription:
        """Subscribe to ``channel``; it is resubscribed after every reconnect.

        Without ``on_message``, iterate the subscription for messages. Before `connect`,
        this only registers the subscription; otherwise it waits for the server's reply.

        Args:
            since, epoch: recover what was published after this offset (0: all kept).

        Raises:
            ClientError: the server refused (``forbidden``, ...), or ``timeout``.
        """
        sub = Subscription(self, channel, on_message, on_join, on_leave, on_recover)
        await self._channels.add(sub, since, epoch)
        if self._reconnect.wanted:
            await wait_subscribed(sub, self.request_timeout)
        return sub

    async def publish(
        self,
        channel: str,
        data: Any,
        *,
        idempotency_key: str | None = None,
        retry: bool = False,
        retry_for: float = 60.0,
    ) -> int | None:
        """Publish ``data``; returns its offset when the channel keeps history.

        Args:
            idempotency_key: 1 to 64 characters: the server publishes nothing for a
                second publish with the same key to the same channel (within its
                ``idempotency_window``, 300 s) and answers the first one's offset.
            retry: retry a publish whose outcome is unknown or that could not be sent
                (``timeout``, ``unavailable``, ``disconnected``) with backoff, for up
                to ``retry_for`` seconds, under the same key (one is made up when
                none was given), so that it is published exactly once.

        Raises:
            ClientError: the server's error (``timeout``: sent to the broker, maybe
                published; ``unavailable``: certainly not published), or the last one
                when retrying gave up.
        """
        return await publish(
            self,
            channel,
            data,
            idempotency_key=idempotency_key,
            retry=retry,
            retry_for=retry_for,
        )

    async def presence(self, channel: str) -> dict[str, dict[str, Any]]:
        """Who is in ``channel``: ``{client_id: {"user": ..., "info": ...}}``."""
        clients: dict[str, dict[str, Any]] = (
            await self.request({"op": "presence", "channel": channel})
        )["clients"]
        return clients

    async def history(
        self, channel: str, *, since: int | None = None, limit: int | None = None
    ) -> HistoryPage:
        """Read ``channel``'s kept messages (after ``since``; at most ``limit``)."""
        return await read_history(self.request, self.positions, channel, since, limit)

    async def refresh(self, token: str | None = None) -> float | None:
        """Hand the server a new token (by default from ``get_token``); returns its expiry."""
        return await self._refresher.refresh(token)

    async def rpc(
        self,
        method: str,
        params: Any = None,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 (the reply's timeout, like request_timeout)
    ) -> Any:
        """Call the server method ``method`` (``@hub.rpc``) and return its result (any JSON).

        Args:
            method: the method's name.
            params: its parameters, any JSON value (None: none sent).
            timeout: seconds to wait for the reply once sent (default ``request_timeout``);
                waiting for a connection first takes up to ``request_timeout``.

        Raises:
            ClientError: the server's error with its code (``not_found``, ``bad_request``,
                an `RPCError`'s own code, ``internal``, ``rate_limited``), ``timeout``,
                ``disconnected`` (the connection dropped first: the call may have run)
                or ``closed``. A call is never sent twice.
        """
        frame: dict[str, Any] = {"op": "rpc", "method": method}
        if params is not None:
            frame["params"] = params
        ws = await _connected_within(self._wait_connected, self.request_timeout)
        return await self._requests.call(ws, frame, timeout)

    async def request(
        self, frame: dict[str, Any], on_result: Callable[[dict[str, Any]], None] | None = None
    ) -> dict[str, Any]:
        """Send a request (an ``id`` is added) and return its reply's ``result``.

        Waits for a connection first when reconnecting, within ``request_timeout``.

        Raises:
            ClientError: the server's error, ``timeout``, ``disconnected`` (the connection
                dropped before the reply) or ``closed``.
        """
        ws = await _connected_within(self._wait_connected, self.request_timeout)
        return await self._requests.send(ws, frame, on_result)

    # -- internals -----------------------------------------------------------------------

    def _opened(self, ws: ClientConnection, welcome: dict[str, Any]) -> None:
        self._ws, self.welcome = ws, welcome
        self._reconnect.rejected = None
        # Before the resubscribes: server-side subscriptions (on_connect hooks) are known.
        self._channels.adopt(ws, welcome.get("subscribed"))

    async def _ready(self, ws: ClientConnection) -> None:
        await self._channels.resubscribe(ws)
        self._set_state(StateChange(ClientState.CONNECTED))
        self._refresher.schedule(token_expiry(self._reconnect.current_token))

    def _closed(self) -> None:
        self._ws, self.welcome = None, None
        self._requests.fail_all(ClientError("disconnected", "the connection closed"))
        self._channels.detach()
        self._tasks.cancel("refresh")

    async def _unsubscribe(self, sub: Subscription) -> None:
        await self._channels.unsubscribe(sub)

    def _stop(self, code: int, reason: str, kind: str | None = None) -> None:
        self._reconnect.wanted = False
        kind = kind or ("forbidden" if code == 4003 else "unauthorized")
        error = ClientError(kind, f"{reason or kind}; not reconnecting without a new token", code)
        self._stop_error = error
        self._requests.fail_all(ClientError("closed", f"stopped after {code} {reason}"))
        self._set_state(StateChange(ClientState.DISCONNECTED, code, reason))
        self._report(error)

    async def _wait_connected(self) -> ClientConnection:
        while True:
            if self._stop_error is not None:
                raise self._stop_error
            if not self._reconnect.wanted:
                raise ClientError("closed", "not connected: call connect()")
            if self._ws is not None and self.state is ClientState.CONNECTED:
                return self._ws
            await self._changed.wait()

    def _set_state(self, change: StateChange) -> None:
        if change.state is self.state and change.state is not ClientState.DISCONNECTED:
            return
        self.state = change.state
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()
        run_callback(self.on_state, change)

    def _report(self, error: ClientError) -> None:
        if self.on_error is None:
            logger.warning("wshub client: %s", error)
        run_callback(self.on_error, error)


async def _connected_within(
    wait: Callable[[], Awaitable[ClientConnection]], within: float
) -> ClientConnection:
    """The connection ``wait`` returns, within ``within`` seconds (else ``timeout``)."""
    try:
        return await asyncio.wait_for(wait(), within)
    except TimeoutError:
        raise ClientError("timeout", f"not connected within {within} s") from None
