"""Where the Python client is in each channel: the last offset delivered and its epoch.

`ChannelPositions` drops duplicates by offset and gives a resubscribe its ``since`` and
``epoch`` (see `wshub.client.subscriptions`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

__all__ = ["ChannelPositions"]


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
            # With "more", the rest up to `offset` is still to be read with `history`.
            reached = offset if not result.get("more") else (p.offset or 0)
            p.offset, p.epoch = max(p.offset or 0, reached), epoch
            return fresh, True
        self.positions[channel] = _Position(offset, epoch)
        return [], False if asked else None
