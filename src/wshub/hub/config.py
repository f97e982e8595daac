"""Resolving a `Hub`'s settings and broker from the arguments it was given."""

from __future__ import annotations

from typing import Any

from wshub.brokers import Broker, broker_from_url
from wshub.settings import Settings

__all__ = ["resolve_broker", "resolve_settings"]


def resolve_settings(settings: Settings | None, overrides: dict[str, Any]) -> Settings:
    """The settings given (a copy with ``overrides``), else read with ``overrides``."""
    if settings is None:
        settings = Settings(**overrides)
    elif overrides:
        settings = settings.model_copy(update=overrides)
    return settings


def resolve_broker(broker: Broker | str | None, settings: Settings) -> Broker:
    """The broker given, else one from its URL (default ``settings.broker``)."""
    if broker is None or isinstance(broker, str):
        broker = broker_from_url(
            broker or settings.broker,
            prefix=settings.redis_prefix,
            probe_interval=settings.redis_probe_interval,
            history_max_memory=settings.history_max_memory,
        )
    return broker
