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
applications receive), `frames` (parsing, reply matching), `subscriptions` (positions,
recovery, dedupe), `connection` (one connection) and `reconnect` (backoff, token policy).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
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
from wshub.client.reconnect import Policy, ReconnectLoop, backoff_delay, reconnect_policy
from wshub.client.subscriptions import ChannelPositions, ChannelRegistry, Subscription
from wshub.client.tasks import BackgroundTasks

#: Publish errors `Client.publish` retries with ``retry=True``: the outcome is unknown
#: (``timeout``, ``disconnected``) or it was not published (``unavailable``).
_RETRIED = frozenset({"timeout", "unavailable", "disconnected"})

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
            try:
                await asyncio.wait_for(asyncio.shield(sub.ready), self.request_timeout)
            except TimeoutError:
                await sub.unsubscribe()
                raise ClientError("timeout", f"no subscribe reply for {channel!r}") from None
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
        frame: dict[str, Any] = {"op": "publish", "channel": channel, "data": data}
        if retry and idempotency_key is None:
            idempotency_key = uuid.uuid4().hex
        if idempotency_key is not None:
            frame["idempotency_key"] = idempotency_key
        deadline = time.monotonic() + retry_for
        attempt = 0
        while True:
            try:
                result = await self.request(frame)
                break
            except ClientError as exc:
                if not retry or exc.code not in _RETRIED or time.monotonic() >= deadline:
                    raise
            delay = backoff_delay(attempt, self.backoff_base, self.backoff_cap)
            attempt += 1
            await asyncio.sleep(min(delay, max(0.0, deadline - time.monotonic())))
        offset = result.get("offset")
        return offset if isinstance(offset, int) else None

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
        frame: dict[str, Any] = {"op": "history", "channel": channel}
        if since is not None:
            frame["since"] = since
        if limit is not None:
            frame["limit"] = limit
        result = await self.request(frame)
        self.positions.learn_epoch(channel, result)
        messages = [Message.from_frame(item) for item in result["messages"]]
        return HistoryPage(result["offset"], result["epoch"], messages)

    async def refresh(self, token: str | None = None) -> float | None:
        """Hand the server a new token (by default from ``get_token``); returns its expiry."""
        fresh = token if token is not None else await self._reconnect.resolve_token()
        if not fresh:
            raise ClientError("unauthorized", "no token to refresh with")
        result = await self.request({"op": "refresh", "token": fresh})
        self._reconnect.current_token = fresh
        expires = result.get("expires")
        self._schedule_refresh(float(expires) if isinstance(expires, int | float) else None)
        return expires if isinstance(expires, int | float) else None

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
        try:
            ws = await asyncio.wait_for(self._wait_connected(), self.request_timeout)
        except TimeoutError:
            raise ClientError("timeout", f"not connected within {self.request_timeout} s") from None
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
        try:
            ws = await asyncio.wait_for(self._wait_connected(), self.request_timeout)
        except TimeoutError:
            raise ClientError("timeout", f"not connected within {self.request_timeout} s") from None
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
        self._schedule_refresh(token_expiry(self._reconnect.current_token))

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

    def _schedule_refresh(self, expires_at: float | None) -> None:
        self._tasks.cancel("refresh")
        if expires_at is None or self.get_token is None:
            return
        left = expires_at - time.time()
        wait = max(1.0, min(left - self.refresh_margin, left / 2))

        async def refresh_later() -> None:
            await asyncio.sleep(wait)
            try:
                await self.refresh()
            except ClientError as exc:
                self._report(exc)

        self._tasks.spawn(refresh_later(), "refresh")
