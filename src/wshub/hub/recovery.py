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
from wshub.core.types import HistoryOptions, Publication
from wshub.hub.connection import Connection
from wshub.hub.gaps import GapFiller
from wshub.hub.membership import Membership
from wshub.hub.permissions import Permissions

#: Most bytes of messages one recovery or history reply carries (see `page_budget`).
PAGE_MAX_BYTES = 256 * 1024
#: Most messages one recovery or history reply carries.
PAGE_MAX_MESSAGES = 1000
#: Bytes a message object adds to its data in a reply (keys, offset, ``from``).
_ITEM_OVERHEAD = 64


def page_budget(conn: Connection) -> int:
    """The most bytes of messages a reply to ``conn`` may carry.

    Well under the connection's send queue, so that a reply never overflows it:
    at most `PAGE_MAX_BYTES`, a quarter of ``queue_max_bytes``, and half of the
    room the queue has left now.
    """
    queue = conn.queue
    free = queue.max_bytes - queue.bytes
    return max(1, min(PAGE_MAX_BYTES, queue.max_bytes // 4, free // 2))


def _item_size(channel: str, publication: Publication) -> int:
    origin = publication.origin
    return len(publication.data) + len(channel) + (len(origin) if origin else 0) + _ITEM_OVERHEAD


def cut_page(
    channel: str, publications: list[Publication], budget: int
) -> tuple[list[Publication], bool]:
    """The oldest publications that fit ``budget`` bytes and `PAGE_MAX_MESSAGES`.

    Returns:
        The publications kept (at least one, when there is one: a reply always makes
        progress) and whether some were cut off.
    """
    used = 0
    for index, publication in enumerate(publications):
        used += _item_size(channel, publication)
        if index and (used > budget or index >= PAGE_MAX_MESSAGES):
            return publications[:index], True
    return publications, False


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
        #: The hub's gap filler, told of each subscribe's position (`GapFiller.joined`).
        self.gaps: GapFiller | None = None

    def history_options(self, channel: str) -> HistoryOptions | None:
        """The history ``channel`` keeps by its namespace, or None."""
        if channel[0] == "#":
            return None
        space = self.permissions.namespace(channel)
        if space is None or space.history_size <= 0:
            return None
        return HistoryOptions(space.history_size, space.history_ttl, space.history_max_bytes or 0)

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
        # With the options: a channel read before its first publish gets its epoch now.
        options = self.history_options(channel)
        return await self.broker.history(channel, since=since, limit=limit, options=options)

    async def history_reply(
        self, conn: Connection, channel: str, since: int | None, limit: int | None
    ) -> dict[str, Any]:
        """The ``history`` op's result for ``conn``, paginated to fit its send queue.

        The messages are the oldest part of what was asked for that fits `page_budget`
        and `PAGE_MAX_MESSAGES`; ``"more": true`` says the rest was cut off: ask again
        with ``since`` = the last message's offset (and the limit that is left).
        """
        if since is not None:
            # Read one page (plus one, to tell whether the count bound cut it).
            cap = PAGE_MAX_MESSAGES + 1
            page = await self.history(
                channel, since=since, limit=cap if limit is None else min(limit, cap)
            )
        else:
            page = await self.history(channel, since=None, limit=limit)
        kept, more = cut_page(channel, page.publications, page_budget(conn))
        result: dict[str, Any] = {
            "offset": page.position.offset,
            "epoch": page.position.epoch,
            "messages": [publication_object(channel, p) for p in kept],
        }
        if more:
            result["more"] = True
        return result

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
                (``offset``, ``epoch``, and with ``since``: ``recovered``, ``messages``,
                and ``more: true`` when the messages stop short of ``offset``: they are
                paginated to fit the send queue, and the client reads the rest with the
                ``history`` op).

        Raises:
            ProtocolError: as `Hub.subscribe`.
            BrokerUnavailable: the history could not be read (the subscribe is undone,
                unless ``conn`` was a member already).
        """
        membership = self.membership
        if not self.keeps_history(channel):
            await membership.subscribe(conn, channel)
            reply({} if since is None else {"recovered": False, "messages": []})
            return
        assert isinstance(self.broker, History)
        held: list[tuple[int | None, Frame]] = []
        conn.recovering[channel] = held
        # A member already (a server-side subscription, or a repeated subscribe): then
        # this is a recovery on the live membership, with the same hold.
        member = channel in conn.channels
        try:
            await membership.subscribe(conn, channel)
            # since=0 (saw nothing yet) asks for everything: only None means position only.
            # Everything, but at most one page: the client reads the rest with `history`.
            limit = PAGE_MAX_MESSAGES + 1 if since is not None else 0
            page = await self.broker.history(
                channel, since=since, limit=limit, options=self.history_options(channel)
            )
        except BaseException:
            conn.recovering.pop(channel, None)
            if not member:  # a membership that was there before stays
                await membership.unsubscribe(conn, channel)
            raise
        # No await from here on: the reply and the held frames go out in this order.
        del conn.recovering[channel]
        reply(_result(channel, page, since, epoch, page_budget(conn)))
        for offset, frame in held:
            if offset is None or offset > page.position.offset:
                conn.enqueue(frame)
        if self.gaps is not None:
            self.gaps.joined(conn, channel, page.position)


def _result(
    channel: str, page: HistoryPage, since: int | None, epoch: str | None, budget: int
) -> dict[str, Any]:
    result: dict[str, Any] = {"offset": page.position.offset, "epoch": page.position.epoch}
    if since is not None:
        ok = recovered(page, since, epoch)
        result["recovered"] = ok
        publications, more = cut_page(channel, page.publications, budget) if ok else ([], False)
        # Also cut when the read stopped at PAGE_MAX_MESSAGES + 1 before the position.
        last = publications[-1].offset if publications else since
        more = more or (ok and last is not None and last < page.position.offset)
        result["messages"] = [publication_object(channel, p) for p in publications]
        if more:
            result["more"] = True
    return result
