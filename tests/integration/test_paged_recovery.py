"""Paginated recovery: a room whose missed messages exceed the send queue is recovered.

A subscribe with ``since`` whose missed messages exceed ``queue_max_bytes`` used to be
answered with one reply frame that overflowed the queue: 4008, the client resubscribed
with the same ``since``, 4008 again, forever. Now the reply carries a first page with
``"more": true`` and the client reads the rest with ``history`` (docs/protocol.md,
"Paginated recovery"), holding live messages meanwhile. Here 100 missed messages of
60 kB (6 MB, over a 1 MiB queue) are recovered completely, in order, exactly once, by
the Python client, by a raw websockets client following the docs, and by wshub.js on
node; and a client that keeps being closed with 4008 backs off instead of looping.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import shutil
import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.asyncio.server import ServerConnection
from websockets.asyncio.server import serve as ws_serve
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

from tests.redis_support import missing_tool
from wshub.client import Client, Message, Recovery
from wshub.hub.permissions import Namespace
from wshub.hub.recovery import PAGE_MAX_BYTES
from wshub.testing import RunningServer, wait_until

from .history_support import (  # noqa: F401 (backend_fixture: the backend fixture)
    Backend,
    HubApp,
    backend_fixture,
    serve_hub,
)
from .support import drop_clients  # noqa: F401 (an autouse fixture)

pytestmark = pytest.mark.anyio

Serve = Callable[..., RunningServer]
ROOT = Path(__file__).resolve().parents[2]
MISSED = 100
PAD = "x" * 60_000


def big_rooms() -> dict[str, Namespace]:
    """The namespaces: ``hist`` keeps 1000 publications, and (where the option exists)
    16 MiB of them, so that 6 MB of missed messages are all still there."""
    options: dict[str, Any] = {"history_size": 1000, "history_ttl": 60}
    if "history_max_bytes" in {field.name for field in dataclasses.fields(Namespace)}:
        options["history_max_bytes"] = 16 << 20
    return {"hist": Namespace(**options), "*": Namespace()}


def serve_big(serve: Serve, backend: Backend) -> HubApp:
    """A hub on ``backend`` whose ``hist`` rooms keep 6 MB, with the default 1 MiB queue."""
    hub_app = serve_hub(serve, backend, namespaces=big_rooms())
    assert hub_app.hub.settings.queue_max_bytes == 1 << 20
    return hub_app


def big(n: int) -> dict[str, Any]:
    """Publication ``n``, 60 kB: 100 of them are 6 MB, six times the 1 MiB queue."""
    return {"n": n, "pad": PAD}


async def publish_big(hub_app: HubApp, channel: str, numbers: range) -> None:
    """``hub.publish`` each numbered 60 kB publication, in the server's loop."""

    async def run() -> None:
        for n in numbers:
            await hub_app.hub.publish(channel, big(n))

    await hub_app.call(run())


async def test_python_client_recovers_100_missed_60kb_messages_over_a_1mib_queue(
    serve: Serve, backend: Backend
) -> None:
    """Subscribe, disconnect, 100 x 60 kB published, reconnect: all once, in order, then live."""
    hub_app = serve_big(serve, backend)
    hub = hub_app.hub
    channel = "hist:big"
    await hub_app.publish(channel, {"n": 0})
    seen: list[Message] = []
    recoveries: list[Recovery] = []
    client = Client(hub_app.url(), on_error=lambda error: None)
    await client.connect()
    await client.subscribe(channel, on_message=seen.append, on_recover=recoveries.append, since=0)
    await wait_until(lambda: len(seen) == 1)
    await client.close()
    await wait_until(lambda: hub.connection_count == 0)

    await publish_big(hub_app, channel, range(1, MISSED + 1))
    await client.connect()
    # Live publications during the page reads: held by the client, delivered after.
    live = asyncio.create_task(publish_big(hub_app, channel, range(MISSED + 1, MISSED + 6)))
    try:
        await wait_until(lambda: len(seen) >= MISSED + 6, within=30)
    finally:
        await live
        await client.close()
    assert [m.offset for m in seen] == list(range(1, MISSED + 7))
    assert [m.data["n"] for m in seen] == list(range(MISSED + 6))
    assert all(m.data["pad"] == PAD for m in seen[1:])
    assert hub.stats.overflows == 0, "a reply overflowed the send queue"
    assert client.last_close is None or client.last_close[0] != 4008
    assert recoveries[0].recovered and recoveries[0].count == 1
    last = recoveries[-1]
    assert last.recovered is True, last
    assert len(recoveries) == 2
    # The recovery reports every page; the rest came live (held, then delivered).
    recovered = [m for m in seen[1:] if m.recovered]
    assert last.count == len(recovered) >= MISSED
    assert all(m.recovered for m in seen[1 : MISSED + 1])


class RawClient:
    """A protocol client written from docs/protocol.md: frames split on ``\\n``, ids."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.frames: list[dict[str, Any]] = []
        self.replies: dict[object, dict[str, Any]] = {}
        self.live: list[dict[str, Any]] = []
        self.largest = 0

    async def _read(self) -> None:
        message = await self.ws.recv()
        assert isinstance(message, str)
        self.largest = max(self.largest, len(message.encode()))
        for line in message.split("\n"):
            frame = json.loads(line)
            if frame.get("id") is not None and ("result" in frame or "error" in frame):
                self.replies[frame["id"]] = frame
            elif frame.get("op") == "message":
                self.live.append(frame)  # held: delivered once recovery is done

    async def request(self, frame: dict[str, Any]) -> dict[str, Any]:
        await self.ws.send(json.dumps(frame))
        while frame["id"] not in self.replies:
            await self._read()
        reply = self.replies.pop(frame["id"])
        assert "result" in reply, reply
        result: dict[str, Any] = reply["result"]
        return result


async def recover_raw(url: str, channel: str, since: int, epoch: str) -> tuple[list[int], int]:
    """Recover as docs/protocol.md says; return the offsets delivered and the largest message."""
    async with ws_connect(url, subprotocols=[Subprotocol("wshub.v1.json")]) as ws:
        client = RawClient(ws)
        await ws.send('{"op":"connect"}')
        welcome = json.loads(await ws.recv())
        assert welcome["op"] == "welcome"
        first = await client.request(
            {"op": "subscribe", "id": 1, "channel": channel, "since": since, "epoch": epoch}
        )
        assert first["recovered"] is True and first["more"] is True
        delivered = [m["offset"] for m in first["messages"]]
        assert delivered[0] == since + 1
        target, last, request_id = first["offset"], delivered[-1], 2
        while last < target:
            page = await client.request(
                {
                    "op": "history",
                    "id": request_id,
                    "channel": channel,
                    "since": last,
                    "limit": target - last,
                }
            )
            request_id += 1
            assert page["epoch"] == first["epoch"] and page["messages"]
            assert page["messages"][0]["offset"] == last + 1
            delivered += [m["offset"] for m in page["messages"]]
            last = delivered[-1]
        delivered += [m["offset"] for m in client.live if m["offset"] > last]
        return delivered, client.largest


async def test_raw_client_following_the_docs_recovers_100_missed_60kb_messages(
    serve: Serve, backend: Backend
) -> None:
    """The documented page loop: first page + more, history pages up to offset, held live."""
    hub_app = serve_big(serve, backend)
    channel = "hist:raw"
    await hub_app.publish(channel, {"n": 0})
    epoch = (await hub_app.call(hub_app.hub.history(channel, limit=0))).position.epoch
    await publish_big(hub_app, channel, range(1, MISSED + 1))
    delivered, largest = await recover_raw(hub_app.url(), channel, 1, epoch)
    assert delivered == list(range(2, MISSED + 2))
    assert largest <= PAGE_MAX_BYTES + 70_000, largest  # one page, plus at most one message
    assert hub_app.hub.stats.overflows == 0


async def test_history_op_replies_are_paginated_with_more(serve: Serve, backend: Backend) -> None:
    """history without since/limit on 6 MB: the oldest page, more: true; a limit reached is not."""
    hub_app = serve_big(serve, backend)
    channel = "hist:pages"
    await publish_big(hub_app, channel, range(MISSED))
    async with ws_connect(hub_app.url()) as ws:
        client = RawClient(ws)
        await ws.recv()  # welcome
        whole = await client.request({"op": "history", "id": 1, "channel": channel})
        assert whole["more"] is True and whole["offset"] == MISSED
        got = [m["offset"] for m in whole["messages"]]
        assert got == list(range(1, len(got) + 1)) and 1 < len(got) < MISSED
        newest = await client.request({"op": "history", "id": 2, "channel": channel, "limit": 50})
        assert newest["more"] is True
        assert newest["messages"][0]["offset"] == MISSED - 49
        small = await client.request(
            {"op": "history", "id": 3, "channel": channel, "since": 10, "limit": 2}
        )
        assert "more" not in small and [m["offset"] for m in small["messages"]] == [11, 12]
        assert client.largest <= PAGE_MAX_BYTES + 70_000


def node_with_websocket() -> list[str] | None:
    """node 22+ (global WebSocket), or node 20/21 with --experimental-websocket; else None."""
    node = shutil.which("node")
    if node is None:
        return None
    version = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=30)
    major = int(version.stdout.strip().lstrip("v").split(".")[0] or 0)
    if major >= 22:
        return [node]
    if major >= 20:
        return [node, "--experimental-websocket", "--no-warnings"]
    return None


async def test_wshub_js_on_node_recovers_100_missed_60kb_messages(
    serve: Serve, backend: Backend
) -> None:
    """wshub.js (node's WebSocket) subscribes, closes, 100 x 60 kB, connects: all once, in order."""
    node = node_with_websocket()
    if node is None:
        missing_tool("needs node 20+ (apt-get install nodejs)")
    hub_app = serve_big(serve, backend)
    script = ROOT / "tests" / "js" / "paged_recovery.mjs"
    proc = await asyncio.create_subprocess_exec(
        *node,
        str(script),
        hub_app.url(),
        "hist:js",
        str(MISSED),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()[-4000:]
    report = json.loads(out.decode().strip().splitlines()[-1])
    assert report["offsets"] == list(range(1, MISSED + 2)), report
    assert report["numbers"] == list(range(MISSED + 1))
    assert report["recoveries"][-1]["recovered"] is True
    assert report["recoveries"][-1]["count"] == MISSED
    assert 4008 not in report["closes"]
    assert hub_app.hub.stats.overflows == 0


# -- repeated 4008 -------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def always_4008() -> AsyncIterator[tuple[str, list[float]]]:
    """A server that welcomes every connection, then closes it with 4008 at once."""
    loop = asyncio.get_running_loop()
    opened: list[float] = []

    async def handler(ws: ServerConnection) -> None:
        opened.append(loop.time())
        with contextlib.suppress(ConnectionClosed):
            await ws.recv()  # {"op":"connect"}
            welcome = {"op": "welcome", "client": "c", "user": None, "ping": 25, "version": 1}
            await ws.send(orjson.dumps(welcome).decode())
            await ws.close(4008, "slow consumer: send queue overflow")

    subprotocols = [Subprotocol("wshub.v1.json")]
    async with ws_serve(handler, "127.0.0.1", 0, subprotocols=subprotocols) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        yield f"ws://127.0.0.1:{port}/ws", opened


WINDOW = 6.0  # seconds watched; the old client reconnected ~60 times in this


async def test_python_client_backs_off_on_repeated_4008() -> None:
    """Closed with 4008 after every welcome: the delays grow, a handful of attempts in 6 s."""
    async with always_4008() as (url, opened):
        delays: list[float] = []

        def on_state(change: Any) -> None:
            if change.code == 4008 and change.delay is not None:
                delays.append(change.delay)

        client = Client(url, on_state=on_state, on_error=lambda error: None)
        task = asyncio.ensure_future(client.connect())
        await asyncio.sleep(WINDOW)
        await client.close()
        with contextlib.suppress(Exception):
            await task
    assert 2 <= len(opened) <= 8, len(opened)
    # Equal jitter: the k-th wait is in [c/2, c) with c doubling, so never shorter.
    assert delays == sorted(delays) and delays[0] >= 0.25 and delays[-1] > delays[0], delays


async def test_wshub_js_backs_off_on_repeated_4008() -> None:
    """wshub.js against the same server: a handful of attempts in 6 s, not dozens."""
    node = node_with_websocket()
    if node is None:
        missing_tool("needs node 20+ (apt-get install nodejs)")
    script = ROOT / "tests" / "js" / "reconnect_count.mjs"
    async with always_4008() as (url, opened):
        proc = await asyncio.create_subprocess_exec(
            *node,
            str(script),
            url,
            str(int(WINDOW * 1000)),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()[-4000:]
    report = json.loads(out.decode().strip().splitlines()[-1])
    assert 2 <= len(opened) <= 8, (len(opened), report)
    assert report["delays"][-1] > report["delays"][0], report
