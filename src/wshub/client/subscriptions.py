"""Subscription bookkeeping: positions per channel, `Subscription`, and the channel registry.

Subscriptions survive reconnects: each channel is resubscribed with ``since`` and
``epoch``, recovered messages are delivered before live ones, and duplicates are
dropped by offset.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol

from websockets.asyncio.client import ClientConnection

from wshub.client.models import (
    ClientError,
    ClientState,
    Message,
    MessageHandler,
    PresenceEvent,
    PresenceHandler,
    Recovery,
    RecoveryHandler,
    run_callback,
)
from wshub.client.positions import ChannelPositions as ChannelPositions
from wshub.client.reconnect import backoff_delay
from wshub.client.recovery import SendRequest as SendRequest
from wshub.client.recovery import apply_gap, read_pages

logger = logging.getLogger("wshub.client")


class SubscriptionHost(Protocol):
    """The client members that `Subscription` and `ChannelRegistry` use."""

    @property
    def positions(self) -> ChannelPositions: ...
    @property
    def state(self) -> ClientState: ...
    @property
    def on_message(self) -> MessageHandler | None: ...
    @property
    def backoff_base(self) -> float: ...
    @property
    def backoff_cap(self) -> float: ...
    async def request(self, frame: dict[str, Any]) -> dict[str, Any]: ...
    async def _unsubscribe(self, sub: Subscription) -> None: ...


class Subscription:
    """One subscription; iterate it for messages when no ``on_message`` was given."""

    def __init__(
        self,
        client: SubscriptionHost,
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
            run_callback(self.on_message, message)

    def _stop_iteration(self) -> None:
        if self._queue is not None:
            self._queue.put_nowait(None)

    def _end(self) -> None:
        self.active = False
        self._stop_iteration()
        if not self.ready.done():
            self.ready.set_exception(ClientError("closed", "unsubscribed"))
            self.ready.exception()  # retrieved: refusals are raised by subscribe()


@dataclasses.dataclass(eq=False)
class _Channel:
    name: str
    subs: list[Subscription] = dataclasses.field(default_factory=list)
    sent_on: ClientConnection | None = None
    result: dict[str, Any] | None = None
    #: Live ``message`` frames held while the rest of a recovery is read (None: not).
    held: list[dict[str, Any]] | None = None


class ChannelRegistry:
    """The channels subscribed to, their subscriptions, and what each connection owes them.

    Args:
        client: read for ``positions``, ``state``, ``on_message`` and the backoff
            settings; its ``request`` reads epochs.
        send: sends a request on a given connection and waits for the reply.
        connection: returns the current connection, None between connections.
        report: hands an error nobody else sees to ``on_error``.
        spawn: runs a coroutine as a named background task of the client.
    """

    def __init__(
        self,
        client: SubscriptionHost,
        *,
        send: SendRequest,
        connection: Callable[[], ClientConnection | None],
        report: Callable[[ClientError], None],
        spawn: Callable[[Awaitable[Any], str], None],
    ) -> None:
        self._client = client
        self._send, self._connection = send, connection
        self._report, self._spawn = report, spawn
        self._channels: dict[str, _Channel] = {}

    def __contains__(self, channel: object) -> bool:
        """Whether ``channel`` has subscriptions (a refused one is dropped)."""
        return channel in self._channels

    def _connected(self) -> ClientConnection | None:
        ws = self._connection()
        return ws if ws is not None and self._client.state is ClientState.CONNECTED else None

    async def add(self, sub: Subscription, since: int | None, epoch: str | None) -> None:
        """Register ``sub``; its channel is subscribed on the wire if it is new and connected.

        Args:
            since, epoch: where a new channel starts (ignored if the channel is known).
        """
        entry = self._channels.get(sub.channel)
        if entry is None:
            entry = self._channels[sub.channel] = _Channel(sub.channel)
            if since is not None:
                self._client.positions.set(sub.channel, since, epoch or "")
        entry.subs.append(sub)
        if entry.result is not None:
            self._subscribed(sub, entry.result)
        elif (ws := self._connected()) is not None:
            await self._send_subscribe(ws, entry)

    async def unsubscribe(self, sub: Subscription) -> None:
        """End ``sub``; the channel is left on the wire once its last subscription leaves."""
        entry = self._channels.get(sub.channel)
        sub._end()
        if entry is None or sub not in entry.subs:
            return
        entry.subs.remove(sub)
        if entry.subs:
            return
        del self._channels[sub.channel]
        self._client.positions.discard(sub.channel)
        ws = self._connected()
        if ws is not None:
            with contextlib.suppress(ClientError):
                await self._send(ws, {"op": "unsubscribe", "channel": sub.channel}, None)

    def adopt(self, ws: ClientConnection, subscribed: object) -> None:
        """Take the server-side subscriptions a ``welcome`` lists (``on_connect`` hooks).

        A channel not known yet is registered without subscriptions, at the position the
        welcome gives: its messages go to the client's ``on_message``, a `Client.subscribe`
        to it is answered at once, and after a reconnect it is resubscribed with ``since``
        like any other. A known channel is resubscribed as usual (with ``since``, that is
        a recovery on the server's membership). A channel only the server had subscribed
        (no `Subscription`) that the welcome no longer lists is forgotten.
        """
        listed: dict[str, dict[str, Any]] = {}
        for item in subscribed if isinstance(subscribed, list) else ():
            if isinstance(item, dict) and isinstance(item.get("channel"), str):
                listed[item["channel"]] = item
        positions = self._client.positions
        for name, entry in list(self._channels.items()):
            if not entry.subs and name not in listed:
                del self._channels[name]
                positions.discard(name)
        for name, item in listed.items():
            if name in self._channels:
                continue
            offset, epoch = item.get("offset"), item.get("epoch")
            result: dict[str, Any] = {}
            if isinstance(offset, int):
                epoch = epoch if isinstance(epoch, str) else ""
                positions.set(name, offset, epoch)
                result = {"offset": offset, "epoch": epoch}
            self._channels[name] = _Channel(name, sent_on=ws, result=result)

    async def resubscribe(self, ws: ClientConnection) -> None:
        """Subscribe every channel on a new connection, asking for what was missed."""
        for entry in list(self._channels.values()):
            await self._send_subscribe(ws, entry)

    def detach(self) -> None:
        """The connection ended: every channel is owed a subscribe on the next one."""
        for entry in self._channels.values():
            entry.sent_on = None
            entry.held = None  # not delivered, so recovered again on the next connection

    def stop_iterators(self) -> None:
        """The client closed: end the iteration of every subscription without a callback."""
        for channel in self._channels.values():
            for sub in channel.subs:
                sub._stop_iteration()

    def on_message(self, frame: dict[str, Any]) -> None:
        """Deliver a ``message`` frame, unless it duplicates a recovered message.

        A ``gap`` frame (the server lost publications it could not refill) comes this
        way too, in order with the messages: see `on_gap`.
        """
        channel = frame.get("channel")
        if not isinstance(channel, str):
            return
        positions = self._client.positions
        entry = self._channels.get(channel)
        if entry is not None and entry.held is not None:
            entry.held.append(frame)  # delivered once the recovery's pages are read
            return
        if frame.get("op") == "gap":
            self.on_gap(channel, frame)
            return
        offset = frame.get("offset")
        if entry is not None and not positions.accept(
            channel, offset if isinstance(offset, int) else None
        ):
            return  # a duplicate of a recovered message
        message = Message.from_frame(frame)
        run_callback(self._client.on_message, message)
        if entry is not None:
            for sub in list(entry.subs):
                sub._deliver(message)

    def on_gap(self, channel: str, frame: dict[str, Any]) -> None:
        """``{"op":"gap","channel","epoch","offset"}``: messages after our position were
        lost on the server's side; what follows continues after ``offset`` in ``epoch``.

        Unless our position is already there (same epoch, at or past ``offset``), the
        position moves to the frame's and each subscription's ``on_recover`` gets
        ``Recovery(recovered=False)``: reload the channel's state from the application.
        """
        entry = self._channels.get(channel)
        recovery = None if entry is None else apply_gap(self._client.positions, channel, frame)
        if entry is None or recovery is None:
            return
        for sub in list(entry.subs):
            run_callback(sub.on_recover, recovery)

    def on_presence(self, frame: dict[str, Any]) -> None:
        """Hand a ``join`` or ``leave`` frame to the channel's subscriptions."""
        entry = self._channels.get(str(frame.get("channel")))
        if entry is None:
            return
        event = PresenceEvent(
            str(frame["op"]), entry.name, str(frame.get("client")), frame.get("user")
        )
        for sub in list(entry.subs):
            run_callback(sub.on_join if event.op == "join" else sub.on_leave, event)

    async def _send_subscribe(self, ws: ClientConnection, entry: _Channel) -> None:
        if entry.sent_on is ws:
            return
        entry.sent_on = ws
        fields = self._client.positions.resubscribe_fields(entry.name)
        asked = "since" in fields
        frame = {"op": "subscribe", "channel": entry.name, **fields}
        if asked and entry.held is None:
            # Live messages may come before the reply (the server subscribed the channel
            # itself, in an on_connect hook): held until the recovered ones are delivered.
            entry.held = []

        def applied(result: dict[str, Any]) -> None:
            if self._channels.get(entry.name) is entry:
                self._on_subscribe_result(entry, result, asked)

        task = asyncio.ensure_future(self._send(ws, frame, applied))
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
            delay = backoff_delay(2, self._client.backoff_base, self._client.backoff_cap)

            def retry() -> None:
                if self._connection() is ws and entry.sent_on is ws:
                    entry.sent_on = None
                    self._spawn(self._send_subscribe(ws, entry), "subscribe")

            asyncio.get_running_loop().call_later(delay, retry)
        else:
            del self._channels[entry.name]  # refused: never asked again
            self._client.positions.discard(entry.name)
        raised = False
        for sub in entry.subs:
            if not sub.ready.done():
                sub.ready.set_exception(error)
                sub.ready.exception()  # retrieved: subscribe() raises it to its caller
                raised = True
        if raised:  # the caller has it: report only what nobody else sees
            logger.debug("wshub client: subscribing to %s failed: %s", entry.name, error)
        else:
            self._report(error)

    def _on_subscribe_result(self, entry: _Channel, result: dict[str, Any], asked: bool) -> None:
        positions = self._client.positions
        messages, recovered = positions.apply_subscribe(entry.name, result, asked)
        self._deliver_recovered(entry, messages)
        held = entry.held or []
        if recovered and result.get("more") and isinstance(result.get("offset"), int):
            # Paginated: read the rest with `history`, holding live messages meanwhile
            # (the server sends those after this reply, before the pages we ask for).
            ws = entry.sent_on
            entry.held = held
            if ws is not None:
                self._spawn(self._read_pages(ws, entry, result, len(messages)), "recovery")
            return
        entry.held = None
        self._recovery_done(entry, result, recovered, len(messages))
        for frame in held:  # live ones that came before the reply; duplicates dropped
            self.on_message(frame)

    def _deliver_recovered(self, entry: _Channel, items: list[dict[str, Any]]) -> None:
        for item in items:
            message = Message.from_frame(item, recovered=True)
            run_callback(self._client.on_message, message)
            for sub in list(entry.subs):
                sub._deliver(message)

    def _recovery_done(
        self, entry: _Channel, result: dict[str, Any], recovered: bool | None, count: int
    ) -> None:
        entry.result = result
        for sub in list(entry.subs):
            self._subscribed(sub, result)
        if recovered is not None:
            offset, epoch = result.get("offset"), result.get("epoch")
            recovery = Recovery(entry.name, recovered, count, offset, epoch)
            if not recovered:
                logger.info("wshub client: %s could not be recovered", entry.name)
            for sub in list(entry.subs):
                run_callback(sub.on_recover, recovery)

    async def _read_pages(
        self, ws: ClientConnection, entry: _Channel, result: dict[str, Any], count: int
    ) -> None:
        """Read a paginated recovery's rest with ``history``, then deliver the held live ones.

        Pages are read after the last offset delivered, up to the subscribe reply's
        ``offset``; live messages past it were held in ``entry.held`` meanwhile and
        follow, duplicates dropped by offset. A gap (the history moved on, another
        epoch) or a failed read ends it as not recovered.
        """

        def current() -> bool:
            return (
                self._channels.get(entry.name) is entry
                and entry.sent_on is ws
                and entry.held is not None
            )

        outcome = await read_pages(
            self._send,
            ws,
            entry.name,
            result,
            self._client.positions,
            current=current,
            deliver=lambda items: self._deliver_recovered(entry, items),
            report=self._report,
        )
        if outcome is None or entry.held is None:
            return
        ok, count = outcome[0], count + outcome[1]
        # No await from here on: held live messages follow the recovered ones, in order.
        held, entry.held = entry.held, None
        self._recovery_done(entry, result, ok, count)
        for frame in held:
            self.on_message(frame)

    @staticmethod
    def _subscribed(sub: Subscription, result: dict[str, Any]) -> None:
        sub.result = result
        if not sub.ready.done():
            sub.ready.set_result(result)


async def wait_subscribed(sub: Subscription, within: float) -> None:
    """Wait ``within`` seconds for the reply to ``sub``'s subscribe; else unsubscribe, raise."""
    try:
        await asyncio.wait_for(asyncio.shield(sub.ready), within)
    except TimeoutError:
        await sub.unsubscribe()
        raise ClientError("timeout", f"no subscribe reply for {sub.channel!r}") from None
