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
  by offset, and ``on_recover`` learns whether recovery worked.
- Replies are matched to requests by id, with a timeout; requests in flight fail
  with ``disconnected`` when the connection drops.

Callbacks run in the reader task: keep them quick and never block in them.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import dataclasses
import enum
import inspect
import itertools
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Literal

import orjson
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI
from websockets.typing import Subprotocol

from wshub.core.codecs import JSON_SUBPROTOCOL
from wshub.core.errors import WshubError

logger = logging.getLogger("wshub.client")

TokenSource = Callable[[bool], Awaitable[str | None] | str | None]
Policy = Literal["reauth", "later", "retry"]


class ClientState(enum.StrEnum):
    """Where the client's connection stands (the browser client's state names)."""

    CONNECTING = "connecting"
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"


class ClientError(WshubError):
    """A refused request or a lost connection.

    Attributes:
        code: a protocol error code (``forbidden``, ...) or the client's own:
            ``timeout``, ``disconnected``, ``closed``, ``unauthorized``, ``forbidden``.
        message: what happened.
        close_code: the close code that stopped the client, if one did.
    """

    def __init__(self, code: str, message: str, close_code: int | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.close_code = close_code


@dataclasses.dataclass(frozen=True, slots=True)
class Message:
    """A publication received on a channel; ``recovered`` after a reconnect."""

    channel: str
    data: Any
    offset: int | None = None
    origin: str | None = None
    recovered: bool = False

    @classmethod
    def from_frame(cls, frame: dict[str, Any], recovered: bool = False) -> Message:
        """Build from a ``message`` frame or a history item."""
        offset = frame.get("offset")
        return cls(
            frame["channel"],
            frame.get("data"),
            offset if isinstance(offset, int) else None,
            frame.get("from"),
            recovered,
        )


@dataclasses.dataclass(frozen=True, slots=True)
class PresenceEvent:
    """A ``join`` or ``leave`` in a channel."""

    op: str
    channel: str
    client: str
    user: str | None


@dataclasses.dataclass(frozen=True, slots=True)
class Recovery:
    """The outcome of a resubscribe that asked for what was missed.

    Attributes:
        recovered: False when messages were lost: reload the channel's state.
        count: messages recovered (delivered before this is reported).
    """

    channel: str
    recovered: bool
    count: int
    offset: int | None
    epoch: str | None


@dataclasses.dataclass(frozen=True, slots=True)
class HistoryPage:
    """A ``history`` reply: the channel's position and messages, oldest first."""

    offset: int
    epoch: str
    messages: list[Message]


@dataclasses.dataclass(frozen=True, slots=True)
class StateChange:
    """A state change, with the close that caused it and what happens next."""

    state: ClientState
    code: int | None = None
    reason: str = ""
    reconnect: bool = False
    delay: float | None = None
    attempt: int = 0


# -- pure helpers ----------------------------------------------------------------------


def backoff_delay(
    attempt: int, base: float, cap: float, rand: Callable[[], float] = random.random
) -> float:
    """Exponential backoff with full jitter: uniform in [0, min(cap, base * 2**attempt))."""
    ceiling: float = min(cap, base * 2.0 ** min(attempt, 31))
    return rand() * ceiling


def reconnect_policy(code: int) -> Policy:
    """After a close: ``reauth`` (4001/4003: only with a new token), ``later`` (1013/4029)
    or ``retry``."""
    if code in (4001, 4003):
        return "reauth"
    if code in (1013, 4029):
        return "later"
    return "retry"


def split_frames(text: str) -> list[Any]:
    """Split a text message into its ``\\n``-packed JSON frames; bad lines are logged, skipped."""
    frames = []
    for line in text.split("\n"):
        if line:
            try:
                frames.append(orjson.loads(line))
            except orjson.JSONDecodeError:
                logger.warning("wshub client: not JSON: %.80s", line)
    return frames


def token_expiry(token: str | None) -> float | None:
    """A JWT's ``exp`` (Unix seconds), read without verification; None if there is none."""
    parts = token.split(".") if token else []
    if len(parts) != 3:
        return None
    try:
        payload = orjson.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, binascii.Error):
        return None
    exp = payload.get("exp") if isinstance(payload, dict) else None
    return float(exp) if isinstance(exp, int | float) else None


@dataclasses.dataclass
class _Position:
    offset: int | None
    epoch: str


class ChannelPositions:
    """The last offset delivered per channel and its epoch: dedupe and resubscribe fields."""

    def __init__(self) -> None:
        self.positions: dict[str, _Position] = {}

    def set(self, channel: str, offset: int, epoch: str = "") -> None:
        """Start ``channel`` at ``offset`` (a subscribe with ``since``)."""
        self.positions[channel] = _Position(offset, epoch)

    def discard(self, channel: str) -> None:
        """Forget ``channel``."""
        self.positions.pop(channel, None)

    def resubscribe_fields(self, channel: str) -> dict[str, Any]:
        """``since`` and ``epoch`` for a resubscribe; empty before a position is known."""
        p = self.positions.get(channel)
        if p is None or p.offset is None:
            return {}
        return {"since": p.offset, "epoch": p.epoch} if p.epoch else {"since": p.offset}

    def accept(self, channel: str, offset: int | None) -> bool:
        """Whether a message at ``offset`` is new (then it becomes the position)."""
        if offset is None:
            return True
        p = self.positions.get(channel)
        if p is None:
            self.positions[channel] = _Position(offset, "")
            return True
        if p.offset is not None and offset <= p.offset:
            return False
        p.offset = offset
        return True

    def needs_epoch(self, channel: str) -> bool:
        """Messages arrived but the epoch is unknown (the channel was empty when joined)."""
        p = self.positions.get(channel)
        return p is not None and not p.epoch and (p.offset or 0) > 0

    def learn_epoch(self, channel: str, position: dict[str, Any]) -> None:
        """Take the epoch of a position read after the messages delivered so far."""
        p = self.positions.get(channel)
        epoch, offset = position.get("epoch"), position.get("offset")
        if p and not p.epoch and epoch and isinstance(offset, int) and offset >= (p.offset or 0):
            p.epoch = epoch

    def apply_subscribe(
        self, channel: str, result: dict[str, Any], asked: bool
    ) -> tuple[list[dict[str, Any]], bool | None]:
        """Apply a subscribe reply.

        Returns:
            The recovered messages still to deliver (new ones, in order), and whether
            recovery succeeded (None when it was not asked for).
        """
        offset = result.get("offset")
        if not isinstance(offset, int):
            self.positions.pop(channel, None)  # no history: nothing to track
            return [], bool(result.get("recovered")) if asked else None
        epoch = result.get("epoch") or ""
        if asked and result.get("recovered"):
            items = result.get("messages") or []
            fresh = [m for m in items if self.accept(channel, m.get("offset"))]
            p = self.positions.setdefault(channel, _Position(0, epoch))
            p.offset, p.epoch = max(p.offset or 0, offset), epoch
            return fresh, True
        self.positions[channel] = _Position(offset, epoch)
        return [], False if asked else None


# -- subscriptions ---------------------------------------------------------------------

MessageHandler = Callable[[Message], object]
PresenceHandler = Callable[[PresenceEvent], object]
RecoveryHandler = Callable[[Recovery], object]


class Subscription:
    """One subscription; iterate it for messages when no ``on_message`` was given."""

    def __init__(
        self,
        client: Client,
        channel: str,
        on_message: MessageHandler | None,
        on_join: PresenceHandler | None,
        on_leave: PresenceHandler | None,
        on_recover: RecoveryHandler | None,
    ) -> None:
        self.client = client
        self.channel = channel
        self.on_message, self.on_join, self.on_leave = on_message, on_join, on_leave
        self.on_recover = on_recover
        self.active = True
        self.result: dict[str, Any] | None = None
        self.ready: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._queue: asyncio.Queue[Message | None] | None = None
        if on_message is None:
            self._queue = asyncio.Queue()

    async def unsubscribe(self) -> None:
        """Leave the channel (on the wire once its last subscription leaves)."""
        await self.client._unsubscribe(self)

    def __aiter__(self) -> AsyncIterator[Message]:
        return self

    async def __anext__(self) -> Message:
        if self._queue is None:
            raise TypeError("a subscription with on_message is not iterable")
        message = await self._queue.get()
        if message is None:
            raise StopAsyncIteration
        return message

    def _deliver(self, message: Message) -> None:
        if self._queue is not None:
            self._queue.put_nowait(message)
        else:
            _call(self.on_message, message)

    def _end(self) -> None:
        self.active = False
        if self._queue is not None:
            self._queue.put_nowait(None)
        if not self.ready.done():
            self.ready.set_exception(ClientError("closed", "unsubscribed"))
            self.ready.exception()  # retrieved: refusals are raised by subscribe()


@dataclasses.dataclass(eq=False)
class _Channel:
    name: str
    subs: list[Subscription] = dataclasses.field(default_factory=list)
    sent_on: ClientConnection | None = None
    result: dict[str, Any] | None = None


@dataclasses.dataclass
class _Pending:
    future: asyncio.Future[dict[str, Any]]
    timer: asyncio.TimerHandle
    on_result: Callable[[dict[str, Any]], None] | None = None


def _call(fn: Callable[..., object] | None, *args: Any) -> None:
    """Run an application callback; one that raises must not break the client."""
    if fn is not None:
        try:
            fn(*args)
        except Exception:
            logger.exception("wshub client: a callback raised")


# -- the client ------------------------------------------------------------------------


class Client:
    """A protocol client that reconnects, resubscribes and recovers by itself.

    Args:
        url: the protocol endpoint, e.g. ``ws://127.0.0.1:8000/ws``.
        token: credentials for the first frame.
        get_token: asked before every connection and refresh, with ``True`` after a
            4001/4003; may be async.
        backoff_base, backoff_cap: reconnect delay ceilings in seconds (0.5 s doubling to 20 s).
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
        self.request_timeout, self.connect_timeout = request_timeout, connect_timeout
        self.ping_grace, self.refresh_margin = ping_grace, refresh_margin
        self.on_state, self.on_error, self.on_message = on_state, on_error, on_message
        self.connect_options = connect_options
        self.state = ClientState.DISCONNECTED
        self.welcome: dict[str, Any] | None = None
        self.last_close: tuple[int, str] | None = None
        self.positions = ChannelPositions()
        self._channels: dict[str, _Channel] = {}
        self._pending: dict[int, _Pending] = {}
        self._ids = itertools.count(1)
        self._ws: ClientConnection | None = None
        self._task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._wanted = False
        self._wake = asyncio.Event()
        self._changed = asyncio.Event()
        self._stop_error: ClientError | None = None
        self._rejected: tuple[str | None, int, str] | None = None
        self._current_token: str | None = None
        self._epoch_reads: set[str] = set()

    # -- life --------------------------------------------------------------------------

    async def connect(self) -> dict[str, Any]:
        """Start the client (it keeps reconnecting until `close`) and wait for ``welcome``.

        Returns:
            The ``welcome`` frame (``client``, ``user``, ``ping``, ``version``).

        Raises:
            ClientError: ``unauthorized``/``forbidden`` when the server refused the
                token and no other came, ``closed`` when `close` was called meanwhile.
        """
        if not self._wanted:
            self._wanted, self._stop_error = True, None
            self._wake.clear()
            self._task = asyncio.create_task(self._run(), name="wshub-client")
        await self._wait_connected()
        assert self.welcome is not None
        return self.welcome

    async def close(self) -> None:
        """Close the connection and stop reconnecting; iterating subscriptions end."""
        self._wanted = False
        self._wake.set()
        ws = self._ws
        if ws is not None:
            await ws.close()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for task in list(self._tasks):
            task.cancel()
        self._fail_pending(ClientError("closed", "the client was closed"))
        for channel in self._channels.values():
            for sub in channel.subs:
                if sub._queue is not None:
                    sub._queue.put_nowait(None)
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
        entry = self._channels.get(channel)
        if entry is None:
            entry = self._channels[channel] = _Channel(channel)
            if since is not None:
                self.positions.set(channel, since, epoch or "")
        entry.subs.append(sub)
        if entry.result is not None:
            self._subscribed(sub, entry.result)
        elif self._ws is not None and self.state is ClientState.CONNECTED:
            await self._send_subscribe(self._ws, entry)
        if self._wanted:
            try:
                await asyncio.wait_for(asyncio.shield(sub.ready), self.request_timeout)
            except TimeoutError:
                await sub.unsubscribe()
                raise ClientError("timeout", f"no subscribe reply for {channel!r}") from None
        return sub

    async def publish(self, channel: str, data: Any) -> int | None:
        """Publish ``data``; returns its offset when the channel keeps history."""
        result = await self.request({"op": "publish", "channel": channel, "data": data})
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
        fresh = token if token is not None else await self._resolve_token()
        if not fresh:
            raise ClientError("unauthorized", "no token to refresh with")
        result = await self.request({"op": "refresh", "token": fresh})
        self._current_token = fresh
        expires = result.get("expires")
        self._schedule_refresh(float(expires) if isinstance(expires, int | float) else None)
        return expires if isinstance(expires, int | float) else None

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
        return await self._send_request(ws, frame, on_result)

    # -- internals: connections ----------------------------------------------------------

    async def _run(self) -> None:
        attempt = 0
        while self._wanted:
            self._set_state(StateChange(ClientState.CONNECTING, attempt=attempt))
            outcome = await self._attempt()
            if outcome is None:
                return  # stopped
            code, reason, welcomed = outcome
            self.last_close = (code, reason)
            attempt = 0 if welcomed else attempt
            if not self._wanted:
                break
            policy = reconnect_policy(code)
            if policy == "reauth":
                self._rejected = (self._current_token, code, reason)
                if self.get_token is None:
                    self._stop(code, reason)
                    return
            delay = backoff_delay(attempt, self.backoff_base, self.backoff_cap)
            if policy == "later":
                delay = max(delay, self.backoff_base)
            attempt += 1
            change = StateChange(ClientState.DISCONNECTED, code, reason, True, delay, attempt)
            self._set_state(change)
            logger.debug("wshub client: closed %s %s; reconnecting in %.2f s", code, reason, delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)

    async def _attempt(self) -> tuple[int, str, bool] | None:
        """One connection, from token to close; None when the client stopped instead."""
        try:
            token = await self._resolve_token()
        except Exception as exc:
            self._report(ClientError("unauthorized", f"get_token failed: {exc!r}"))
            return 1006, "get_token failed", False
        if self._rejected is not None and token == self._rejected[0]:
            self._stop(self._rejected[1], self._rejected[2])
            return None
        self._current_token = token
        ws: ClientConnection | None = None
        try:
            async with asyncio.timeout(self.connect_timeout):
                ws = await ws_connect(
                    self.url,
                    subprotocols=[Subprotocol(JSON_SUBPROTOCOL)],
                    open_timeout=None,
                    **self.connect_options,
                )
                first: dict[str, Any] = {"op": "connect"}
                if token:
                    first["token"] = token
                await ws.send(orjson.dumps(first).decode())
                welcome, rest = await self._read_welcome(ws)
        except ConnectionClosed as exc:
            rcvd = exc.rcvd
            return (rcvd.code, rcvd.reason, False) if rcvd else (1006, str(exc), False)
        except InvalidURI as exc:
            self._stop(1006, str(exc), "bad_url")
            return None
        except TimeoutError:
            if ws is not None:
                ws.transport.abort()
            return 1006, f"no welcome within {self.connect_timeout} s", False
        except (OSError, InvalidHandshake) as exc:
            return 1006, str(exc) or repr(exc), False
        code, reason = await self._session(ws, welcome, rest)
        return code, reason, True

    async def _read_welcome(self, ws: ClientConnection) -> tuple[dict[str, Any], list[Any]]:
        while True:
            message = await ws.recv()
            frames = split_frames(message) if isinstance(message, str) else []
            for index, frame in enumerate(frames):
                if isinstance(frame, dict) and frame.get("op") == "welcome":
                    return frame, frames[index + 1 :]

    async def _session(
        self, ws: ClientConnection, welcome: dict[str, Any], rest: list[Any]
    ) -> tuple[int, str]:
        """Serve one welcomed connection until it ends; returns its close code and reason."""
        loop = asyncio.get_running_loop()
        self._ws, self.welcome, self._rejected = ws, welcome, None
        try:
            for entry in list(self._channels.values()):
                await self._send_subscribe(ws, entry)
            self._set_state(StateChange(ClientState.CONNECTED))
            self._schedule_refresh(token_expiry(self._current_token))
            for frame in rest:
                await self._on_frame(ws, frame)
            ping = welcome.get("ping")
            limit = float(ping) + self.ping_grace if isinstance(ping, int | float) else None
            try:
                async with asyncio.timeout(limit) as deadline:
                    async for message in ws:
                        if limit is not None:
                            deadline.reschedule(loop.time() + limit)
                        await self._on_data(ws, message)
            except TimeoutError:
                ws.transport.abort()
                return 1006, f"heartbeat timeout: nothing from the server for {limit} s"
            except ConnectionClosed:
                pass
            return ws.close_code or 1006, ws.close_reason or ""
        finally:
            self._ws, self.welcome = None, None
            self._fail_pending(ClientError("disconnected", "the connection closed"))
            self._epoch_reads.clear()
            for entry in self._channels.values():
                entry.sent_on = None
            self._cancel_tasks("refresh")

    def _stop(self, code: int, reason: str, kind: str | None = None) -> None:
        self._wanted = False
        kind = kind or ("forbidden" if code == 4003 else "unauthorized")
        error = ClientError(kind, f"{reason or kind}; not reconnecting without a new token", code)
        self._stop_error = error
        self._fail_pending(ClientError("closed", f"stopped after {code} {reason}"))
        self._set_state(StateChange(ClientState.DISCONNECTED, code, reason))
        self._report(error)

    async def _resolve_token(self) -> str | None:
        if self.get_token is None:
            return self.token
        token = self.get_token(self._rejected is not None)
        if inspect.isawaitable(token):
            token = await token
        return token

    async def _wait_connected(self) -> ClientConnection:
        while True:
            if self._stop_error is not None:
                raise self._stop_error
            if not self._wanted:
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
        _call(self.on_state, change)

    def _report(self, error: ClientError) -> None:
        if self.on_error is None:
            logger.warning("wshub client: %s", error)
        _call(self.on_error, error)

    # -- internals: frames -------------------------------------------------------------

    async def _send_request(
        self,
        ws: ClientConnection,
        frame: dict[str, Any],
        on_result: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        request_id = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = loop.create_future()

        def expire() -> None:
            self._pending.pop(request_id, None)
            if not future.done():
                message = f"no reply to {frame.get('op')} within {self.request_timeout} s"
                future.set_exception(ClientError("timeout", message))

        timer = loop.call_later(self.request_timeout, expire)
        self._pending[request_id] = _Pending(future, timer, on_result)
        try:
            await ws.send(orjson.dumps({**frame, "id": request_id}).decode())
        except ConnectionClosed:
            self._pending.pop(request_id, None)
            timer.cancel()
            raise ClientError("disconnected", "the connection closed") from None
        return await future

    def _fail_pending(self, error: ClientError) -> None:
        pending, self._pending = self._pending, {}
        for item in pending.values():
            item.timer.cancel()
            if not item.future.done():
                item.future.set_exception(error)

    async def _on_data(self, ws: ClientConnection, message: str | bytes) -> None:
        if not isinstance(message, str):
            self._report(ClientError("bad_frame", "binary frame on a JSON connection"))
            return
        for frame in split_frames(message):
            await self._on_frame(ws, frame)

    async def _on_frame(self, ws: ClientConnection, frame: Any) -> None:
        if not isinstance(frame, dict):
            return
        if frame.get("id") is not None and ("result" in frame or "error" in frame):
            self._on_reply(frame)
            return
        op = frame.get("op")
        if op == "message":
            self._on_message(frame)
        elif op == "ping":
            with contextlib.suppress(ConnectionClosed):
                await ws.send('{"op":"pong"}')
        elif op in ("join", "leave"):
            self._on_presence(frame)
        elif isinstance(frame.get("error"), dict):
            error = frame["error"]
            self._report(ClientError(str(error.get("code")), str(error.get("message"))))

    def _on_reply(self, frame: dict[str, Any]) -> None:
        pending = self._pending.pop(frame["id"], None) if isinstance(frame["id"], int) else None
        if pending is None:
            return  # timed out already
        pending.timer.cancel()
        if pending.future.done():
            return
        error = frame.get("error")
        if isinstance(error, dict):
            code, message = str(error.get("code")), str(error.get("message"))
            pending.future.set_exception(ClientError(code, message))
            return
        result = frame.get("result")
        result = result if isinstance(result, dict) else {}
        _call(pending.on_result, result)  # synchronously: recovered before live messages
        pending.future.set_result(result)

    def _on_message(self, frame: dict[str, Any]) -> None:
        channel = frame.get("channel")
        if not isinstance(channel, str):
            return
        entry = self._channels.get(channel)
        offset = frame.get("offset")
        if entry is not None and not self.positions.accept(
            channel, offset if isinstance(offset, int) else None
        ):
            return  # a duplicate of a recovered message
        message = Message.from_frame(frame)
        _call(self.on_message, message)
        if entry is not None:
            for sub in list(entry.subs):
                sub._deliver(message)
            if self.positions.needs_epoch(channel):
                self._read_epoch(channel)

    def _on_presence(self, frame: dict[str, Any]) -> None:
        entry = self._channels.get(str(frame.get("channel")))
        if entry is None:
            return
        event = PresenceEvent(
            str(frame["op"]), entry.name, str(frame.get("client")), frame.get("user")
        )
        for sub in list(entry.subs):
            _call(sub.on_join if event.op == "join" else sub.on_leave, event)

    # -- internals: subscriptions ------------------------------------------------------

    async def _send_subscribe(self, ws: ClientConnection, entry: _Channel) -> None:
        if entry.sent_on is ws:
            return
        entry.sent_on = ws
        fields = self.positions.resubscribe_fields(entry.name)
        asked = "since" in fields
        frame = {"op": "subscribe", "channel": entry.name, **fields}

        def applied(result: dict[str, Any]) -> None:
            if self._channels.get(entry.name) is entry:
                self._on_subscribe_result(entry, result, asked)

        task = asyncio.ensure_future(self._send_request(ws, frame, applied))
        task.add_done_callback(lambda done: self._on_subscribe_done(ws, entry, done))
        await asyncio.sleep(0)  # let the frame go out before the next one

    def _on_subscribe_done(
        self, ws: ClientConnection, entry: _Channel, done: asyncio.Future[dict[str, Any]]
    ) -> None:
        error = done.exception() if not done.cancelled() else None
        if not isinstance(error, ClientError) or self._channels.get(entry.name) is not entry:
            return
        if error.code in ("disconnected", "closed"):
            return  # resubscribed on the next connection
        if error.code in ("timeout", "unavailable", "internal", "rate_limited"):
            delay = backoff_delay(2, self.backoff_base, self.backoff_cap)

            def retry() -> None:
                if self._ws is ws and entry.sent_on is ws:
                    entry.sent_on = None
                    self._spawn(self._send_subscribe(ws, entry), "subscribe")

            asyncio.get_running_loop().call_later(delay, retry)
        else:
            del self._channels[entry.name]  # refused: never asked again
            self.positions.discard(entry.name)
        for sub in entry.subs:
            if not sub.ready.done():
                sub.ready.set_exception(error)
                sub.ready.exception()  # retrieved: subscribe() raises it to its caller
        self._report(error)

    def _on_subscribe_result(self, entry: _Channel, result: dict[str, Any], asked: bool) -> None:
        messages, recovered = self.positions.apply_subscribe(entry.name, result, asked)
        entry.result = result
        for item in messages:
            message = Message.from_frame(item, recovered=True)
            _call(self.on_message, message)
            for sub in list(entry.subs):
                sub._deliver(message)
        for sub in list(entry.subs):
            self._subscribed(sub, result)
        if recovered is not None:
            offset, epoch = result.get("offset"), result.get("epoch")
            recovery = Recovery(entry.name, recovered, len(messages), offset, epoch)
            if not recovered:
                logger.info("wshub client: %s could not be recovered", entry.name)
            for sub in list(entry.subs):
                _call(sub.on_recover, recovery)
        if self.positions.needs_epoch(entry.name):
            self._read_epoch(entry.name)

    @staticmethod
    def _subscribed(sub: Subscription, result: dict[str, Any]) -> None:
        sub.result = result
        if not sub.ready.done():
            sub.ready.set_result(result)

    async def _unsubscribe(self, sub: Subscription) -> None:
        entry = self._channels.get(sub.channel)
        sub._end()
        if entry is None or sub not in entry.subs:
            return
        entry.subs.remove(sub)
        if entry.subs:
            return
        del self._channels[sub.channel]
        self.positions.discard(sub.channel)
        ws = self._ws
        if ws is not None and self.state is ClientState.CONNECTED:
            with contextlib.suppress(ClientError):
                await self._send_request(ws, {"op": "unsubscribe", "channel": sub.channel})

    def _read_epoch(self, channel: str) -> None:
        """The channel was empty when joined: read its epoch so that recovery can work."""
        if channel in self._epoch_reads or self.state is not ClientState.CONNECTED:
            return
        self._epoch_reads.add(channel)

        async def read() -> None:
            try:
                self.positions.learn_epoch(
                    channel, await self.request({"op": "history", "channel": channel, "limit": 0})
                )
            except ClientError:
                pass
            finally:
                self._epoch_reads.discard(channel)

        self._spawn(read(), "epoch")

    def _schedule_refresh(self, expires_at: float | None) -> None:
        self._cancel_tasks("refresh")
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

        self._spawn(refresh_later(), "refresh")

    def _spawn(self, coro: Awaitable[Any], name: str) -> None:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        task.set_name(f"wshub-client-{name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _cancel_tasks(self, name: str) -> None:
        for task in list(self._tasks):
            if task.get_name() == f"wshub-client-{name}":
                task.cancel()
