"""Redis URLs, and the two kinds of connection the engine opens on them.

Each process opens ONE subscriber connection (client name ``wshub-sub``) and a
small pool of ordinary connections (``wshub-pub``) for publishes, history and
presence. Neither retries a command by itself: a PUBLISH retried after a timeout
could be delivered twice, and the broker reconnects on its own terms.
"""

from __future__ import annotations

from typing import Any, Final
from urllib.parse import urlsplit

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.connection import AbstractConnection, Connection, parse_url
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

#: URL schemes this engine serves.
SCHEMES: Final = frozenset({"redis", "rediss", "unix"})


def redis_location(url: str) -> str:
    """Describe where a Redis URL points, without its credentials (for logs and errors)."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return f"unix:{parts.path}"
    return f"{parts.hostname or 'localhost'}:{parts.port or 6379}"


def check_url(url: str) -> None:
    """Refuse a URL this engine cannot serve.

    Raises:
        ValueError: the scheme is not ``redis``, ``rediss`` or ``unix``.
    """
    scheme = urlsplit(url).scheme
    if scheme not in SCHEMES:
        # The URL itself stays out of the message: it may carry a password.
        raise ValueError(f"not a Redis URL (scheme {scheme!r}); use redis://, rediss:// or unix://")


def new_pool(url: str, *, timeout: float, max_connections: int) -> Redis:
    """A client over a pool of ordinary connections, opened lazily, never retrying.

    Args:
        url: the Redis URL.
        timeout: seconds for connecting, for each command, and for a free connection.
        max_connections: the pool's size; callers beyond it wait up to ``timeout``.

    Returns:
        The client (it connects on first use).
    """
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=timeout,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
        client_name="wshub-pub",
    )
    return Redis.from_pool(pool)


def new_subscriber(url: str, *, timeout: float) -> AbstractConnection:
    """A single connection for pub/sub, not connected yet, speaking RESP2.

    Args:
        url: the Redis URL (its ``protocol`` option is overridden).
        timeout: seconds for connecting and for each command.

    Returns:
        The connection; the caller connects it and owns it.
    """
    options: dict[str, Any] = {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "retry": Retry(NoBackoff(), 0),
        "client_name": "wshub-sub",
    }
    options.update(parse_url(url))
    connection_class = options.pop("connection_class", Connection)
    # RESP2 whatever the URL says: pub/sub messages then arrive as plain replies.
    options["protocol"] = 2
    conn: AbstractConnection = connection_class(**options)
    return conn
