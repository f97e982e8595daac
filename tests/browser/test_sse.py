"""Server-Sent Events in Chromium: `wshub.sse` on an EventSource, against the demo's /sse.

A page receives live messages; it survives a server restart and recovers what was
published meanwhile through Last-Event-ID; and a WebSocket client and an SSE client
see the same messages in the same order.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tests.browser.conftest import TIMEOUT_MS
from tests.browser.test_reconnect import publish_while_stopped
from tests.serving import RestartableServer

if TYPE_CHECKING:
    from playwright.sync_api import BrowserContext, Page

OPEN_SSE = """async (room) => {
  const wshub = await import("/wshub/client.js");
  window.got = [];
  window.gaps = [];
  const stream = wshub.sse("/sse", ["chat:" + room]);
  stream.on("message", (m) => got.push(m.data.text));
  stream.on("recoveryFailed", (r) => gaps.push(r));
  window.stream = stream;
  await new Promise((resolve) => stream.on("welcome", resolve));
}"""


def open_page(context: BrowserContext, server: RestartableServer, errors: list[Any]) -> Page:
    page = context.new_page()
    page.on("pageerror", lambda error: errors.append(error))
    page.goto(server.http_url("/healthz"))  # any page of the server's origin
    return page


def wait_for_texts(page: Page, name: str, texts: list[str], timeout: float = TIMEOUT_MS) -> None:
    page.wait_for_function(
        "([name, texts]) => JSON.stringify(window[name]) === JSON.stringify(texts)",
        arg=[name, texts],
        timeout=timeout,
    )


def test_event_source_gets_live_messages_and_recovers_after_a_restart(
    context: BrowserContext, demo_server: RestartableServer, room: str
) -> None:
    errors: list[Any] = []
    page = open_page(context, demo_server, errors)
    page.evaluate(OPEN_SSE, room)
    page.evaluate("(room) => stream.publish('chat:' + room, {text: 'live one'})", room)
    wait_for_texts(page, "got", ["live one"])

    demo_server.stop()
    publish_while_stopped(f"chat:{room}", ["missed one", "missed two"])
    demo_server.start()

    # EventSource reconnects by itself with Last-Event-ID; the server resumes from it.
    wait_for_texts(page, "got", ["live one", "missed one", "missed two"], 3 * TIMEOUT_MS)
    page.wait_for_function("stream.state === 'connected'")
    page.evaluate("(room) => stream.publish('chat:' + room, {text: 'after'})", room)
    wait_for_texts(page, "got", ["live one", "missed one", "missed two", "after"])
    assert page.evaluate("gaps") == []
    assert errors == []


def test_websocket_and_sse_clients_see_the_same_messages_in_the_same_order(
    context: BrowserContext, demo_server: RestartableServer, room: str
) -> None:
    errors: list[Any] = []
    page = open_page(context, demo_server, errors)
    page.evaluate(OPEN_SSE, room)
    page.evaluate(
        """async (room) => {
          const wshub = await import("/wshub/client.js");
          window.wsGot = [];
          const client = new wshub.Client("/ws");
          window.client = client;
          const sub = client.subscribe("chat:" + room, {onMessage: (m) => wsGot.push(m.data.text)});
          client.connect();
          await sub.ready;
        }""",
        room,
    )
    page.evaluate(
        """async (room) => {
          const sends = [];
          for (let i = 0; i < 20; i++) {
            const text = "m" + i;
            const via = i % 2 ? stream : client;  // alternate SSE (HTTP) and WebSocket
            sends.push(via.publish("chat:" + room, {text}));
          }
          await Promise.all(sends);
        }""",
        room,
    )
    page.wait_for_function("wsGot.length === 20 && got.length === 20")
    ws_order, sse_order = page.evaluate("[wsGot, got]")
    assert ws_order == sse_order
    assert sorted(ws_order) == sorted(f"m{i}" for i in range(20))
    assert errors == []
