"""The broker interface: how publications travel between processes.

A broker carries publications from `Broker.publish` in any process to
`BrokerEvents.on_publication` in every process that subscribed to the channel,
the publishing process included. The hub is its only caller:

- ``start(events)`` once, before anything else; the broker pushes every
  publication to ``events`` (push, not pull: the hub never polls);
- ``subscribe(channels)`` when a channel gets its first local member and
  ``unsubscribe(channels)`` when the last one leaves. Calls for the same channel
  are made in order and never overlap;
- ``publish(channel, data)`` with the payload already encoded as JSON bytes.

Guarantees every engine gives:

- Delivery is at most once. A publication may be lost while the broker is
  disconnected; `publish` then raises `BrokerUnavailable` instead of reaching only
  local members (or `PublishTimeout` when it was sent but not answered: unknown).
  Channels with history are made gap-free on top of this by the hub (`wshub.hub.gaps`).
- Order is kept per channel: every subscriber, in every process, sees one
  channel's publications in one order, the same everywhere.
- ``on_publication`` is called on the event loop, synchronously, in that order.
  It must not block: the hub only enqueues frames there.
- The ``data`` bytes are never re-encoded: an engine hands them on as they are,
  or slices them out of its transport frame once per process.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Protocol

from wshub.core.types import BrokerState, HistoryOptions, Idempotency, Publication, PublishResult

__all__ = [
    "Broker",
    "BrokerEvents",
    "BrokerState",
    "HistoryOptions",
    "Idempotency",
    "Publication",
    "PublishResult",
]


class BrokerEvents(Protocol):
    """What a broker calls back into; implemented by the hub."""

    def on_publication(self, channel: str, publication: Publication) -> None:
        """Deliver one publication to local members. Synchronous: enqueue only."""

    def on_state(self, state: BrokerState) -> None:
        """Report a change of the broker's connection state."""


class Broker(abc.ABC):
    """Carries publications between processes. At most once; order kept per channel."""

    #: The engine's state; engines update it and report changes through `on_state`.
    state: BrokerState = BrokerState.CONNECTING

    @abc.abstractmethod
    async def start(self, events: BrokerEvents) -> None:
        """Connect and start pushing publications to ``events``.

        Args:
            events: the receiver of publications and state changes.

        Raises:
            BrokerUnavailable: never; an engine that cannot connect yet reports
                `BrokerState.DISCONNECTED` and keeps trying.
        """

    @abc.abstractmethod
    async def close(self) -> None:
        """Stop delivering and release every resource. Idempotent."""

    @abc.abstractmethod
    async def subscribe(self, channels: Sequence[str]) -> None:
        """Start receiving publications for ``channels`` (their first local member joined).

        Args:
            channels: channel names; internal names start with ``#``.
        """

    @abc.abstractmethod
    async def unsubscribe(self, channels: Sequence[str]) -> None:
        """Stop receiving publications for ``channels`` (their last local member left)."""

    @abc.abstractmethod
    async def publish(
        self,
        channel: str,
        data: bytes,
        *,
        origin: str | None = None,
        history: HistoryOptions | None = None,
        event: str | None = None,
        idempotency: Idempotency | None = None,
    ) -> PublishResult:
        """Publish JSON-encoded ``data`` to every subscriber of ``channel`` in every process.

        With ``history``, the publication also gets the channel's next offset (1, 2,
        3, ...) and is kept; assigning the offset and delivering are one atomic step,
        so offset order is delivery order in every process.

        Args:
            channel: the channel name.
            data: the payload, JSON-encoded; handed on unchanged.
            origin: the publishing client's id, carried to subscribers as ``from``.
            history: keep the publication in the channel's history.
            event: ``"join"``/``"leave"`` for presence changes (never kept in history).
            idempotency: a key: when a publish with the same key to the same channel
                was made within the key's window, publish nothing and return that
                publish's result. Checking and publishing are one atomic step. The hub
                passes it only when set (engines written before it need not take it).

        Returns:
            The publication's offset and the history's epoch, when kept.

        Raises:
            PublishTimeout: sent, but no answer in time: the outcome is unknown.
            BrokerUnavailable: the broker cannot carry the publication now; it was
                certainly not published.
        """

    async def ready(self) -> bool:
        """Tell whether the broker can carry publications right now (readiness probes)."""
        return self.state is BrokerState.CONNECTED
