"""What the client hands to applications: states, errors, messages and callback types."""

from __future__ import annotations

import dataclasses
import enum
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from wshub.core.errors import WshubError

logger = logging.getLogger("wshub.client")

TokenSource = Callable[[bool], Awaitable[str | None] | str | None]


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


MessageHandler = Callable[[Message], object]
PresenceHandler = Callable[[PresenceEvent], object]
RecoveryHandler = Callable[[Recovery], object]


def run_callback(fn: Callable[..., object] | None, *args: Any) -> None:
    """Run an application callback; one that raises must not break the client.

    Args:
        fn: the callback, or None for nothing to run.
        *args: what it is called with.
    """
    if fn is not None:
        try:
            fn(*args)
        except Exception:
            logger.exception("wshub client: a callback raised")
