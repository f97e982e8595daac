"""One master of a Redis Cluster, as the cluster broker holds it.

A `Shard` bundles what the broker keeps per master: a small connection pool, its
`PublishPipeline`, the subscriber `ShardSession` and its `ShardProbe`. The settings
come from a `ShardOwner` (the broker's `ClusterTopology`).
"""

from __future__ import annotations

from typing import Any, Protocol

from wshub.brokers.redis_cluster_session import (
    Address,
    ShardProbe,
    ShardSession,
    ShardSubscriptions,
)
from wshub.brokers.redis_cluster_stores import ClusterHistory
from wshub.brokers.redis_connections import ClusterTarget, node_client
from wshub.brokers.redis_pipeline import PublishPipeline

__all__ = ["Shard", "ShardOwner"]


class ShardOwner(Protocol):
    """What a `Shard` reads from whoever creates it: the cluster and the settings."""

    @property
    def target(self) -> ClusterTarget: ...
    @property
    def prefix(self) -> str: ...
    @property
    def options(self) -> dict[str, Any]: ...
    @property
    def max_connections(self) -> int: ...
    @property
    def probe_interval(self) -> float: ...
    @property
    def probe_timeout(self) -> float: ...
    def request_refresh(self) -> None: ...


class Shard:
    """One master: its pool, its publish pipeline, its subscriber session and probe."""

    def __init__(
        self,
        owner: ShardOwner,
        address: Address,
        spans: tuple[tuple[int, int], ...],
    ) -> None:
        self.address = address
        self.spans = spans
        host, port = address
        options = owner.options
        self.client = node_client(
            owner.target,
            host,
            port,
            timeout=options["timeout"],
            max_connections=owner.max_connections,
        )
        self.pipeline = PublishPipeline(self.client, ClusterHistory.SCRIPTS)

        def owns(slot: int) -> bool:
            return any(first <= slot <= last for first, last in spans)

        self.probe = ShardProbe(
            owner.prefix,
            owns,
            interval=owner.probe_interval,
            timeout=owner.probe_timeout,
        )
        self.subs = ShardSubscriptions(owner.prefix, self.probe.channel)
        self.session = ShardSession(
            owner.target,
            address,
            on_lost=owner.request_refresh,
            where=f"cluster node {host}:{port}",
            prefix=owner.prefix,
            subscriptions=self.subs,
            probe=self.probe,
            **options,
        )

    async def close(self) -> None:
        await self.session.close()
        await self.pipeline.close()
        await self.client.aclose()
