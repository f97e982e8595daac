"""Publish to wshub channels from code that serves no WebSockets: workers, scripts, jobs.

A `Publisher` talks to the same Redis as the hubs (``Hub(broker="redis://...")``) and
writes what `wshub.brokers.redis.RedisBroker` reads: ``PUBLISH <prefix><channel>
<JSON>``, the data encoded once with orjson. Every hub process with members on the
channel delivers it to them, in the order the publishes reached Redis. Delivery is at
most once: nothing is retried, and a publish while no hub listens reaches nobody.
A publish with an ``idempotency_key`` may be retried by the caller after a
`PublishTimeout` (sent, no reply: maybe published): Redis publishes it once.

Use it from async code (`Publisher.publish`, ``async with``) or from sync code
(`Publisher.publish_sync`, ``with``); each side opens its own connection lazily.

Hubs trust what arrives from Redis and do not validate it again. Give the publisher
the hubs' namespaces (``Publisher(url, namespaces=NAMESPACES)``, the dict passed to
``Hub(namespaces=...)``) and it validates against their models, as ``hub.publish``
does: `InvalidPublication` for data that does not fit, and the model's
``model_dump(mode="json")`` published otherwise. ``on_publish`` hooks run in the hub's
process only, so they do not run for a `Publisher`'s publications.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

import orjson
import redis
import redis.asyncio
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from wshub.brokers.redis import check_url, redis_location
from wshub.brokers.redis_connections import (
    close_client,
    close_client_sync,
    is_sentinel_url,
    sentinel_client,
    sentinel_client_sync,
)
from wshub.brokers.redis_history import RedisHistory, publish_once_command
from wshub.brokers.redis_pipeline import OutcomeUnknown, PublishPipeline
from wshub.brokers.redis_scripts import PUBLISH_ONCE
from wshub.core.channels import is_valid_channel
from wshub.core.errors import BrokerUnavailable, PublishError, PublishTimeout
from wshub.core.types import MAX_IDEMPOTENCY_KEY, Idempotency
from wshub.hub.permissions import Namespace, Permissions


class Publisher:
    """Publishes JSON-serialisable data to wshub channels through Redis.

    Example::

        async with Publisher("redis://localhost:6379") as pub:
            await pub.publish("chat", {"user": "bot", "text": "deploy finished"})

        with Publisher("redis://localhost:6379") as pub:
            pub.publish_sync("chat", {"user": "cron", "text": "backup done"})
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "wshub:",
        timeout: float = 2.0,
        namespaces: Mapping[str, Namespace] | None = None,
    ) -> None:
        """Configure the publisher; nothing connects before the first publish.

        Args:
            url: the hubs' Redis URL (``redis://``, ``rediss://``, ``unix://`` or
                ``redis+sentinel://``, which publishes to the master the sentinels name).
            prefix: the hubs' channel prefix in Redis (`RedisBroker`'s ``prefix``).
            timeout: seconds for connecting and for each publish.
            namespaces: the hubs' namespaces (``Hub(namespaces=...)``): publications
                are validated against their models (`Namespace.model`) before they
                leave. Permissions don't apply (a publisher is server code), and an
                unlisted namespace is published unchecked, as ``hub.publish`` does.

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
        self._namespaces = Permissions(namespaces) if namespaces is not None else None
        self._async: redis.asyncio.Redis | None = None
        self._pipeline: PublishPipeline | None = None
        self._sync: redis.Redis | None = None

    async def publish(
        self,
        channel: str,
        data: object,
        *,
        idempotency_key: str | None = None,
        idempotency_window: float = 300.0,
    ) -> int:
        """Publish ``data`` to ``channel`` from async code.

        Args:
            channel: a channel name clients could use (`wshub.channels.is_valid_channel`).
            data: anything orjson can serialise.
            idempotency_key: 1 to 64 characters: a publish with the same key to the same
                channel within ``idempotency_window`` seconds (from any process, this
                publisher or another) publishes nothing; checked atomically in Redis.
            idempotency_window: seconds the key is remembered (the hubs' setting).

        Returns:
            How many subscriber connections received it: roughly the number of hub
            processes with members on the channel (0 when none has, and for a
            duplicate idempotency key).

        Raises:
            ValueError: an invalid channel name.
            InvalidPublication: ``data`` does not fit the namespace's model (with
                ``namespaces``); a `PublishError`, naming the field.
            PublishError: ``data`` is not JSON-serialisable.
            PublishTimeout: sent to Redis, no reply within ``timeout``: it may have been
                published (retry with the same ``idempotency_key``).
            BrokerUnavailable: Redis could not be reached or refused the command: not
                published.
        """
        name, payload = self._encode(channel, data)
        once = _idempotency(idempotency_key, idempotency_window)
        if self._async is None:
            if is_sentinel_url(self._url):
                self._async = sentinel_client(
                    self._url, timeout=self._timeout, client_name="wshub-publisher"
                )
            else:
                self._async = redis.asyncio.Redis.from_url(
                    self._url, retry=AsyncRetry(NoBackoff(), 0), **self._options
                )
        if self._pipeline is None:
            # Ordered and batched; tells "not sent" from "sent, unanswered" (OutcomeUnknown).
            self._pipeline = PublishPipeline(self._async, RedisHistory.SCRIPTS)
        if once is None:
            command: tuple[Any, ...] = ("PUBLISH", name, payload)
        else:
            command = publish_once_command(self._prefix, channel, payload, once)
        try:
            return max(0, int(await self._pipeline.submit(*command)))
        except OutcomeUnknown as exc:
            raise self._no_reply(channel, exc) from exc
        except RedisError as exc:
            raise self._unavailable(channel, exc) from exc

    def publish_sync(
        self,
        channel: str,
        data: object,
        *,
        idempotency_key: str | None = None,
        idempotency_window: float = 300.0,
    ) -> int:
        """Publish ``data`` to ``channel`` from sync code; blocks until Redis answers.

        Args, Returns and Raises are those of `publish` (here a read timeout is
        `PublishTimeout`, every other failure `BrokerUnavailable`).
        """
        name, payload = self._encode(channel, data)
        once = _idempotency(idempotency_key, idempotency_window)
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
            if once is None:
                return int(self._sync.publish(name, payload))
            _, _, sha, keys, *args = publish_once_command(self._prefix, channel, payload, once)
            try:
                reply = self._sync.evalsha(str(sha), int(keys), *args)
            except NoScriptError:  # NOSCRIPT: it did not run
                reply = self._sync.eval(PUBLISH_ONCE, int(keys), *args)
            return max(0, int(reply))
        except RedisTimeoutError as exc:
            raise self._no_reply(channel, exc) from exc
        except RedisError as exc:
            raise self._unavailable(channel, exc) from exc

    def _encode(self, channel: str, data: object) -> tuple[str, bytes]:
        if not is_valid_channel(channel):
            raise ValueError(f"invalid channel name {channel!r}: see wshub.channels")
        if self._namespaces is not None:
            space = self._namespaces.namespace(channel)
            if space is not None:
                data = space.validate(channel, data)
        try:
            return self._prefix + channel, orjson.dumps(data)
        except TypeError as exc:  # orjson.JSONEncodeError is a TypeError
            raise PublishError(f"cannot publish to {channel!r}: {exc}") from exc

    def _no_reply(self, channel: str, exc: RedisError) -> PublishTimeout:
        where = redis_location(self._url)
        return PublishTimeout(
            f"no reply from Redis at {where} to a publish to {channel!r} (it may have "
            f"been published): {exc}"
        )

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
        pipeline, self._pipeline = self._pipeline, None
        if pipeline is not None:
            await pipeline.close()
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


def _idempotency(key: str | None, window: float) -> Idempotency | None:
    if key is None:
        return None
    if not isinstance(key, str) or not 0 < len(key) <= MAX_IDEMPOTENCY_KEY:
        raise ValueError(f"idempotency_key must be 1 to {MAX_IDEMPOTENCY_KEY} characters")
    if window <= 0:
        raise ValueError("idempotency_window must be > 0 seconds")
    return Idempotency(key, window)
