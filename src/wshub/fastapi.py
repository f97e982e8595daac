"""FastAPI glue: mount the protocol endpoint on an app with one line."""

from __future__ import annotations

from fastapi import APIRouter, FastAPI

from wshub.endpoint import ProtocolEndpoint
from wshub.hub import Hub


def mount(app: FastAPI | APIRouter, hub: Hub, path: str = "/ws") -> ProtocolEndpoint:
    """Serve wire protocol v1 for ``hub`` at ``path`` on a FastAPI/Starlette app or router.

    Args:
        app: the application (or router) to add the WebSocket route to.
        hub: the hub; the app must run ``hub.lifespan``.
        path: the WebSocket path.

    Returns:
        The endpoint, for tests and customisation.
    """
    endpoint = ProtocolEndpoint(hub)
    app.add_api_websocket_route(path, endpoint, name="wshub")
    return endpoint
