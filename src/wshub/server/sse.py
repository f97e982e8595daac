"""Server-Sent Events: the hub's channels over one ``text/event-stream`` response.

``GET /sse?channel=a&channel=b`` answers a stream in which every publication is one
event whose ``data`` is the protocol's message frame, and whose ``id`` is a position
token for every channel of the stream (`encode_position_token`). A browser that
reconnects sends the last one back as ``Last-Event-ID`` (or ``?lastEventId=``), and
the stream resumes with exactly what it missed on every channel, then live, through
the same hand-over as a subscribe with ``since`` (`Recovery.subscribe`).

An SSE client is an ordinary `Connection` of the hub: registered, counted by the
limits and in presence, with its bounded send queue and overflow policy, and its one
writer task. Only the "socket" differs: `SSEStream` speaks the ASGI WebSocket dialect
the writer uses (``websocket.send`` / ``websocket.close``) and turns it into an HTTP
response, frame by frame. The hub knows nothing of SSE.

Refusals that must not be retried are HTTP statuses, which SSE clients can see (and
on which `EventSource` stops): 400 (bad channels or token), 401 (authentication),
403 (Origin, or a channel's permissions). Refusals worth retrying (1013 limits, 1001
shutdown) and every later close are a ``close`` event at the end of a 200 stream, on
which `EventSource` reconnects after the stream's ``retry``. See docs/sse.md.
"""

from __future__ import annotations

from fastapi import APIRouter, FastAPI
from starlette.routing import Route

from wshub.hub.facade import Hub
from wshub.server.fastapi import add_client_route
from wshub.server.sse_endpoint import MAX_CHANNEL_CHARS, MAX_CHANNELS, SSEEndpoint
from wshub.server.sse_publish import SSEPublish
from wshub.server.sse_stream import SSEStream
from wshub.server.sse_token import MAX_TOKEN_CHARS as MAX_TOKEN_CHARS
from wshub.server.sse_token import decode_position_token, encode_position_token

__all__ = [
    "MAX_CHANNELS",
    "MAX_CHANNEL_CHARS",
    "SSEEndpoint",
    "SSEStream",
    "decode_position_token",
    "encode_position_token",
    "mount_sse",
]


def mount_sse(
    app: FastAPI | APIRouter,
    hub: Hub,
    path: str = "/sse",
    *,
    publish_path: str | None = "/publish",
    retry: float = 2.0,
) -> SSEEndpoint:
    """Serve ``hub``'s channels as Server-Sent Events at ``GET path``.

    ``GET path?channel=a&channel=b`` streams every publication of those channels;
    ``POST path + publish_path`` publishes (None: no publish route). The browser
    client is served at ``/wshub/client.js`` too (``wshub.sse(url, channels)``).

    Args:
        app: the application or router.
        hub: the hub; the app must run ``hub.lifespan``.
        path: the stream's path.
        publish_path: the publish route, relative to ``path``; None for none.
        retry: seconds `EventSource` waits before reconnecting (sent with ±25 % jitter).

    Returns:
        The endpoint.
    """
    endpoint = SSEEndpoint(hub, retry)
    # A raw ASGI route: the stream writes its response itself.
    full_path = getattr(app, "prefix", "") + path
    app.routes.append(Route(full_path, endpoint, methods=["GET"], include_in_schema=False))
    if publish_path is not None:
        app.add_api_route(
            path.rstrip("/") + publish_path,
            SSEPublish(endpoint).__call__,
            methods=["POST"],
            include_in_schema=False,
        )
    add_client_route(app)
    return endpoint
