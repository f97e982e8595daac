"""HubStats: the counters a hub keeps since it started (read by `wshub.ops.metrics`)."""

from __future__ import annotations

import collections
import dataclasses

from wshub.core.buckets import LATENCY_BOUNDS, Buckets


@dataclasses.dataclass
class HubStats:
    """Counters since the hub started.

    Attributes:
        connections: connections accepted.
        publications: publications received from the broker.
        deliveries: frames enqueued to local connections by fan-out.
        overflows: connections closed with 4008 because their queue overflowed.
        dropped: frames dropped by the drop_oldest / drop_newest policies (closed connections).
        refused: connections closed with 1013 by the connection limits.
        auth_failures: connections closed with 4001 (bad, missing or expired credentials).
        rate_limited: client frames refused by the rate limit.
        frames_received: WebSocket messages received from clients.
        frames_sent: frames sent to clients (several may share one packed message);
            added by each writer when it runs out of work, so a busy one lags a little.
        bytes_sent: encoded bytes of the frames sent, counted alike.
        closes: connections ended, by close code (refused ones included).
        drops: ``dropped``, by overflow policy (``drop_oldest`` / ``drop_newest``).
        auth_reasons: ``auth_failures``, by reason (the close reason sent).
        publish_latency: seconds from `Hub.publish` in this process to the publication
            being enqueued for its local members (publications to channels with local
            members only).
        gap_refills: holes in a channel's live delivery refilled from its history.
        gap_refilled: publications delivered by those refills.
        gaps_unrecoverable: holes the history no longer covered (or a new epoch):
            ``gap`` frames were sent to the channel's members.
        rpc_calls: RPC requests dispatched to a method (``@hub.rpc``), answered or not.
        rpc_latency: seconds from an RPC request's dispatch to its reply or error.
    """

    connections: int = 0
    publications: int = 0
    deliveries: int = 0
    overflows: int = 0
    dropped: int = 0
    refused: int = 0
    auth_failures: int = 0
    rate_limited: int = 0
    frames_received: int = 0
    frames_sent: int = 0
    bytes_sent: int = 0
    closes: collections.Counter[int] = dataclasses.field(default_factory=collections.Counter)
    drops: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    auth_reasons: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    publish_latency: Buckets = dataclasses.field(default_factory=lambda: Buckets(LATENCY_BOUNDS))
    rpc_calls: int = 0
    gap_refills: int = 0
    gap_refilled: int = 0
    gaps_unrecoverable: int = 0
    rpc_latency: Buckets = dataclasses.field(default_factory=lambda: Buckets(LATENCY_BOUNDS))

    def auth_failed(self, reason: str) -> None:
        """Count one authentication failure with its close reason."""
        self.auth_failures += 1
        self.auth_reasons[reason] += 1
