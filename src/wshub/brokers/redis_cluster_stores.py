"""The Redis Cluster engine's history and presence stores: hash-tagged keys, SPUBLISH.

Each channel's keys carry the channel as hash tag, so they live in ONE slot with the
sharded channel ``<prefix>{c}`` (see `wshub.brokers.redis_cluster`). The publish
scripts are those of `redis_scripts`, made to SPUBLISH.
"""

from __future__ import annotations

from typing import Final

from wshub.brokers.base import Idempotency
from wshub.brokers.redis_cluster_session import cluster_name
from wshub.brokers.redis_history import (
    META_INFIX,
    STREAM_INFIX,
    RedisHistory,
    publish_once_command,
)
from wshub.brokers.redis_presence import ENTRIES_INFIX, EXPIRIES_INFIX, RedisPresence
from wshub.brokers.redis_scripts import PUBLISH_ONCE, PUBLISH_WITH_HISTORY, LuaScript

__all__ = ["ClusterHistory", "ClusterPresence"]

_PUBLISH_CALL: Final = "redis.call('PUBLISH', "


def _sharded(name: str, source: str) -> LuaScript:
    """A publish script of `redis_scripts`, publishing with SPUBLISH (the slot's channel).

    Derived from the plain engine's script, so that both always do the same thing.
    """
    if source.count(_PUBLISH_CALL) != 1:
        raise RuntimeError(
            f"redis_scripts.{name} must PUBLISH exactly once (as {_PUBLISH_CALL}...) "
            "for the cluster engine to make it SPUBLISH"
        )
    return LuaScript(source.replace(_PUBLISH_CALL, "redis.call('SPUBLISH', "))


_cluster_publish_script = _sharded("PUBLISH_WITH_HISTORY", PUBLISH_WITH_HISTORY)
_cluster_once_script = _sharded("PUBLISH_ONCE", PUBLISH_ONCE)
_plain_once_sha = LuaScript(PUBLISH_ONCE).sha


class ClusterHistory(RedisHistory):
    """`RedisHistory` with hash-tagged keys and the sharded channel: one slot per channel."""

    publish_script = _cluster_publish_script
    SCRIPTS = {
        _cluster_publish_script.sha: _cluster_publish_script.source,
        _cluster_once_script.sha: _cluster_once_script.source,
    }

    def keys(self, channel: str) -> list[str]:
        """``<prefix>history-meta:{c}``, ``<prefix>history:{c}``."""
        tag = f"{{{channel}}}"
        return [self._prefix + META_INFIX + tag, self._prefix + STREAM_INFIX + tag]

    def pubsub_channel(self, channel: str) -> str:
        """``<prefix>{c}``: SPUBLISH in a script must stay in the keys' slot."""
        return cluster_name(self._prefix, channel)

    def publish_once_command(
        self, channel: str, payload: bytes, idempotency: Idempotency
    ) -> tuple[bytes | str | int, ...]:
        """`publish_once_command`, SPUBLISHing on the sharded channel."""
        plain = list(publish_once_command(self._prefix, channel, payload, idempotency))
        plain_name = self._prefix + channel
        if plain[1] != _plain_once_sha or plain.count(plain_name) != 1:
            raise RuntimeError("publish_once_command changed shape: update ClusterHistory")
        plain[1] = _cluster_once_script.sha
        plain[plain.index(plain_name)] = self.pubsub_channel(channel)
        return tuple(plain)


class ClusterPresence(RedisPresence):
    """`RedisPresence` with hash-tagged keys: ``<prefix>presence:{c}``, ``...-expiry:{c}``."""

    def keys(self, channel: str) -> list[str]:
        """The entries hash and the expiry set of ``channel``, in its slot."""
        tag = f"{{{channel}}}"
        return [self._prefix + ENTRIES_INFIX + tag, self._prefix + EXPIRIES_INFIX + tag]
