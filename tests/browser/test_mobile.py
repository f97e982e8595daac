"""The demo on a phone (390 x 844): layout by element positions, offline states, seed chat.

Screenshots of each page go to ``$WSHUB_SCREENSHOTS`` when it is set (to look at them).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import orjson
import pytest
from websockets.sync.client import connect

from tests.browser.conftest import TIMEOUT_MS, expect
from tests.serving import RestartableServer

if TYPE_CHECKING:
    from playwright.sync_api import Browser, BrowserContext, Page

PHONE = {"width": 390, "height": 844}
GREEN = "rgb(31, 157, 87)"  # --ok, the "online" dot


@pytest.fixture
def phone(browser: Browser) -> Iterator[BrowserContext]:
    ctx = browser.new_context(viewport=PHONE, is_mobile=True, has_touch=True)
    ctx.set_default_timeout(TIMEOUT_MS)
    try:
        yield ctx
    finally:
        ctx.close()


def shot(page: Page, name: str) -> None:
    where = os.environ.get("WSHUB_SCREENSHOTS")
    if where:
        page.screenshot(path=os.path.join(where, f"{name}.png"), full_page=True)


def open_page(ctx: BrowserContext, url: str, errors: list[Any], nick: str = "ada") -> Page:
    page = ctx.new_page()
    page.on("pageerror", lambda error: errors.append(error))
    page.add_init_script(f"localStorage.setItem('wshub-nick', {nick!r})")
    page.goto(url)
    return page


def box(page: Page, selector: str) -> dict[str, float]:
    found = page.locator(selector).bounding_box()
    assert found is not None, f"{selector} is not displayed"
    return found


def assert_no_horizontal_overflow(page: Page) -> None:
    width, inner = page.evaluate("[document.scrollingElement.scrollWidth, innerWidth]")
    assert width <= inner, f"the page scrolls sideways: {width} > {inner}"


def assert_in_viewport(page: Page, selector: str) -> None:
    expect(page.locator(selector)).to_be_visible()
    found = box(page, selector)
    assert found["x"] >= 0 and found["y"] >= 0, found
    assert found["x"] + found["width"] <= PHONE["width"], found
    assert found["y"] + found["height"] <= PHONE["height"], found


def test_chat_on_a_phone_keeps_the_composer_at_the_bottom(
    phone: BrowserContext, demo_server: RestartableServer, room: str
) -> None:
    """Few messages: the input sits at the bottom; the Dashboard link shows; no sideways scroll."""
    errors: list[Any] = []
    page = open_page(phone, demo_server.http_url(f"/#{room}"), errors)
    page.wait_for_selector("#state[data-state=connected]")
    page.fill("#text", "one message")
    page.press("#text", "Enter")
    expect(page.locator("#log li.msg", has_text="one message")).to_have_count(1)
    shot(page, "chat-390")
    composer = box(page, "#text")
    assert composer["y"] + composer["height"] >= PHONE["height"] - 60, composer
    assert_in_viewport(page, "#send")
    assert_in_viewport(page, "a[href='/dashboard']")
    assert_in_viewport(page, "#state")
    assert_no_horizontal_overflow(page)
    page.click("#toggle-side")  # the rooms panel opens above the log, composer still in view
    expect(page.locator("#side")).to_be_visible()
    assert_in_viewport(page, "#text")
    assert_no_horizontal_overflow(page)
    assert errors == []


def test_dashboard_on_a_phone_shows_channels_connections_and_broker(
    phone: BrowserContext, demo_server: RestartableServer, room: str
) -> None:
    """The dashboard fits 390 px and lists the busiest channels, slowest connections, broker."""
    errors: list[Any] = []
    chat = open_page(phone, demo_server.http_url(f"/#{room}"), errors)
    chat.wait_for_selector("#state[data-state=connected]")
    page = open_page(phone, demo_server.http_url("/dashboard"), errors)
    expect(page.locator("#t-channels tr", has_text=f"chat:{room}")).to_have_count(1)
    expect(page.locator("#t-connections tr").first).not_to_have_text("no connections")
    expect(page.locator("#broker-strip span[data-state=connected]").first).to_be_attached()
    chat.fill("#text", "counted")
    chat.press("#text", "Enter")
    expect(chat.locator("#log li.msg", has_text="counted")).to_have_count(1)
    shot(page, "dashboard-390")
    assert_in_viewport(page, "a[href='/']")
    assert_no_horizontal_overflow(page)
    stats = page.evaluate("fetch('/dashboard/stats').then((r) => r.json())")
    mine = [c for c in stats["busiest_channels"] if c["channel"] == f"chat:{room}"]
    assert mine and mine[0]["subscribers"] == 1 and mine[0]["published"] == 1, stats
    assert {"calls", "latency_ms"} <= stats["rpc"].keys()  # kept beside the new fields
    assert all({"id", "queued", "queued_bytes"} <= c.keys() for c in stats["slowest_connections"])
    assert errors == []


def test_offline_shows_sending_and_greys_presence(
    phone: BrowserContext, demo_server: RestartableServer, room: str
) -> None:
    """Server gone: a typed message shows "sending…", presence is not green; back: it is sent."""
    errors: list[Any] = []
    page = open_page(phone, demo_server.http_url(f"/#{room}"), errors)
    page.wait_for_selector("#state[data-state=connected]")
    dot = page.locator("#presence li .online").first
    expect(dot).to_have_css("background-color", GREEN)

    demo_server.stop()
    expect(page.locator("#state")).not_to_have_attribute("data-state", "connected")
    expect(dot).not_to_have_css("background-color", GREEN)
    page.fill("#text", "typed while offline")
    page.press("#text", "Enter")
    pending = page.locator("#log li.pending", has_text="typed while offline")
    expect(pending.locator(".tag")).to_have_text("sending…")
    shot(page, "offline-390")

    demo_server.start()
    expect(page.locator("#state")).to_have_attribute(
        "data-state", "connected", timeout=3 * TIMEOUT_MS
    )
    expect(page.locator("#log li.msg", has_text="typed while offline")).to_have_count(1)
    expect(pending).to_have_count(0)
    expect(dot).to_have_css("background-color", GREEN)
    assert errors == []


def test_seed_chat_room_shows_ws_chat_traffic(
    phone: BrowserContext, demo_server: RestartableServer
) -> None:
    """The "seed chat" room is /ws/chat: the seed snippet's messages show, ours reach it as is."""
    errors: list[Any] = []
    page = open_page(phone, demo_server.http_url("/#seed"), errors, nick="pat")
    expect(page.locator("#room-title")).to_have_text("seed chat")
    with connect(demo_server.ws_url("/ws/chat"), proxy=None) as seed:
        page.wait_for_selector("body[data-seed=open]", state="attached")
        seed.send('{"user": "ada", "text": "hi"}')
        assert seed.recv(timeout=5) == '{"user":"ada","text":"hi"}'
        expect(page.locator("#log li.msg", has_text="hi").locator(".author")).to_have_text("ada")
        page.fill("#text", "hello from the page")
        page.press("#text", "Enter")
        frame = seed.recv(timeout=5)
        assert frame == '{"user":"pat","text":"hello from the page"}'
        assert orjson.loads(frame) == {"user": "pat", "text": "hello from the page"}
    expect(page.locator("#log li.msg", has_text="hello from the page")).to_have_count(1)
    shot(page, "seed-390")
    assert_no_horizontal_overflow(page)
    assert errors == []
