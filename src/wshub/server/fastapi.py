"""FastAPI glue: mount the protocol endpoint on an app with one line."""

from __future__ import annotations

import hashlib
from importlib.resources import files

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response

from wshub.hub.facade import Hub
from wshub.server.endpoint import ProtocolEndpoint
from wshub.server.origins import OriginMiddleware


def mount(app: FastAPI | APIRouter, hub: Hub, path: str = "/ws") -> ProtocolEndpoint:
    """Serve wire protocol v1 for ``hub`` at ``path`` on a FastAPI app or router.

    It also serves the browser client, ``static/wshub.js``, at ``GET /wshub/client.js``
    (once per app or router): ``import { Client } from "/wshub/client.js"``.

    On an app, this also installs the `OriginMiddleware` (once) with the hub's
    ``allowed_origins``, so that every WebSocket endpoint of the app, library-mode
    ones included, refuses foreign browser origins with 4003. On a router, add it
    to the app yourself: ``app.add_middleware(OriginMiddleware, allowed_origins=...)``.

    Args:
        app: the application (or router) to add the WebSocket route to.
        hub: the hub; the app must run ``hub.lifespan``.
        path: the WebSocket path.

    Returns:
        The endpoint, for tests and customisation.
    """
    endpoint = ProtocolEndpoint(hub)
    app.add_api_websocket_route(path, endpoint, name="wshub")
    add_client_route(app)
    installed = {getattr(m, "cls", None) for m in getattr(app, "user_middleware", ())}
    if isinstance(app, FastAPI) and OriginMiddleware not in installed:
        app.add_middleware(OriginMiddleware, allowed_origins=hub.settings.origins())
    return endpoint


CLIENT_PATH = "/wshub/client.js"


def add_client_route(app: FastAPI | APIRouter, path: str = CLIENT_PATH) -> None:
    """Serve the browser client (``wshub/static/wshub.js``) at ``GET path``, once.

    The file ships inside the package and is read once, on the first request.
    ``no-cache`` with an ETag makes browsers revalidate (a 304 when unchanged), so an
    upgraded wshub is picked up at once.
    """
    full_path = getattr(app, "prefix", "") + path
    if any(getattr(route, "path", None) == full_path for route in app.routes):
        return
    source: list[tuple[bytes, str]] = []

    async def client_js(request: Request) -> Response:
        if not source:
            body = (files("wshub") / "static" / "wshub.js").read_bytes()
            source.append((body, f'"{hashlib.sha256(body).hexdigest()[:16]}"'))
        body, etag = source[0]
        headers = {"Cache-Control": "no-cache", "ETag": etag}
        if request.headers.get("if-none-match") == etag:
            return Response(status_code=304, headers=headers)
        return Response(body, media_type="text/javascript; charset=utf-8", headers=headers)

    app.add_api_route(path, client_js, methods=["GET"], include_in_schema=False)


def add_health_routes(app: FastAPI | APIRouter, hub: Hub) -> None:
    """Add ``GET /healthz`` (the process answers) and ``GET /readyz`` (it can serve).

    ``/readyz`` answers 503 while the broker is unreachable or the hub is shutting
    down, so that a load balancer stops sending new connections. Both are cheap
    enough to probe every second.
    """

    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    async def readyz() -> JSONResponse:
        body = {"status": "ready" if hub.ready else "not ready", "broker": hub.broker_state}
        return JSONResponse(body, status_code=200 if hub.ready else 503)

    app.add_api_route("/healthz", healthz, methods=["GET"], include_in_schema=False)
    app.add_api_route("/readyz", readyz, methods=["GET"], include_in_schema=False)
