"""Brokers, picked by URL scheme and imported lazily so that `import wshub` needs no engine."""

from __future__ import annotations

import importlib
from typing import Any
from urllib.parse import urlsplit

from wshub.brokers.base import (
    Broker,
    BrokerEvents,
    BrokerState,
    Publication,
    PublishResult,
)

__all__ = [
    "Broker",
    "BrokerEvents",
    "BrokerState",
    "Publication",
    "PublishResult",
    "broker_from_url",
]

# scheme -> "module:Class"; each engine module takes the URL as its one positional argument.
_ENGINES = {
    "memory": "wshub.brokers.memory:MemoryBroker",
    "redis": "wshub.brokers.redis:RedisBroker",
    "rediss": "wshub.brokers.redis:RedisBroker",
    "unix": "wshub.brokers.redis:RedisBroker",
    "redis+sentinel": "wshub.brokers.redis:RedisBroker",
    "redis+cluster": "wshub.brokers.redis_cluster:RedisClusterBroker",
}


def broker_from_url(url: str, **options: Any) -> Broker:
    """Build the broker an URL names: ``memory://``, ``redis://host:port/db``, ``redis+sentinel://...``,
    ``redis+cluster://host:port[,host:port...]`` (a Redis Cluster, sharded pub/sub).

    Args:
        url: the broker URL.
        **options: engine options: ``prefix`` and ``probe_interval`` for Redis,
            ``history_max_memory`` for memory; an engine ignores the others'.

    Returns:
        A broker, not started yet.

    Raises:
        ValueError: the scheme names no known engine.
    """
    scheme = urlsplit(url).scheme or url.rstrip(":/")
    target = _ENGINES.get(scheme)
    if target is None:
        known = ", ".join(sorted(_ENGINES))
        raise ValueError(f"unknown broker URL scheme {scheme!r} in {url!r}; known: {known}")
    module_name, _, class_name = target.partition(":")
    engine = getattr(importlib.import_module(module_name), class_name)
    if scheme == "memory":
        budget = options.get("history_max_memory")
        return engine(history_max_memory=budget)  # type: ignore[no-any-return]
    options.pop("history_max_memory", None)
    return engine(url, **options)  # type: ignore[no-any-return]
