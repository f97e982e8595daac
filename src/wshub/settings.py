"""Settings, from arguments or ``WSHUB_*`` environment variables (pydantic-settings).

Every limit has a default here, a setting (``WSHUB_<NAME>``) and a test at the limit.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from wshub.core.sendqueue import OverflowPolicy

KIB = 1024
MIB = 1024 * KIB


class Settings(BaseSettings):
    """Hub and server settings. Environment variables are ``WSHUB_`` plus the name in capitals.

    Attributes:
        broker: broker URL: ``memory://`` (one process) or ``redis://host:port/db``.
        redis_prefix: prefix of wshub's channel names in Redis, so apps can share one.
        redis_probe_interval: seconds between liveness probes of the Redis subscriber
            connection (Redis drops slow pub/sub clients without telling them).
        host, port, workers, log_level: what `wshub serve` listens on and how it logs.
        max_message_size: largest incoming WebSocket message in bytes; larger closes 1009.
        queue_max_messages, queue_max_bytes: bounds of each connection's send queue.
        overflow_policy: what a full send queue does: disconnect (4008), drop_oldest, drop_newest.
        pack_max_bytes: largest packed message the protocol endpoint's writer builds.
        ping_interval, pong_timeout: protocol endpoint heartbeat: ``{"op":"ping"}`` every
            ``ping_interval`` s, close 4009 when no pong comes within ``pong_timeout`` s.
        ws_ping_interval, ws_ping_timeout: WebSocket protocol pings sent by the server
            (uvicorn), the liveness check of library-mode endpoints.
        max_subscriptions: channels one connection may be subscribed to at once.
        publish_pipeline_depth: publishes of one connection in flight at once; the
            connection's next frames wait beyond it (1: each publish answered in turn).
        max_rpc_in_flight: RPC calls of one connection running at once; one more is
            answered with ``rate_limited`` (each call runs in a task of its own).
        history_max_memory: memory broker: bytes all channel histories of the process
            may hold (0: unbounded); past it the least recently published channels
            lose their oldest publications first.
        idempotency_window: seconds a publish's ``idempotency_key`` is remembered per
            channel: a retry with the same key within it publishes nothing again.
        position_check_interval: seconds between checks that every channel with history
            and local members was delivered up to its history's top (gap refill).
        presence_ttl: seconds a presence entry outlives its process (entries are
            refreshed every third of it; a killed worker's entries vanish after it).
        max_inbound_messages, max_inbound_bytes: library mode: messages (and their bytes)
            received but not yet consumed by the endpoint's loop; a client that outruns
            its handler by more is closed with 4029.
        close_timeout: seconds a close may take (queue flush included) before the
            connection is dropped without one.
        shutdown_timeout: seconds graceful shutdown waits for queues to drain.
        handshake_timeout: seconds `wshub serve` gives a new connection (and each next
            request on a kept-alive one) to complete its request line and headers; then
            the connection is closed.
        per_message_deflate: WebSocket compression; off by default (memory per connection,
            compression bombs, secrets leaking through compressed sizes).
        transport_fast_path: under uvicorn's sans-I/O WebSocket implementation, write
            frames built once per publication straight to the transport (see
            `wshub.transport`); off: every send goes through ASGI.
        jwt_secret: HMAC secret for HS256 tokens; setting it (or jwt_public_key_file)
            turns authentication on.
        jwt_public_key_file: PEM public key for RS256/ES256 tokens.
        jwt_algorithms: accepted algorithms, comma-separated (default HS256 with a
            secret, RS256,ES256 with a public key).
        jwt_audience, jwt_issuer, jwt_leeway: ``aud`` / ``iss`` to require, clock skew.
        auth_cookie: the cookie that may carry the token.
        allow_anonymous: with authentication on, still let connections without a token in.
        auth_timeout: seconds a client without a handshake token has to send
            ``{"op":"connect","token":...}``; then 4001.
        allowed_origins: browser origins allowed besides the server's own,
            comma-separated (``*``: all); others are closed with 4003.
        rate_limit, rate_burst: frames per second a client may send, and the burst.
        rate_limit_strikes: refused frames after which the client is closed with 4029.
        max_connections: connections per process; more are closed with 1013.
        max_connections_per_user: connections per user per process; more get 1013.
        max_unauthenticated: protocol-endpoint connections per process still waiting
            for their ``connect`` frame (no handshake token); they do not count against
            ``max_connections``. One more closes the oldest of them with 1013. Default
            (None): ``min(1000, max_connections)``.
        api_key: the key of the HTTP server API (``Authorization: apikey <key>``);
            without one the API is not mounted (its paths answer 404).
        log_format: ``text`` or ``json`` (one JSON object per line), applied by `wshub serve`.
        metrics_interval: seconds between copies of the hub's counters into the
            Prometheus multiprocess files (only with ``PROMETHEUS_MULTIPROC_DIR``).
    """

    model_config = SettingsConfigDict(env_prefix="WSHUB_", extra="ignore")

    broker: str = "memory://"
    redis_prefix: str = "wshub:"
    redis_probe_interval: float = Field(default=5.0, gt=0)
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    workers: int = Field(default=1, ge=1)
    log_level: str = "info"

    max_message_size: int = Field(default=64 * KIB, ge=1)
    queue_max_messages: int = Field(default=1000, ge=1)
    queue_max_bytes: int = Field(default=1 * MIB, ge=1)
    overflow_policy: OverflowPolicy = OverflowPolicy.DISCONNECT
    pack_max_bytes: int = Field(default=64 * KIB, ge=1)

    ping_interval: float = Field(default=25.0, gt=0)
    pong_timeout: float = Field(default=10.0, gt=0)
    ws_ping_interval: float = Field(default=20.0, gt=0)
    ws_ping_timeout: float = Field(default=20.0, gt=0)

    max_subscriptions: int = Field(default=128, ge=1)
    publish_pipeline_depth: int = Field(default=64, ge=1)
    max_rpc_in_flight: int = Field(default=16, ge=1)
    history_max_memory: int = Field(default=64 * MIB, ge=0)
    idempotency_window: float = Field(default=300.0, gt=0)
    position_check_interval: float = Field(default=10.0, gt=0)
    presence_ttl: float = Field(default=30.0, gt=0)
    max_inbound_messages: int = Field(default=256, ge=1)
    max_inbound_bytes: int = Field(default=1 * MIB, ge=1)
    close_timeout: float = Field(default=5.0, gt=0)
    shutdown_timeout: float = Field(default=10.0, gt=0)
    handshake_timeout: float = Field(default=10.0, gt=0)
    per_message_deflate: bool = False
    transport_fast_path: bool = True

    jwt_secret: SecretStr | None = None
    jwt_public_key_file: str | None = None
    jwt_algorithms: str = ""
    jwt_audience: str | None = None
    jwt_issuer: str | None = None
    jwt_leeway: float = Field(default=0.0, ge=0)
    auth_cookie: str = "wshub_token"
    allow_anonymous: bool = False
    auth_timeout: float = Field(default=5.0, gt=0)
    allowed_origins: str = ""

    rate_limit: float = Field(default=100.0, gt=0)
    rate_burst: int = Field(default=200, ge=1)
    rate_limit_strikes: int = Field(default=50, ge=1)
    max_connections: int = Field(default=10_000, ge=1)
    max_connections_per_user: int = Field(default=100, ge=1)
    max_unauthenticated: int | None = Field(default=None, ge=1)

    api_key: SecretStr | None = None
    log_format: Literal["text", "json"] = "text"
    metrics_interval: float = Field(default=1.0, gt=0)

    def unauthenticated_limit(self) -> int:
        """``max_unauthenticated``, or its default ``min(1000, max_connections)``."""
        if self.max_unauthenticated is not None:
            return self.max_unauthenticated
        return min(1000, self.max_connections)

    def origins(self) -> list[str]:
        """The allowed origins as a list."""
        return [o.strip() for o in self.allowed_origins.split(",") if o.strip()]
