"""The connection lines: one log record per connect, identify, disconnect and refusal.

They go to the ``wshub.connections`` logger at INFO, with the fields also set as
``extra`` so that `wshub.ops.logs.JsonFormatter` writes them as JSON keys.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from starlette.requests import HTTPConnection

if TYPE_CHECKING:
    from wshub.hub.connection import Connection

#: The logger of the one-line-per-connect and per-disconnect records (level INFO).
CONNECTIONS = logging.getLogger("wshub.connections")


def remote_address(websocket: HTTPConnection) -> str:
    """``host:port`` of the peer as the ASGI server reports it, or ``-``."""
    client = websocket.client
    return "-" if client is None else f"{client.host}:{client.port}"


def log_connected(conn: Connection) -> None:
    """Log that ``conn`` was accepted and registered: id, user, remote address."""
    remote = remote_address(conn.websocket)
    CONNECTIONS.info(
        "connect id=%s user=%s remote=%s",
        conn.id,
        conn.user or "-",
        remote,
        extra={"event": "connect", "connection": conn.id, "user": conn.user, "remote": remote},
    )


def log_identified(conn: Connection) -> None:
    """Log that ``conn``, connected already, authenticated with its first frame."""
    CONNECTIONS.info(
        "identified id=%s user=%s",
        conn.id,
        conn.user or "-",
        extra={"event": "identified", "connection": conn.id, "user": conn.user},
    )


def log_disconnected(conn: Connection) -> None:
    """Log that ``conn`` ended: id, user, remote address, duration, close code and reason."""
    remote = remote_address(conn.websocket)
    duration = round(time.time() - conn.connected_at, 3)
    CONNECTIONS.info(
        "disconnect id=%s user=%s remote=%s duration=%.3fs code=%s reason=%r",
        conn.id,
        conn.user or "-",
        remote,
        duration,
        conn.close_code,
        conn.close_reason,
        extra={
            "event": "disconnect",
            "connection": conn.id,
            "user": conn.user,
            "remote": remote,
            "duration": duration,
            "close_code": conn.close_code,
            "close_reason": conn.close_reason,
        },
    )


def log_refused(websocket: HTTPConnection, code: int, reason: str) -> None:
    """Log a handshake refused before any connection existed (bad credentials)."""
    remote = remote_address(websocket)
    CONNECTIONS.info(
        "refused remote=%s code=%s reason=%r",
        remote,
        code,
        reason,
        extra={"event": "refused", "remote": remote, "close_code": code, "close_reason": reason},
    )
