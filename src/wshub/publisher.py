"""Publish to wshub channels from code that serves no WebSockets: workers, scripts, jobs.

A `Publisher` talks to the same Redis as the hubs (``Hub(broker="redis://...")``) and
writes what `wshub.brokers.redis.RedisBroker` reads: ``PUBLISH <prefix><channel>
<JSON>``, the data encoded once with orjson. Every hub process with members on the
channel delivers it to them, in the order the publishes reached Redis. Delivery is at
most once: nothing is retried, and a publish while no hub listens reaches nobody.

Use it from async code (`Publisher.publish`, ``async with``) or from sync code
(`Publisher.publish_sync`, ``with``); each side opens its own connection lazily.
"""

from __future__ import annotations

from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

import orjson
import redis
import redis.asyncio
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from wshub.brokers.redis import check_url, redis_location
from wshub.brokers.redis_connections import (
    close_client,
    close_client_sync,
    is_sentinel_url,
    sentinel_client,
    sentinel_client_sync,
)
from wshub.core.channels import is_valid_channel
from wshub.core.errors import BrokerUnavailable, PublishError


class Publisher:
    """Publishes JSON-serialisable data to wshub channels through Redis.

    Example::

        async with Publisher("redis://localhost:6379") as pub:
            await pub.publish("chat", {"user": "bot", "text": "deploy finished"})

        with Publisher("redis://localhost:6379") as pub:
            pub.publish_sync("chat", {"user": "cron", "text": "backup done"})
    """

    def __init__(self, url: str, *, prefix: str = "wshub:", timeout: float = 2.0) -> None:
        """Configure the publisher; nothing connects before the first publish.

        Args:
            url: the hubs' Redis URL (``redis://``, ``rediss://``, ``unix://`` or
                ``redis+sentinel://``, which publishes to the master the sentinels name).
            prefix: the hubs' channel prefix in Redis (`RedisBroker`'s ``prefix``).
            timeout: seconds for connecting and for each publish.

        Raises:
            ValueError: a ``memory://`` URL (that broker lives inside one process, so
                no other process can reach it) or any other non-Redis URL.
        """
        if urlsplit(url).scheme == "memory":
            raise ValueError(
                "Publisher needs a Redis URL: the memory broker is per-process, so only "
                "the hub's own process can publish to it (use hub.publish there)"
            )
        check_url(url)
        self._url = url
        self._prefix = prefix
        self._timeout = timeout
        # No retries: a publish retried after a timeout could be delivered twice.
        self._options: dict[str, Any] = {
            "socket_timeout": timeout,
            "socket_connect_timeout": timeout,
            "client_name": "wshub-publisher",
        }
        self._async: redis.asyncio.Redis | None = None
        self._sync: redis.Redis | None = None

    async def publish(self, channel: str, data: object) -> int:
        """Publish ``data`` to ``channel`` from async code.

        Args:
            channel: a channel name clients could use (`wshub.channels.is_valid_channel`).
            data: anything orjson can serialise.

        Returns:
            How many subscriber connections received it: roughly the number of hub
            processes with members on the channel (0 when none has).

        Raises:
            ValueError: an invalid channel name.
            PublishError: ``data`` is not JSON-serialisable.
            BrokerUnavailable: Redis could not be reached or failed the command.
        """
        name, payload = self._encode(channel, data)
        if self._async is None:
            if is_sentinel_url(self._url):
                self._async = sentinel_client(
                    self._url, timeout=self._timeout, client_name="wshub-publisher"
                )
            else:
                self._async = redis.asyncio.Redis.from_url(
                    self._url, retry=AsyncRetry(NoBackoff(), 0), **self._options
                )
        try:
            return int(await self._async.publish(name, payload))
        except RedisError as exc:
            raise self._unavailable(channel, exc) from exc

    def publish_sync(self, channel: str, data: object) -> int:
        """Publish ``data`` to ``channel`` from sync code; blocks until Redis answers.

        Args, Returns and Raises are those of `publish`.
        """
        name, payload = self._encode(channel, data)
        if self._sync is None:
            if is_sentinel_url(self._url):
                self._sync = sentinel_client_sync(
                    self._url, timeout=self._timeout, client_name="wshub-publisher"
                )
            else:
                self._sync = redis.Redis.from_url(
                    self._url, retry=Retry(NoBackoff(), 0), **self._options
                )
        try:
            return int(self._sync.publish(name, payload))
        except RedisError as exc:
            raise self._unavailable(channel, exc) from exc

    def _encode(self, channel: str, data: object) -> tuple[str, bytes]:
        if not is_valid_channel(channel):
            raise ValueError(f"invalid channel name {channel!r}: see wshub.channels")
        try:
            return self._prefix + channel, orjson.dumps(data)
        except TypeError as exc:  # orjson.JSONEncodeError is a TypeError
            raise PublishError(f"cannot publish to {channel!r}: {exc}") from exc

    def _unavailable(self, channel: str, exc: RedisError) -> BrokerUnavailable:
        where = redis_location(self._url)
        return BrokerUnavailable(
            f"could not publish to {channel!r} through Redis at {where}: {exc}"
        )

    def close(self) -> None:
        """Close the sync connection. Idempotent.

        Raises:
            RuntimeError: the async side is open too: use `aclose` (which closes both).
        """
        client, self._sync = self._sync, None
        if client is not None:
            close_client_sync(client)
        if self._async is not None:
            raise RuntimeError("Publisher.close() cannot close the async client: await aclose()")

    async def aclose(self) -> None:
        """Close both connections. Idempotent."""
        client, self._async = self._async, None
        if client is not None:
            await close_client(client)
        self.close()

    def __enter__(self) -> Publisher:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    async def __aenter__(self) -> Publisher:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
