"""Redis URLs, and the two kinds of connection the engine opens on them.

Each process opens ONE subscriber connection (client name ``wshub-sub``) and a
small pool of ordinary connections (``wshub-pub``) for publishes, history and
presence. Neither retries a command by itself: a PUBLISH retried after a timeout
could be delivered twice, and the broker reconnects on its own terms.

With a ``redis+sentinel://`` URL both kinds go to the master the sentinels name:
the pool is a `SentinelConnectionPool` (blocking, like the plain one), and the
subscriber is a `SentinelManagedConnection` of that pool, so every (re)connection
asks the sentinels where the master is now, and a READONLY reply from a demoted
master counts as a lost connection. After a failover the broker's usual
reconnect-and-resubscribe then lands on the new master.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Final
from urllib.parse import SplitResult, parse_qsl, unquote, urlsplit

import redis
import redis.sentinel
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.connection import AbstractConnection, Connection, ConnectionPool, parse_url
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool, SentinelManagedConnection
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry as SyncRetry

#: The scheme of a URL naming a master through Redis Sentinel.
SENTINEL_SCHEME: Final = "redis+sentinel"
#: The scheme of a URL naming a Redis Cluster by some of its nodes (`RedisClusterBroker`).
CLUSTER_SCHEME: Final = "redis+cluster"

#: URL schemes this engine serves.
SCHEMES: Final = frozenset({"redis", "rediss", "unix", SENTINEL_SCHEME})

_SENTINEL_PORT = 26379
_REDIS_PORT = 6379
_SENTINEL_PARAMS = frozenset({"db", "sentinel_username", "sentinel_password"})


@dataclasses.dataclass(frozen=True)
class SentinelTarget:
    """What a ``redis+sentinel://`` URL names.

    Attributes:
        sentinels: ``(host, port)`` of each sentinel, in the URL's order.
        service: the master's name in the sentinels' configuration (``mymaster``).
        db: the database number on the master.
        username: the master's (and replicas') user, from the URL's userinfo.
        password: their password, from the URL's userinfo.
        sentinel_username: the sentinels' user (``?sentinel_username=``).
        sentinel_password: the sentinels' password (``?sentinel_password=``).
    """

    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int = 0
    username: str | None = dataclasses.field(default=None, repr=False)
    password: str | None = dataclasses.field(default=None, repr=False)
    sentinel_username: str | None = dataclasses.field(default=None, repr=False)
    sentinel_password: str | None = dataclasses.field(default=None, repr=False)

    @property
    def location(self) -> str:
        """The sentinels and the service, without credentials: ``sentinel h1:p1,h2:p2/name``."""
        hosts = ",".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in self.sentinels)
        return f"sentinel {hosts}/{self.service}"

    def master_options(self) -> dict[str, Any]:
        """Connection options for the master: database and credentials."""
        return {"db": self.db, "username": self.username, "password": self.password}

    def sentinel_options(self) -> dict[str, Any]:
        """Connection options for the sentinels: their credentials."""
        return {"username": self.sentinel_username, "password": self.sentinel_password}


def is_sentinel_url(url: str) -> bool:
    """Whether ``url`` names its master through Redis Sentinel."""
    return urlsplit(url).scheme == SENTINEL_SCHEME


def parse_sentinel_url(url: str) -> SentinelTarget:
    """Parse ``redis+sentinel://[user:password@]host[:port][,host[:port]...]/service[?db=N]``.

    The userinfo holds the master's credentials; the sentinels' own, if they require
    any, go in the ``sentinel_username`` / ``sentinel_password`` query parameters.
    Ports default to 26379.

    Raises:
        ValueError: a malformed URL; the message never quotes a password.
    """
    parts, username, password, hosts = _split_multi_host(url, SENTINEL_SCHEME)
    sentinels = tuple(_sentinel_address(item) for item in hosts.split(","))
    service = unquote(parts.path.strip("/"))
    if not service or "/" in service:
        raise ValueError(
            f"a {SENTINEL_SCHEME}:// URL names one service after the hosts: "
            f"{SENTINEL_SCHEME}://host:26379/mymaster"
        )
    params = dict(parse_qsl(parts.query, keep_blank_values=True))
    unknown = sorted(set(params) - _SENTINEL_PARAMS)
    if unknown:
        known = ", ".join(sorted(_SENTINEL_PARAMS))
        raise ValueError(f"unknown {SENTINEL_SCHEME}:// parameter(s) {unknown}; known: {known}")
    db_text = params.get("db", "0")
    if not db_text.isdigit():
        raise ValueError(f"the db parameter must be a database number, not {db_text!r}")
    return SentinelTarget(
        sentinels=sentinels,
        service=service,
        db=int(db_text),
        username=username,
        password=password,
        sentinel_username=params.get("sentinel_username") or None,
        sentinel_password=params.get("sentinel_password") or None,
    )


def _split_multi_host(url: str, scheme: str) -> tuple[SplitResult, str | None, str | None, str]:
    """Split a ``scheme://[user:password@]host[:port][,host[:port]...]...`` URL.

    Returns:
        The split URL, the (unquoted) username and password, and the host list text.

    Raises:
        ValueError: another scheme.
    """
    parts = urlsplit(url)
    if parts.scheme != scheme:
        raise ValueError(f"not a {scheme}:// URL (scheme {parts.scheme!r})")
    userinfo, _, hosts = parts.netloc.rpartition("@")
    username = password = None
    if userinfo:
        user, has_password, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if has_password else None
    return parts, username, password, hosts


def _sentinel_address(item: str, default_port: int = _SENTINEL_PORT) -> tuple[str, int]:
    """``host``, ``host:port`` or ``[v6]:port`` -> ``(host, port)``."""
    if item.startswith("["):
        host, bracket, rest = item[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ValueError(f"bad sentinel address {item!r}")
        port_text = rest[1:]
    else:
        host, _, port_text = item.partition(":")
    if not host:
        raise ValueError(f"bad sentinel address {item!r}: no host")
    if not port_text:
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"bad sentinel address {item!r}: not a port")
    return host, int(port_text)


@dataclasses.dataclass(frozen=True)
class ClusterTarget:
    """What a ``redis+cluster://`` URL names.

    Attributes:
        nodes: ``(host, port)`` of each startup node, in the URL's order: any nodes
            of the cluster, asked in turn for the slot map.
        username: the nodes' user, from the URL's userinfo.
        password: their password, from the URL's userinfo.
    """

    nodes: tuple[tuple[str, int], ...]
    username: str | None = dataclasses.field(default=None, repr=False)
    password: str | None = dataclasses.field(default=None, repr=False)

    @property
    def location(self) -> str:
        """The startup nodes, without credentials: ``cluster h1:p1,h2:p2``."""
        hosts = ",".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in self.nodes)
        return f"cluster {hosts}"


def is_cluster_url(url: str) -> bool:
    """Whether ``url`` names a Redis Cluster."""
    return urlsplit(url).scheme == CLUSTER_SCHEME


def parse_cluster_url(url: str) -> ClusterTarget:
    """Parse ``redis+cluster://[user:password@]host[:port][,host[:port]...][/]``.

    Ports default to 6379. A cluster has only database 0, so there is no path and
    no query parameter.

    Raises:
        ValueError: a malformed URL; the message never quotes a password.
    """
    parts, username, password, hosts = _split_multi_host(url, CLUSTER_SCHEME)
    if not hosts:
        raise ValueError(f"a {CLUSTER_SCHEME}:// URL names at least one node: host:port")
    nodes = tuple(_sentinel_address(item, _REDIS_PORT) for item in hosts.split(","))
    if parts.path.strip("/") or parts.query:
        raise ValueError(
            f"a {CLUSTER_SCHEME}:// URL names only nodes (a cluster has database 0 only): "
            f"{CLUSTER_SCHEME}://host:6379,host:6380"
        )
    return ClusterTarget(nodes=nodes, username=username, password=password)


def check_cluster_url(url: str) -> None:
    """Refuse a URL the cluster broker cannot serve.

    Raises:
        ValueError: not a ``redis+cluster://`` URL, or a malformed one.
    """
    parse_cluster_url(url)


def node_client(
    target: ClusterTarget, host: str, port: int, *, timeout: float, max_connections: int
) -> Redis:
    """A client over a pool of ordinary connections to ONE cluster node, never retrying.

    Cluster redirections (MOVED, ASK) are not followed: the broker routes each command
    to the node its slot map names, and a redirection means that map is stale.
    """
    pool = BlockingConnectionPool(
        host=host,
        port=port,
        username=target.username,
        password=target.password,
        max_connections=max_connections,
        timeout=timeout,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
        client_name="wshub-pub",
    )
    return Redis.from_pool(pool)


def node_subscriber(
    target: ClusterTarget, host: str, port: int, *, timeout: float
) -> AbstractConnection:
    """A single pub/sub connection to ONE cluster node, not connected yet, speaking RESP2."""
    conn: AbstractConnection = Connection(
        host=host,
        port=port,
        username=target.username,
        password=target.password,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
        client_name="wshub-sub",
        protocol=2,
    )
    return conn


def redis_location(url: str) -> str:
    """Describe where a Redis URL points, without its credentials (for logs and errors)."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return f"unix:{parts.path}"
    if parts.scheme == SENTINEL_SCHEME:
        try:
            return parse_sentinel_url(url).location
        except ValueError:
            return "sentinel (malformed URL)"
    if parts.scheme == CLUSTER_SCHEME:
        try:
            return parse_cluster_url(url).location
        except ValueError:
            return "cluster (malformed URL)"
    return f"{parts.hostname or 'localhost'}:{parts.port or 6379}"


def check_url(url: str) -> None:
    """Refuse a URL this engine cannot serve.

    Raises:
        ValueError: the scheme is not ``redis``, ``rediss``, ``unix`` or
            ``redis+sentinel``, or a sentinel URL is malformed.
    """
    scheme = urlsplit(url).scheme
    if scheme == CLUSTER_SCHEME:
        # Cluster channels are sharded (SSUBSCRIBE/SPUBLISH, hash-tagged names):
        # a plain Redis client would publish where no cluster subscriber listens.
        raise ValueError(
            f"a {CLUSTER_SCHEME}:// URL is served by the cluster broker "
            "(Hub(broker=...), wshub.brokers.redis_cluster.RedisClusterBroker) only"
        )
    if scheme not in SCHEMES:
        # The URL itself stays out of the message: it may carry a password.
        raise ValueError(
            f"not a Redis URL (scheme {scheme!r}); use redis://, rediss://, unix:// "
            f"or {SENTINEL_SCHEME}://"
        )
    if scheme == SENTINEL_SCHEME:
        parse_sentinel_url(url)


class BlockingSentinelConnectionPool(SentinelConnectionPool, BlockingConnectionPool):
    """A `SentinelConnectionPool` that waits for a free connection (`BlockingConnectionPool`)."""


def _sentinel(target: SentinelTarget, *, timeout: float) -> Sentinel:
    """An async Sentinel manager for ``target``: no retries, ``timeout`` everywhere."""
    return Sentinel(target.sentinels, **_sentinel_options(target, timeout, Retry(NoBackoff(), 0)))


def _sentinel_options(target: SentinelTarget, timeout: float, retry: object) -> dict[str, Any]:
    """Keyword arguments of a Sentinel manager (sync or async): ``timeout`` everywhere,
    ``retry`` (one that never retries) for the sentinels and for the master alike."""
    common = {"socket_timeout": timeout, "socket_connect_timeout": timeout, "retry": retry}
    return {
        "sentinel_kwargs": {**common, **target.sentinel_options()},
        **common,
        **target.master_options(),
    }


def new_pool(url: str, *, timeout: float, max_connections: int) -> Redis:
    """A client over a pool of ordinary connections, opened lazily, never retrying.

    Args:
        url: the Redis URL; for ``redis+sentinel://``, connections go to the master.
        timeout: seconds for connecting, for each command, and for a free connection.
        max_connections: the pool's size; callers beyond it wait up to ``timeout``.

    Returns:
        The client (it connects on first use). Close it with `close_client`.
    """
    if is_sentinel_url(url):
        target = parse_sentinel_url(url)
        client: Redis = _sentinel(target, timeout=timeout).master_for(
            target.service,
            redis_class=Redis,
            connection_pool_class=BlockingSentinelConnectionPool,
            max_connections=max_connections,
            timeout=timeout,
            client_name="wshub-pub",
        )
        return client
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


async def close_client(client: Redis) -> None:
    """Close a client of `new_pool` or `sentinel_client`: its pool, and its sentinels' if any."""
    pool = client.connection_pool
    try:
        await client.aclose()
    finally:
        manager = getattr(pool, "sentinel_manager", None)
        if isinstance(manager, Sentinel):
            for sentinel in manager.sentinels:
                await sentinel.aclose()


def new_subscriber(
    url: str, *, timeout: float, pool: ConnectionPool | None = None
) -> AbstractConnection:
    """A single connection for pub/sub, not connected yet, speaking RESP2.

    Args:
        url: the Redis URL (its ``protocol`` option is overridden).
        timeout: seconds for connecting and for each command.
        pool: the publishing pool (`new_pool`'s); required for a ``redis+sentinel://``
            URL, whose subscriber finds the master through that pool's sentinels.

    Returns:
        The connection; the caller connects it and owns it.

    Raises:
        ValueError: a sentinel URL without its sentinel pool.
    """
    if is_sentinel_url(url):
        if not isinstance(pool, SentinelConnectionPool):
            raise ValueError("a redis+sentinel:// subscriber needs the broker's sentinel pool")
        # The pool's own options (master, credentials, timeouts, no retries) and the
        # pool itself, which asks the sentinels for the master on every connect.
        sentinel_options = dict(pool.connection_kwargs)
        sentinel_options.update(client_name="wshub-sub", protocol=2)
        sentinel_conn: AbstractConnection = pool.connection_class(**sentinel_options)
        return sentinel_conn
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


class MasterMoved(RedisConnectionError):
    """The sentinels name another master than the one a connection is talking to."""


async def check_master(conn: AbstractConnection) -> None:
    """Raise `MasterMoved` when the sentinels name a master other than ``conn``'s peer.

    A connection that is not sentinel-managed, or sentinels that cannot tell (all
    unreachable, or the master down or being failed over), pass: only a definite new
    address counts. Asking through the connection's pool also makes the pool drop its
    idle connections to the old master.

    Raises:
        MasterMoved: a failover (``SENTINEL FAILOVER``, or one the old master did not
            notice) made another node the master.
    """
    if not isinstance(conn, SentinelManagedConnection):
        return
    pool = conn.connection_pool
    try:
        host, port = await pool.get_master_address()
    except (RedisConnectionError, RedisTimeoutError, ResponseError, OSError):
        return
    if (str(host), int(port)) != (str(conn.host), int(conn.port)):
        raise MasterMoved(
            f"the sentinels name {host}:{port} the master now, not {conn.host}:{conn.port}"
        )


def sentinel_client(url: str, *, timeout: float, client_name: str) -> Redis:
    """An async client of the master a ``redis+sentinel://`` URL names, never retrying.

    Close it with `close_client`.
    """
    target = parse_sentinel_url(url)
    client: Redis = _sentinel(target, timeout=timeout).master_for(
        target.service, redis_class=Redis, client_name=client_name
    )
    return client


def sentinel_client_sync(url: str, *, timeout: float, client_name: str) -> redis.Redis:
    """A sync client of the master a ``redis+sentinel://`` URL names, never retrying.

    Close it with `close_client_sync`.
    """
    target = parse_sentinel_url(url)
    manager = redis.sentinel.Sentinel(
        target.sentinels, **_sentinel_options(target, timeout, SyncRetry(NoBackoff(), 0))
    )
    client: redis.Redis = manager.master_for(
        target.service, redis_class=redis.Redis, client_name=client_name
    )
    return client


def close_client_sync(client: redis.Redis) -> None:
    """Close a sync client, and its sentinels' connections if it came from sentinels."""
    pool = client.connection_pool
    try:
        client.close()
    finally:
        manager = getattr(pool, "sentinel_manager", None)
        if isinstance(manager, redis.sentinel.Sentinel):
            for sentinel in manager.sentinels:
                sentinel.close()
