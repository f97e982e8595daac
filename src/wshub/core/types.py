"""The vocabulary every layer shares: publications, publish results, history options.

Sans-I/O: this module imports no event loop, web framework or broker, so the wire
core (`wshub.core.protocol`, `wshub.core.codecs`) and every broker can depend on it.
"""

from __future__ import annotations

import dataclasses
import enum


@dataclasses.dataclass(frozen=True, slots=True)
class Publication:
    """One published message as the broker delivers it.

    Attributes:
        data: the payload, JSON-encoded once by the publisher.
        offset: position in the channel's history, when the channel keeps one.
        origin: the client id of the publishing connection, when there was one.
        event: None for a message; ``"join"`` or ``"leave"`` for a presence change,
            whose ``data`` is then the JSON object ``{"client","user"}``.
    """

    data: bytes
    offset: int | None = None
    origin: str | None = None
    event: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class PublishResult:
    """What `Broker.publish` reports back to the publisher.

    Attributes:
        offset: the publication's history offset, or None without history.
        epoch: the history's epoch, or None without history.
    """

    offset: int | None = None
    epoch: str | None = None


#: The longest idempotency key a publish may carry.
MAX_IDEMPOTENCY_KEY = 64


@dataclasses.dataclass(frozen=True, slots=True)
class Idempotency:
    """A publish's idempotency key: a second publish with the same key to the same
    channel within ``window`` seconds publishes nothing and answers the first's result.

    Attributes:
        key: the key, 1 to `MAX_IDEMPOTENCY_KEY` characters.
        window: seconds the key is remembered (setting ``idempotency_window``).
    """

    key: str
    window: float


@dataclasses.dataclass(frozen=True, slots=True)
class HistoryOptions:
    """How much of a channel's past a broker keeps.

    Attributes:
        size: publications kept (the oldest go first).
        ttl: seconds a publication is kept; the whole history (and its epoch) is
            forgotten when nothing was published for that long.
        max_bytes: bytes kept at most, each publication counted as its data's length
            plus a fixed overhead (`wshub.brokers.history.ENTRY_OVERHEAD`); the oldest
            go first. 0: no cap but ``size`` (and the memory broker's budget).
    """

    size: int
    ttl: float
    max_bytes: int = 0


class BrokerState(enum.StrEnum):
    """Whether the broker can currently carry publications."""

    CONNECTING = "connecting"
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"
    CLOSED = "closed"
