"""The demo pages in a real browser: chat between two pages, history, presence, dashboard."""

from __future__ import annotations

import contextlib
import re
from typing import TYPE_CHECKING, Any

import orjson
from websockets.sync.client import connect

from tests.browser.conftest import expect, open_chat
from tests.serving import RestartableServer

if TYPE_CHECKING:
    from playwright.sync_api import BrowserContext, Page


def say(page: Page, text: str) -> None:
    """Type ``text`` in the composer and send it."""
    page.fill("#text", text)
    page.press("#text", "Enter")


def expect_message(page: Page, author: str, text: str) -> None:
    """Wait until the log shows ``text`` by ``author``."""
    message = page.locator("#log li.msg", has_text=text)
    expect(message).to_have_count(1)
    expect(message.locator(".author")).to_have_text(author)
    expect(message.locator("time")).to_have_text(re.compile(r"\d{1,2}:\d{2}"))


def test_two_pages_chat_and_see_each_other(
    context: BrowserContext, demo_server: RestartableServer, room: str
) -> None:
    """Two pages in one room exchange messages and list each other by name."""
    errors: list[Any] = []
    url = demo_server.http_url(f"/#{room}")
    ada = open_chat(context, url, "ada", errors)
    bob = open_chat(context, url, "bob", errors)
    for page in (ada, bob):
        expect(page.locator("#presence li .name")).to_have_text(
            ["ada", "bob"] if page is ada else ["bob", "ada"]
        )
        expect(page.locator("#room-title")).to_have_text(f"#{room}")
    say(ada, "hello bob")
    expect_message(bob, "ada", "hello bob")
    say(bob, "hi ada")
    expect_message(ada, "bob", "hi ada")
    expect(ada.locator("#log li.mine")).to_have_count(1)
    bob.close()
    expect(ada.locator("#presence li")).to_have_count(1)
    assert errors == []


def test_joining_a_room_shows_its_history(
    context: BrowserContext, demo_server: RestartableServer, room: str
) -> None:
    """A page that joins later shows the room's earlier messages, oldest first."""
    errors: list[Any] = []
    first = open_chat(context, demo_server.http_url(f"/#{room}"), "ada", errors)
    for n in range(3):
        say(first, f"earlier {n}")
        expect_message(first, "ada", f"earlier {n}")
    late = open_chat(context, demo_server.http_url(f"/#{room}"), "cy", errors)
    expect(late.locator("#log li.msg .text")).to_have_text(["earlier 0", "earlier 1", "earlier 2"])
    late.click("#rooms button:text-is('#random')")
    expect(late.locator("#room-title")).to_have_text("#random")
    expect(late.locator("#log li.msg", has_text="earlier 0")).to_have_count(0)
    assert errors == []


def value(page: Page, metric: str) -> float:
    """The number a dashboard card shows."""
    return float(page.locator(f"#v-{metric}").inner_text().replace(",", ""))


def test_dashboard_numbers_move_when_clients_connect(
    context: BrowserContext, demo_server: RestartableServer, room: str
) -> None:
    """Connections, subscriptions and messages out rise on /dashboard as clients arrive."""
    errors: list[Any] = []
    page = context.new_page()
    page.on("pageerror", lambda error: errors.append(error))
    page.goto(demo_server.http_url("/dashboard"))
    expect(page.locator("#broker")).to_have_text("connected")
    expect(page.locator("#v-connections")).to_have_text(re.compile(r"^\d+$"))
    connections, subscriptions = value(page, "connections"), value(page, "subscriptions")
    with contextlib.ExitStack() as stack:
        clients = [
            stack.enter_context(connect(demo_server.ws_url("/ws"), proxy=None)) for _ in "abc"
        ]
        for ws in clients:
            ws.recv(timeout=5)  # welcome
            ws.send(orjson.dumps({"op": "subscribe", "id": 1, "channel": f"chat:{room}"}).decode())
        expect(page.locator("#v-connections")).to_have_text(str(int(connections) + 3))
        expect(page.locator("#v-subscriptions")).to_have_text(str(int(subscriptions) + 3))
        for n in range(20):
            clients[0].send(orjson.dumps({"op": "publish", "channel": f"chat:{room}", "data": n}))
        expect(page.locator("#v-out")).not_to_have_text("0")
        expect(page.locator("#c-out polyline")).to_have_count(1)
    expect(page.locator("#v-connections")).to_have_text(str(int(connections)))
    assert errors == []
