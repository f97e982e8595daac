"""Chromium on a foreign origin: wshub.js sees 4003 (not 1006) and stops reconnecting.

The hub runs on one server; a second server, on another port (another origin),
serves a page and a copy of wshub.js. The page's client offers ``wshub.v1.json``;
`OriginMiddleware` must accept with it, or Chromium fails the socket with 1006 and
the client, never seeing 4003, retries forever.
"""

from __future__ import annotations

import time
from importlib.resources import files
from typing import TYPE_CHECKING

from fastapi import FastAPI
from fastapi.responses import HTMLResponse, Response

from tests.conftest import make_app
from wshub.testing import TIME_SCALE, run_server

if TYPE_CHECKING:
    from playwright.sync_api import BrowserContext

PAGE = """<!doctype html>
<meta charset="utf-8"><title>foreign</title>
<script type="module">
  import { Client } from "/wshub.js";
  window.opened = 0;
  window.closes = [];
  window.errors = [];
  class Counting extends WebSocket {
    constructor(url, protocols) { super(url, protocols); window.opened++; }
  }
  const client = new Client("HUB_URL", { WebSocket: Counting, backoffBase: 50, backoffCap: 100 });
  client.on("state", (state, info) => {
    if (state === "disconnected") window.closes.push([info.code, info.reason, info.reconnect]);
  });
  client.on("error", (error) => window.errors.push([error.code, error.message]));
  client.connect();
</script>
"""


def foreign_site(hub_url: str) -> FastAPI:
    """A page on another origin, with its own copy of wshub.js (module scripts need CORS)."""
    app = FastAPI()
    source = (files("wshub") / "static" / "wshub.js").read_bytes()

    @app.get("/")
    async def page() -> HTMLResponse:
        return HTMLResponse(PAGE.replace("HUB_URL", hub_url))

    @app.get("/wshub.js")
    async def client_js() -> Response:
        return Response(source, media_type="text/javascript")

    return app


def test_a_foreign_page_sees_4003_and_stops_reconnecting(context: BrowserContext) -> None:
    hub_app, hub = make_app()
    with (
        run_server(hub_app, hub.settings) as hub_server,
        run_server(foreign_site(hub_server.ws_url("/ws"))) as site,
    ):
        assert site.port != hub_server.port  # another origin
        page = context.new_page()
        page.goto(site.http_url("/"))
        page.wait_for_function("window.closes && window.closes.length > 0")
        time.sleep(3 * TIME_SCALE)  # with a 50-100 ms backoff, a retrying client would try ~30x
        closes = page.evaluate("window.closes")
        assert closes == [[4003, "origin not allowed", False]], closes
        assert page.evaluate("window.opened") == 1
        [[_, message]] = page.evaluate("window.errors")
        assert "origin not allowed" in message
        assert hub.connection_count == 0
