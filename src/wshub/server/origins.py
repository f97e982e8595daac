"""Origin checks against cross-site WebSocket hijacking.

Browsers send an ``Origin`` header with every WebSocket handshake and apply no
CORS to it, so any page could open a socket to your server with the user's
cookies. `OriginMiddleware` refuses handshakes whose Origin is not allowed: it
accepts and closes them with 4003 (a close code, so that a browser client can
tell "forbidden" from "network down"); the endpoint's code never runs. The accept
names one of the client's offered subprotocols, else browsers would fail the
socket with 1006 before the 4003 arrives.

By default only the server's own origin is allowed: the Origin's scheme, host and
port must be the server's, as browsers define an origin. The server's scheme is the
ASGI scope's (``ws`` is ``http``, ``wss`` is ``https``; behind a TLS-terminating proxy
uvicorn takes it from ``X-Forwarded-Proto`` when the proxy is trusted, see
``forwarded_allow_ips``), its host and port the ``Host`` header's; a missing port is
the scheme's default (80, 443). ``*`` allows every origin. Handshakes without an
Origin header (non-browser clients) are not affected: the check protects browsers'
ambient credentials, which other clients don't have.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from wshub.core.codecs import PROTOCOL_SUBPROTOCOLS, refusal_subprotocol
from wshub.core.errors import CloseCode

logger = logging.getLogger("wshub.origins")


def origin_allowed(
    origin: str | None, host: str | None, allowed: frozenset[str], scheme: str = "ws"
) -> bool:
    """Tell whether a handshake's Origin is allowed.

    Args:
        origin: the Origin header, or None when absent.
        host: the Host header.
        allowed: allowed origins (``scheme://host[:port]``), possibly ``*``.
        scheme: the scheme the server was reached with (the ASGI scope's: ``ws``,
            ``wss``, or ``http`` / ``https``).
    """
    if origin is None or "*" in allowed:
        return True
    if origin.rstrip("/").lower() in allowed:
        return True
    theirs = parse_origin(origin)
    if theirs is None:
        return False
    if theirs in _parsed(allowed):
        return True  # the same origin spelled with its default port, say
    if host is None:
        return False
    ours = parse_origin(f"{_HTTP_SCHEMES.get(scheme.lower(), scheme.lower())}://{host}")
    if ours is None or theirs[0] != ours[0] or theirs[2] != ours[2]:
        return False
    # localhost, 127.0.0.1 and [::1] on the same port are this very server: a page
    # served at http://127.0.0.1:8000 may open ws://localhost:8000 (the seed snippet does).
    return theirs[1] == ours[1] or (theirs[1] in _LOOPBACK and ours[1] in _LOOPBACK)


def parse_origin(origin: str) -> tuple[str, str, int] | None:
    """``(scheme, host, port)`` of an http(s) origin, the port defaulted; None if it isn't one.

    Hosts are lower-cased and IPv6 literals lose their brackets. Anything unparsable
    (a bad port, a broken IPv6 literal, ``null``, another scheme, a path) is None.
    """
    try:
        parts = urlsplit(origin.strip().rstrip("/"))
        port = parts.port
    except ValueError:  # both headers are the client's: a bad port or IPv6 literal
        return None
    scheme, hostname = parts.scheme.lower(), parts.hostname
    if scheme not in _DEFAULT_PORTS or not hostname or parts.path or parts.query:
        return None
    if parts.username is not None or parts.password is not None or parts.fragment:
        return None
    return scheme, hostname, _DEFAULT_PORTS[scheme] if port is None else port


@functools.lru_cache(maxsize=32)
def _parsed(allowed: frozenset[str]) -> frozenset[tuple[str, str, int]]:
    return frozenset(o for o in map(parse_origin, allowed) if o is not None)


_LOOPBACK = frozenset({"localhost", "127.0.0.1", "::1"})
_DEFAULT_PORTS = {"http": 80, "https": 443}
#: The page scheme a WebSocket scheme corresponds to.
_HTTP_SCHEMES = {"ws": "http", "wss": "https"}


class OriginMiddleware:
    """ASGI middleware: WebSocket handshakes from a refused Origin are closed with 4003.

    Args:
        app: the wrapped app.
        allowed_origins: extra allowed origins, or ``["*"]``; the server's own origin
            is always allowed.
        subprotocols: the subprotocols to prefer when accepting a refused handshake
            (wshub's by default); without one of them offered, the client's first offer.
    """

    def __init__(
        self,
        app: ASGIApp,
        allowed_origins: Iterable[str] = (),
        subprotocols: Iterable[str] = PROTOCOL_SUBPROTOCOLS,
    ) -> None:
        self.app = app
        self.allowed = frozenset(o.rstrip("/").lower() for o in allowed_origins)
        self.subprotocols = tuple(subprotocols)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "websocket":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        origin = headers.get("origin")
        scheme = str(scope.get("scheme") or "ws")
        if origin_allowed(origin, headers.get("host"), self.allowed, scheme):
            await self.app(scope, receive, send)
            return
        logger.info("refused WebSocket from origin %r", origin)
        await receive()  # websocket.connect
        # Name one of the client's offers, or the browser fails the socket with 1006
        # and never sees the 4003 (see `refusal_subprotocol`).
        offered = list(scope.get("subprotocols") or [])
        accept: dict[str, object] = {"type": "websocket.accept"}
        subprotocol = refusal_subprotocol(offered, self.subprotocols)
        if subprotocol is not None:
            accept["subprotocol"] = subprotocol
        await send(accept)
        await send(
            {"type": "websocket.close", "code": CloseCode.FORBIDDEN, "reason": "origin not allowed"}
        )
