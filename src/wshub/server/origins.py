"""Origin checks against cross-site WebSocket hijacking.

Browsers send an ``Origin`` header with every WebSocket handshake and apply no
CORS to it, so any page could open a socket to your server with the user's
cookies. `OriginMiddleware` refuses handshakes whose Origin is not allowed: it
accepts and closes them with 4003 (a close code, so that a browser client can
tell "forbidden" from "network down"); the endpoint's code never runs.

By default only the server's own origin is allowed (the Origin's host and port
equal the ``Host`` header). ``*`` allows every origin. Handshakes without an
Origin header (non-browser clients) are not affected: the check protects
browsers' ambient credentials, which other clients don't have.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from wshub.core.errors import CloseCode

logger = logging.getLogger("wshub.origins")


def origin_allowed(origin: str | None, host: str | None, allowed: frozenset[str]) -> bool:
    """Tell whether a handshake's Origin is allowed.

    Args:
        origin: the Origin header, or None when absent.
        host: the Host header.
        allowed: allowed origins (``scheme://host[:port]``), possibly ``*``.
    """
    if origin is None or "*" in allowed:
        return True
    if origin.rstrip("/").lower() in allowed:
        return True
    if host is None:
        return False
    try:
        theirs, ours = urlsplit(origin.lower()), urlsplit("//" + host.lower())
        if theirs.netloc == ours.netloc:
            return True
        # localhost, 127.0.0.1 and [::1] on the same port are this very server: a page
        # served at http://127.0.0.1:8000 may open ws://localhost:8000 (the seed snippet does).
        return (
            theirs.hostname in _LOOPBACK
            and ours.hostname in _LOOPBACK
            and (theirs.port or _default_port(theirs.scheme)) == (ours.port or 80)
        )
    except ValueError:  # both headers are the client's: a bad port or IPv6 literal is a refusal
        return False


_LOOPBACK = frozenset({"localhost", "127.0.0.1", "::1"})


def _default_port(scheme: str) -> int:
    return 443 if scheme == "https" else 80


class OriginMiddleware:
    """ASGI middleware: WebSocket handshakes from a refused Origin are closed with 4003.

    Args:
        app: the wrapped app.
        allowed_origins: extra allowed origins, or ``["*"]``; the server's own origin
            is always allowed.
    """

    def __init__(self, app: ASGIApp, allowed_origins: Iterable[str] = ()) -> None:
        self.app = app
        self.allowed = frozenset(o.rstrip("/").lower() for o in allowed_origins)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "websocket":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        origin = headers.get("origin")
        if origin_allowed(origin, headers.get("host"), self.allowed):
            await self.app(scope, receive, send)
            return
        logger.info("refused WebSocket from origin %r", origin)
        await receive()  # websocket.connect
        await send({"type": "websocket.accept"})
        await send(
            {"type": "websocket.close", "code": CloseCode.FORBIDDEN, "reason": "origin not allowed"}
        )
