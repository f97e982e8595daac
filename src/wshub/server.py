"""Running a hub app on uvicorn with settings tuned for WebSockets, and a graceful shutdown.

uvicorn answers SIGTERM by closing every WebSocket with 1012 about 0.1 s after the
signal and only then runs the lifespan shutdown, so a hub's lifespan alone comes
too late to drain queues and send 1001. `HubServer` stops accepting, then has
every running hub close its connections with 1001 after their queues drained
(bounded by ``shutdown_timeout``), and only then lets uvicorn shut down.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import uvicorn

from wshub.hub import running_hubs
from wshub.settings import Settings

DEFAULT_APP = "wshub.demo:app"


class HubServer(uvicorn.Server):
    """A uvicorn server whose shutdown closes hub connections with 1001 before uvicorn's 1012."""

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for server in self.servers:
            server.close()
        hubs = running_hubs()
        if hubs:
            await asyncio.gather(*(hub.shutdown_connections() for hub in hubs))
        await super().shutdown(sockets)


def uvicorn_config(app: Any, settings: Settings, **overrides: Any) -> uvicorn.Config:
    """Build a uvicorn config for a hub app.

    uvloop and httptools for speed; the sans-I/O websockets implementation (wshub
    reads every connection continuously, so its pause-until-receive is harmless);
    the message size limit enforced by the WebSocket layer; compression off unless
    asked for; protocol pings for library-mode liveness; and a graceful-shutdown
    timeout so a handler that never returns cannot keep the process alive.

    Args:
        app: the ASGI app or its import string (``"module:attribute"``).
        settings: wshub settings.
        **overrides: uvicorn.Config arguments that win over the above.
    """
    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "loop": "uvloop",
        "http": "httptools",
        "ws": "websockets-sansio",
        "ws_max_size": settings.max_message_size,
        "ws_per_message_deflate": settings.per_message_deflate,
        "ws_ping_interval": settings.ws_ping_interval,
        "ws_ping_timeout": settings.ws_ping_timeout,
        "timeout_graceful_shutdown": settings.shutdown_timeout + 5,
        "log_level": settings.log_level,
        "lifespan": "on",
    }
    options.update(overrides)
    return uvicorn.Config(app, **options)


def run(app: Any = DEFAULT_APP, settings: Settings | None = None, **overrides: Any) -> None:
    """Serve ``app`` until SIGINT/SIGTERM, then shut down gracefully.

    Args:
        app: the ASGI app or its import string.
        settings: wshub settings; by default from ``WSHUB_*`` variables.
        **overrides: uvicorn.Config arguments.

    Raises:
        ValueError: more than one worker with the in-memory broker.
    """
    settings = settings or Settings()
    if settings.workers > 1:
        raise ValueError("several workers need a shared broker: the Redis broker comes next")
    HubServer(uvicorn_config(app, settings, **overrides)).run()
