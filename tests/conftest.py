"""Shared fixtures: a real uvicorn server per test, in a thread, on an ephemeral port."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from typing import Any

import pytest
from fastapi import FastAPI, WebSocket

from tests.cluster_support import redis_cluster  # noqa: F401  (session-scoped fixture)
from wshub import Hub, mount
from wshub.testing import RunningServer, run_server


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def make_app(**settings: Any) -> tuple[FastAPI, Hub]:
    """A test app: the protocol endpoint at /ws, a seed-style echo chat at /ws/chat.

    Args:
        **settings: hub settings overrides (e.g. ``queue_max_messages=10``).
    """
    hub = Hub(**settings)
    app = FastAPI(lifespan=hub.lifespan)
    mount(app, hub, "/ws")

    @app.websocket("/ws/chat")
    async def chat(ws: WebSocket) -> None:
        async with hub.connect(ws) as conn:
            await conn.subscribe("chat")
            async for data in conn.iter_json():
                await hub.publish(
                    "chat", {"user": data.get("user", "anon"), "text": data.get("text", "")}
                )

    return app, hub


@pytest.fixture
def serve() -> Iterator[Callable[..., RunningServer]]:
    """Start a real server for an app: ``server = serve(app, settings=..., **uvicorn_opts)``.

    Every server started is stopped at the end of the test.
    """
    with ExitStack() as stack:

        def start(app: Any, **kwargs: Any) -> RunningServer:
            return stack.enter_context(run_server(app, **kwargs))

        yield start


@pytest.fixture
def hub_server(serve: Callable[..., RunningServer]) -> Callable[..., tuple[RunningServer, Hub]]:
    """Start the test app with hub settings overrides: ``server, hub = hub_server(**settings)``."""

    def start(**settings: Any) -> tuple[RunningServer, Hub]:
        app, hub = make_app(**settings)
        return serve(app, settings=hub.settings), hub

    return start
