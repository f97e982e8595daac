"""Recovery: channel history, and subscribing with ``since`` without a gap or a duplicate.

Which channels keep history is their namespace's choice (``history_size``,
``history_ttl``); the history itself lives in the broker (`wshub.brokers.history`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from wshub.brokers.base import Broker
from wshub.brokers.history import History, HistoryPage, recovered
from wshub.core.errors import ErrorCode, ProtocolError
from wshub.core.protocol import publication_object
from wshub.core.sendqueue import Frame
from wshub.core.types import HistoryOptions
from wshub.hub.connection import Connection
from wshub.hub.membership import Membership
from wshub.hub.permissions import Permissions


class Recovery:
    """History reads and recovering subscribes for one hub.

    Args:
        broker: the hub's broker (history works when it implements `History`).
        permissions: the namespaces, for their history options.
        membership: subscribes and unsubscribes the recovering connection.
    """

    def __init__(self, broker: Broker, permissions: Permissions, membership: Membership) -> None:
        self.broker = broker
        self.permissions = permissions
        self.membership = membership

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
        """Read ``channel``'s history; see `Hub.history`."""
        if not self.keeps_history(channel):
            raise ProtocolError(ErrorCode.BAD_REQUEST, f"{channel!r} keeps no history")
        assert isinstance(self.broker, History)
        return await self.broker.history(channel, since=since, limit=limit)

    async def subscribe(
        self,
        conn: Connection,
        channel: str,
        since: int | None,
        epoch: str | None,
        reply: Callable[[dict[str, Any]], None],
    ) -> None:
        """Subscribe, then answer with the channel's position and what ``conn`` missed.

        Live publications arriving while the history is read are held back (fan-out
        appends them to ``conn.recovering``) and enqueued right after ``reply`` is
        called, skipping those the reply already carries: the hand-over from
        recovered to live has no gap and no duplicate.

        Args:
            conn: the connection.
            channel: the channel.
            since: the last offset the client saw, or None (no recovery).
            epoch: the epoch that offset belongs to.
            reply: called once, synchronously, with the subscribe result
                (``offset``, ``epoch``, and with ``since``: ``recovered``, ``messages``).

        Raises:
            ProtocolError: as `Hub.subscribe`.
            BrokerUnavailable: the history could not be read (the subscribe is undone).
        """
        membership = self.membership
        if not self.keeps_history(channel):
            await membership.subscribe(conn, channel)
            reply({} if since is None else {"recovered": False, "messages": []})
            return
        assert isinstance(self.broker, History)
        held: list[tuple[int | None, Frame]] = []
        conn.recovering[channel] = held
        try:
            await membership.subscribe(conn, channel)
            # since=0 (saw nothing yet) asks for everything: only None means position only.
            limit = None if since is not None else 0
            page = await self.broker.history(channel, since=since, limit=limit)
        except BaseException:
            conn.recovering.pop(channel, None)
            await membership.unsubscribe(conn, channel)
            raise
        # No await from here on: the reply and the held frames go out in this order.
        del conn.recovering[channel]
        reply(_result(channel, page, since, epoch))
        for offset, frame in held:
            if offset is None or offset > page.position.offset:
                conn.enqueue(frame)


def _result(
    channel: str, page: HistoryPage, since: int | None, epoch: str | None
) -> dict[str, Any]:
    result: dict[str, Any] = {"offset": page.position.offset, "epoch": page.position.epoch}
    if since is not None:
        ok = recovered(page, since, epoch)
        result["recovered"] = ok
        publications = page.publications if ok else []
        result["messages"] = [publication_object(channel, p) for p in publications]
    return result
