"""A page open while the server restarts: it shows reconnecting, comes back and recovers."""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from typing import TYPE_CHECKING, Any

from tests.browser.conftest import TIMEOUT_MS, expect, open_chat
from tests.serving import RestartableServer

if TYPE_CHECKING:
    from playwright.sync_api import BrowserContext


def publish_while_stopped(channel: str, texts: list[str]) -> None:
    """Publish through the demo hub while its server is down (history only, no one to tell).

    The memory broker outlives the uvicorn server: the same `Hub` object serves the
    next run, as a Redis broker would outlive a restarted process. A thread of its own
    runs the coroutine, away from Playwright's event loop.
    """
    from wshub.demo import hub

    async def publish() -> None:
        for text in texts:
            await hub.publish(channel, {"user": "server", "text": text, "ts": time.time() * 1000})

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, publish()).result(timeout=10)


def test_page_reconnects_after_restart_and_recovers_missed_messages(
    context: BrowserContext, demo_server: RestartableServer, room: str
) -> None:
    """Stop, publish two messages, start on the same port: the page shows them, recovered."""
    errors: list[Any] = []
    page = open_chat(context, demo_server.http_url(f"/#{room}"), "ada", errors)
    page.fill("#text", "before the restart")
    page.press("#text", "Enter")
    expect(page.locator("#log li.msg", has_text="before the restart")).to_have_count(1)
    # Recovery needs the channel's epoch, which the client reads after the first message.
    page.wait_for_function(
        "room => wshubClient.positions.resubscribeFields('chat:' + room).epoch", arg=room
    )

    demo_server.stop()
    expect(page.locator("#state")).to_have_attribute("data-state", "reconnecting")
    publish_while_stopped(f"chat:{room}", ["missed one", "missed two"])
    demo_server.start()

    state = page.locator("#state")
    expect(state).to_have_attribute("data-state", "connected", timeout=3 * TIMEOUT_MS)
    recovered = page.locator("#log li.msg", has=page.locator(".tag", has_text="recovered"))
    expect(recovered.locator(".text")).to_have_text(["missed one", "missed two"])
    expect(page.locator("#log li.note.good")).to_have_text(
        "Reconnected: 2 missed messages recovered"
    )
    texts = page.locator("#log li.msg .text")
    expect(texts).to_have_text(["before the restart", "missed one", "missed two"])
    page.fill("#text", "after the restart")
    page.press("#text", "Enter")
    expect(texts).to_have_text(
        ["before the restart", "missed one", "missed two", "after the restart"]
    )
    assert errors == []
