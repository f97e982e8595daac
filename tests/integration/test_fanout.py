"""Fan-out against a real server: the seed chat to 50 clients, a channel to 200 clients."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from wshub.demo import app as demo_app
from wshub.demo import hub as demo_hub
from wshub.testing import wait_until

from .support import (
    NO_RATE_LIMIT,
    collect_messages,
    connect,
    drop_clients,  # noqa: F401 (an autouse fixture)
    open_protocol,
    publish_all,
    registries_empty,
)

pytestmark = pytest.mark.anyio

CHAT_INPUTS: list[dict[str, Any]] = [
    {"user": "ada", "text": "hi"},
    {},
    {"user": "only a user"},
    {"text": "only a text"},
    {"user": "Zoë", "text": "naïve café — 日本語のテキスト, ελληνικά, עברית"},
    {"user": "🦊", "text": "emoji 😀 👍🏽 👨‍👩‍👧 🏳️‍🌈 and a lone ZWJ \u200d"},
    {"user": 'say "hi"', "text": "back\\slash, 'single', </script>, \"double\""},
    {
        "user": "ctrl",
        "text": "nul\x00 soh\x01 us\x1f tab\t nl\n cr\r bs\b ff\f del\x7f \u2028\u2029",
    },
    {"user": None, "text": ["a", 1, 2.5, -0.0, True, None, {"nested": {"k": "v"}}]},
    {"user": {"b": 1, "a": 2}, "text": 12345678901234567890, "extra": "ignored"},
]


def seed_send_json(data: dict[str, Any]) -> str:
    """What the seed's ``ws.send_json`` puts on the wire for the chat's reply to ``data``."""
    message = {"user": data.get("user", "anon"), "text": data.get("text", "")}
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False)


async def test_seed_chat_reaches_all_50_clients_byte_for_byte(serve) -> None:
    """Every chat message reaches all 50 clients exactly as the seed's send_json encodes it."""
    server = serve(demo_app)
    clients = [await connect(server.ws_url("/ws/chat")) for _ in range(50)]
    try:
        await wait_until(lambda: len(demo_hub.subscribers("chat")) == 50)
        for i, data in enumerate(CHAT_INPUTS):
            # Half the inputs go as ASCII-only JSON (\u escapes), half as raw UTF-8.
            await clients[i * 7 % 50].send(json.dumps(data, ensure_ascii=i % 2 == 0))
            expected = seed_send_json(data)
            received = await asyncio.gather(*(asyncio.wait_for(ws.recv(), 5) for ws in clients))
            assert received == [expected] * 50, data
    finally:
        await asyncio.gather(*(ws.close() for ws in clients))
    await wait_until(lambda: registries_empty(demo_hub))


async def test_200_subscribers_each_get_1000_messages_in_order(hub_server) -> None:
    """200 protocol clients of one channel each receive all 1,000 publications in order."""
    server, hub = hub_server(**NO_RATE_LIMIT)
    clients = await asyncio.gather(*(open_protocol(server, "firehose") for _ in range(200)))
    publisher, _ = await open_protocol(server)
    try:
        assert len(hub.subscribers("firehose")) == 200
        collectors = [
            asyncio.create_task(collect_messages(ws, "firehose", 1000, within=30))
            for ws, _ in clients
        ]
        await publish_all(publisher, "firehose", [{"n": n} for n in range(1000)])
        results = await asyncio.gather(*collectors)
        for received in results:
            assert received == [{"n": n} for n in range(1000)]
        assert hub.stats.overflows == 0 and hub.stats.dropped == 0
        assert hub.stats.deliveries == 200 * 1000
    finally:
        await asyncio.gather(publisher.close(), *(ws.close() for ws, _ in clients))
    await wait_until(lambda: registries_empty(hub))
