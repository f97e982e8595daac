"""FastAPI glue: mount the protocol endpoint on an app with one line."""

from __future__ import annotations

from fastapi import APIRouter, FastAPI
from fastapi.responses import JSONResponse

from wshub.endpoint import ProtocolEndpoint
from wshub.hub import Hub
from wshub.origins import OriginMiddleware


def mount(app: FastAPI | APIRouter, hub: Hub, path: str = "/ws") -> ProtocolEndpoint:
    """Serve wire protocol v1 for ``hub`` at ``path`` on a FastAPI app or router.

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
    installed = {getattr(m, "cls", None) for m in getattr(app, "user_middleware", ())}
    if isinstance(app, FastAPI) and OriginMiddleware not in installed:
        app.add_middleware(OriginMiddleware, allowed_origins=hub.settings.origins())
    return endpoint


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
