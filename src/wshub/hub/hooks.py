"""Connect hooks (``@hub.on_connect``): application code run as a protocol connection opens.

A hook is ``async def hook(conn: Connection) -> None``. Hooks run in registration
order, after authentication and before the ``welcome`` frame, on protocol-endpoint
connections only (a library-mode endpoint runs its own code in ``async with
hub.connect(ws)`` anyway). A hook may ``await conn.subscribe(channel)``: the client then
receives the channel's messages without asking, and the welcome lists these
server-side subscriptions as ``"subscribed"``, each with the channel's position
(``offset``, ``epoch``) when it keeps history, so that clients can recover it after a
reconnect like a subscription of their own. A hook that raises
`wshub.core.errors.RPCError` refuses the connection: it is closed with 4003 and the
error's message as reason; any other exception closes it with 1011 (and is logged).

Nothing may reach the client before its welcome: while the hooks run (and the
positions are read), every frame fanned out to the connection is held back, in
arrival order, and queued right after the welcome; those at or before a listed
position are dropped (the client starts there, as after a subscribe without
``since``). A hook should subscribe with ``conn.subscribe`` (not with a recovering
subscribe of its own).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from wshub.core.errors import BrokerUnavailable, CloseCode, RPCError
from wshub.core.sendqueue import Frame
from wshub.hub.connection import Connection
from wshub.hub.recovery import Recovery

__all__ = ["ConnectHook", "ConnectHooks"]

logger = logging.getLogger("wshub.hooks")

ConnectHook = Callable[[Connection], Awaitable[None]]
F = TypeVar("F", bound=ConnectHook)

Held = tuple[int | None, Frame]


class _Tap(list[Held]):
    """What fan-out appends a held frame to: it goes to the shared log, with its channel."""

    def __init__(self, log: list[tuple[str, int | None, Frame]], channel: str) -> None:
        super().__init__()
        self._log = log
        self._channel = channel

    def append(self, item: Held, /) -> None:
        self._log.append((self._channel, item[0], item[1]))


class _HoldAll(dict[str, list[Held]]):
    """A ``conn.recovering`` that holds back the frames of every channel, in one log.

    Fan-out (`Delivery.on_publication`) appends to ``conn.recovering[channel]`` when
    ``channel in conn.recovering``: here every channel is, and every frame lands in
    `log` in arrival order.
    """

    def __init__(self) -> None:
        super().__init__()
        self.log: list[tuple[str, int | None, Frame]] = []

    def __bool__(self) -> bool:
        return True

    def __contains__(self, key: object, /) -> bool:
        return True

    def __missing__(self, channel: str) -> list[Held]:
        return _Tap(self.log, channel)


class ConnectHooks:
    """The ``on_connect`` hooks of one hub."""

    def __init__(self) -> None:
        self.hooks: list[ConnectHook] = []

    def __bool__(self) -> bool:
        return bool(self.hooks)

    def add(self, hook: F) -> F:
        """Register ``hook`` (``@hub.on_connect``); returns it unchanged.

        Raises:
            TypeError: ``hook`` is not an ``async def``.
        """
        is_async: bool = inspect.iscoroutinefunction(hook)  # (no narrowing: F stays F)
        if not is_async:
            raise TypeError("an on_connect hook must be an async def taking (conn)")
        self.hooks.append(hook)
        return hook

    async def welcome(
        self,
        conn: Connection,
        recovery: Recovery,
        send_welcome: Callable[[list[dict[str, Any]]], None],
    ) -> bool:
        """Run the hooks, then call ``send_welcome`` with the server-side subscriptions.

        Frames held back meanwhile are queued right after ``send_welcome`` returns,
        with no await in between (see the module docstring).

        Returns:
            False when a hook refused the connection (closed with 4003), failed (closed
            with 1011), or the connection ended meanwhile: no welcome was sent.
        """
        if not self.hooks:
            send_welcome([])
            return True
        before = set(conn.channels)
        hold = _HoldAll()
        saved, conn.recovering = conn.recovering, hold
        try:
            for hook in self.hooks:
                await hook(conn)
                if not conn.is_open:
                    return False
            subscribed, floors = await _positions(conn, before, recovery)
        except RPCError as exc:
            logger.info(
                "connection %s (user %s): refused by an on_connect hook: %s %s",
                conn.id,
                conn.user,
                exc.code,
                exc.message,
                extra={"connection": conn.id, "user": conn.user},
            )
            conn.close(CloseCode.FORBIDDEN, exc.message or exc.code)
            return False
        except Exception:
            logger.exception(
                "connection %s (user %s): an on_connect hook raised; closed with 1011",
                conn.id,
                conn.user,
                extra={"connection": conn.id, "user": conn.user},
            )
            conn.close(CloseCode.INTERNAL_ERROR, "internal error")
            return False
        finally:
            conn.recovering = saved
        if not conn.is_open:
            return False
        # No await from here on: the welcome first, then what was held, in order.
        send_welcome(subscribed)
        for channel, offset, frame in hold.log:
            floor = floors.get(channel)
            if floor is None or offset is None or offset > floor:
                conn.enqueue(frame)
        return True


async def _positions(
    conn: Connection, before: set[str], recovery: Recovery
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """The welcome's ``subscribed`` entries for the channels the hooks joined, and the
    offset each one with history starts at."""
    subscribed: list[dict[str, Any]] = []
    floors: dict[str, int] = {}
    for channel in sorted(conn.channels - before):
        entry: dict[str, Any] = {"channel": channel}
        if recovery.keeps_history(channel):
            try:
                page = await recovery.history(channel, limit=0)
            except BrokerUnavailable:
                # No position: the client learns the epoch later (a `history` read).
                logger.warning("connection %s: no position for %s (broker down)", conn.id, channel)
            else:
                entry["offset"] = floors[channel] = page.position.offset
                entry["epoch"] = page.position.epoch
        subscribed.append(entry)
    return subscribed, floors
