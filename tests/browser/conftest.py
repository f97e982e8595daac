"""Browser tests: headless Chromium from Debian's ``chromium`` package, driven by Playwright.

Never a downloaded browser: Playwright launches ``/usr/bin/chromium`` by path. Without
it, or without the ``playwright`` package, the tests skip with what to install; with
``CI=true`` they fail instead, so CI never passes by skipping. ``make test`` installs
both (``make browser-deps`` and the dev extra).

The demo app (``wshub.demo:app``) runs on a real server in a thread; every test uses
rooms of its own, since the demo's hub and memory broker live for the whole session.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

from tests.redis_support import missing_tool
from tests.serving import RestartableServer
from wshub.testing import TIME_SCALE

if TYPE_CHECKING:  # playwright may be missing: imported only when a test runs
    from playwright.sync_api import Browser, BrowserContext, Locator, Page
    from playwright.sync_api._generated import LocatorAssertions

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
#: Playwright's wait for a page to show something, in milliseconds.
TIMEOUT_MS = 10_000 * TIME_SCALE


def missing_browser() -> str | None:
    """What to install for the browser tests, or None when everything is there."""
    try:
        from playwright.sync_api import sync_playwright  # noqa: F401
    except ImportError:
        return "playwright is not installed: pip install playwright (it is in the dev extra)"
    if not os.access(CHROMIUM, os.X_OK):
        return (
            f"{CHROMIUM} not found: apt-get install chromium (Debian's package; "
            "`playwright install` is not used)"
        )
    return None


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """One headless Chromium per test module; skips (fails under CI=true) when missing.

    Module scope, not session: Playwright's sync API keeps an event loop attached to
    the main thread while it runs, which the asyncio tests of later modules can't share.
    """
    problem = missing_browser()
    if problem is not None:
        missing_tool(problem)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    """A fresh browser profile (cookies, localStorage) per test, closed afterwards."""
    ctx = browser.new_context(viewport={"width": 1000, "height": 700})
    ctx.set_default_timeout(TIMEOUT_MS)
    try:
        yield ctx
    finally:
        ctx.close()


@pytest.fixture
def demo_server() -> Iterator[RestartableServer]:
    """``wshub.demo:app`` on a free port, restartable on that port."""
    from wshub.demo import app, hub

    with RestartableServer(app, hub.settings) as server:
        yield server


@pytest.fixture
def room() -> str:
    """A chat room name no other test uses."""
    return f"t{uuid.uuid4().hex[:8]}"


def open_chat(context: BrowserContext, url: str, nick: str, errors: list[Any]) -> Page:
    """Open the demo chat as ``nick`` and wait until it shows "connected".

    Page errors (uncaught exceptions) are appended to ``errors``.
    """
    page = context.new_page()
    page.on("pageerror", lambda error: errors.append(error))
    page.add_init_script(f"localStorage.setItem('wshub-nick', {nick!r})")
    page.goto(url)
    page.wait_for_selector("#state[data-state=connected]")
    return page


def expect(locator: Locator) -> LocatorAssertions:
    """Playwright's ``expect``, imported when called so that a missing playwright skips.

    Test modules import playwright only for type checking: without it they still
    collect, and the `browser` fixture skips (or fails under CI=true) with a hint.
    """
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect(locator)
