"""The seed tutorial's browser snippet, pasted unchanged into a page, talks to /ws/chat."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import orjson
import pytest
from fastapi import FastAPI
from fastapi.responses import HTMLResponse
from websockets.sync.client import connect

from tests.serving import RestartableServer, port_is_free
from wshub.testing import TIME_SCALE

if TYPE_CHECKING:
    from playwright.sync_api import BrowserContext, ConsoleMessage, Page

#: Copied verbatim from the seed tutorial ("A small browser client to test it.").
SEED_SNIPPET = """<script>
const ws = new WebSocket("ws://localhost:8000/ws/chat");
ws.onopen = () => ws.send(JSON.stringify({ user: "ada", text: "hi" }));
ws.onmessage = (e) => console.log(JSON.parse(e.data));
</script>"""
SEED_PORT = 8000


@pytest.fixture
def seed_server() -> Iterator[tuple[RestartableServer, str]]:
    """The demo app plus a page holding the seed's snippet at /seed, on port 8000 if free.

    The snippet hardcodes ``ws://localhost:8000``. When something else holds port 8000
    (``make run`` in another terminal, say), the server takes a free port and ONLY the
    port in the snippet is rewritten to match; the page says so in an HTML comment.
    """
    from wshub.demo import app as demo_app
    from wshub.demo import hub

    port = SEED_PORT if port_is_free(SEED_PORT) else 0
    server = RestartableServer(_with_seed_page(demo_app, hub.lifespan), hub.settings, port=port)
    snippet = SEED_SNIPPET
    if server.port != SEED_PORT:
        # Port 8000 is taken: rewrite only the port, so that the snippet reaches this server.
        snippet = SEED_SNIPPET.replace("localhost:8000", f"localhost:{server.port}")
        note = f"<!-- port 8000 was busy: the snippet's port is rewritten to {server.port} -->"
        snippet = f"{note}\n{snippet}"
    server.app.state.seed_snippet = snippet
    with server:
        yield server, snippet


def _with_seed_page(demo_app: Any, lifespan: Any) -> FastAPI:
    """An app serving GET /seed itself and everything else from the demo app."""
    app = FastAPI(lifespan=lifespan)

    @app.get("/seed", response_class=HTMLResponse)
    async def seed_page() -> str:
        snippet: str = app.state.seed_snippet
        return f"<!doctype html>\n<title>seed snippet</title>\n{snippet}\n"

    app.mount("/", demo_app)
    return app


def test_seed_snippet_logs_the_broadcast(
    context: BrowserContext, seed_server: tuple[RestartableServer, str]
) -> None:
    """The page sends {"user":"ada","text":"hi"} and logs it, then another client's message."""
    server, snippet = seed_server
    logged: list[Any] = []
    errors: list[Any] = []

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "log" and message.args:
            logged.append(message.args[0].json_value())

    page = context.new_page()
    page.on("console", on_console)
    page.on("pageerror", lambda error: errors.append(error))
    page.goto(f"http://localhost:{server.port}/seed")
    assert page.content().count("<script>") == 1
    _wait(page, lambda: {"user": "ada", "text": "hi"} in logged)
    with connect(f"ws://127.0.0.1:{server.port}/ws/chat", proxy=None) as other:
        other.send(orjson.dumps({"user": "bob", "text": "hello from python"}).decode())
        assert orjson.loads(other.recv(timeout=5)) == {"user": "bob", "text": "hello from python"}
    _wait(page, lambda: {"user": "bob", "text": "hello from python"} in logged)
    assert logged[0] == {"user": "ada", "text": "hi"}
    assert errors == []
    assert re.search(r"ws://localhost:\d+/ws/chat", page.content())


def _wait(page: Page, predicate: Callable[[], bool], within: float = 10.0) -> None:
    """Poll ``predicate``, waiting in the page: the sync API delivers events only then."""
    deadline = time.monotonic() + within * TIME_SCALE
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        page.wait_for_timeout(50)
