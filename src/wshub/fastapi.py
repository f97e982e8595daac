"""FastAPI glue: mount the protocol endpoint on an app with one line."""

from __future__ import annotations

from fastapi import APIRouter, FastAPI

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
