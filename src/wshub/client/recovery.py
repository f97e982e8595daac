"""History reads of the Python client: `Client.history`, and paginated recovery.

A subscribe reply with ``more`` recovered only the first page; `read_pages` reads the
others with ``history``, up to the reply's ``offset``, while `ChannelRegistry` holds the
live messages that arrive meanwhile (see `wshub.client.subscriptions`). `apply_gap`
handles a ``gap`` frame, a recovery that failed on the server's side.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from websockets.asyncio.client import ClientConnection

from wshub.client.models import ClientError, HistoryPage, Message, Recovery
from wshub.client.positions import ChannelPositions

__all__ = ["SendRequest", "apply_gap", "read_history", "read_pages"]

logger = logging.getLogger("wshub.client")

SendRequest = Callable[
    [ClientConnection, dict[str, Any], Callable[[dict[str, Any]], None] | None],
    Awaitable[dict[str, Any]],
]


async def read_history(
    request: Callable[[dict[str, Any]], Awaitable[dict[str, Any]]],
    positions: ChannelPositions,
    channel: str,
    since: int | None,
    limit: int | None,
) -> HistoryPage:
    """`Client.history`: one ``history`` request; its epoch is learnt for ``channel``."""
    frame: dict[str, Any] = {"op": "history", "channel": channel}
    if since is not None:
        frame["since"] = since
    if limit is not None:
        frame["limit"] = limit
    result = await request(frame)
    positions.learn_epoch(channel, result)
    messages = [Message.from_frame(item) for item in result["messages"]]
    return HistoryPage(result["offset"], result["epoch"], messages)


async def read_pages(
    send: SendRequest,
    ws: ClientConnection,
    channel: str,
    result: dict[str, Any],
    positions: ChannelPositions,
    *,
    current: Callable[[], bool],
    deliver: Callable[[list[dict[str, Any]]], None],
    report: Callable[[ClientError], None],
) -> tuple[bool, int] | None:
    """Read ``channel``'s pages after the last offset delivered, up to ``result``'s offset.

    Each page's new messages go to ``deliver``. ``current`` says whether the channel is
    still subscribed on ``ws`` with live messages held; when it no longer is (or the
    connection ended), returns None: the channel is recovered again later. Otherwise
    returns whether recovery succeeded and how many messages the pages delivered; a
    gap (the history moved on, another epoch) or a failed read is a failure, and the
    position then moves to the reply's.
    """
    target, epoch = int(result["offset"]), str(result.get("epoch") or "")
    ok = True
    count = 0
    try:
        while True:
            p = positions.positions.get(channel)
            since = p.offset if p is not None and p.offset is not None else 0
            if since >= target:
                break
            frame = {"op": "history", "channel": channel, "since": since}
            page = await send(ws, {**frame, "limit": target - since}, None)
            if not current():
                return None  # unsubscribed, or the connection ended: resubscribed later
            items = page.get("messages") or []
            first = items[0].get("offset") if items else None
            if page.get("epoch") != epoch or (items and first != since + 1) or not items:
                ok = False  # lost meanwhile: too much published, expired, new epoch
                break
            fresh = [m for m in items if positions.accept(channel, m.get("offset"))]
            count += len(fresh)
            deliver(fresh)
    except ClientError as exc:
        if exc.code in ("disconnected", "closed"):
            return None  # recovered again on the next connection
        report(exc)
        ok = False
    if not current():
        return None
    if not ok:
        positions.set(channel, target, epoch)
    return ok, count


def apply_gap(positions: ChannelPositions, channel: str, frame: dict[str, Any]) -> Recovery | None:
    """Apply ``channel``'s ``gap`` frame to ``positions``: the failed `Recovery` to report, or None.

    None when the frame is malformed or our position is already there (same epoch, at
    or past its ``offset``); otherwise the position moves to the frame's.
    """
    offset, epoch = frame.get("offset"), frame.get("epoch")
    if not isinstance(offset, int) or not isinstance(epoch, str):
        return None
    p = positions.positions.get(channel)
    if p is not None and p.epoch == epoch and p.offset is not None and p.offset >= offset:
        return None  # we have everything up to there already
    positions.set(channel, offset, epoch)
    logger.info("wshub client: %s lost messages (gap); resync it", channel)
    return Recovery(channel, False, 0, offset, epoch)
