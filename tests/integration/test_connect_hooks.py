"""``@hub.on_connect``: server-side subscriptions, refusals, and their recovery on reconnect.

A hook subscribes the connection before the welcome, which lists those subscriptions
(``subscribed``, with the position of channels that keep history); the client receives
their messages without asking. A hook raising ``RPCError`` closes with 4003. After a
reconnect, a client resubscribes a hook-subscribed history channel with ``since``: the
server answers it as a recovery on the membership the hook made again, and a client
holding the channel's live messages until that reply sees every message once, in order,
on the memory broker and on Redis, with a raw websockets client, the Python client and
wshub.js on node.
"""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import websockets

from tests.redis_support import missing_tool
from wshub import Access, Connection, Namespace, RPCError
from wshub.client import Client, Message
from wshub.testing import RunningServer, wait_until

from .history_support import (  # noqa: F401 (backend_fixture: the backend fixture)
    Backend,
    HubApp,
    abort,
    backend_fixture,
    open_wire,
    serve_hub,
)
from .support import connect, drop_clients, scaled  # noqa: F401 (an autouse fixture)
from .test_paged_recovery import node_with_websocket
from .wire import Frame, WireClient

pytestmark = pytest.mark.anyio

Serve = Callable[..., RunningServer]
ROOT = Path(__file__).resolve().parents[2]

#: ``feed:`` keeps history and no client may subscribe to it: only the hook does.
HOOK_NAMESPACES = {
    "feed": Namespace(subscribe=Access.NOBODY, history_size=1000, history_ttl=60),
    "team": Namespace(),
    "*": Namespace(),
}


def hooked_hub(serve: Serve, backend: Backend, **options: Any) -> HubApp:
    """A hub whose hook subscribes ``feed:all`` and ``team:<?team=>``, refuses ``?ban=1``
    and crashes on ``?crash=1``; RPC ``emit`` publishes ``params`` to ``feed:all``."""
    hub_app = serve_hub(serve, backend, namespaces=HOOK_NAMESPACES, **options)
    hub = hub_app.hub

    @hub.on_connect
    async def join_feeds(conn: Connection) -> None:
        query = conn.websocket.query_params
        if query.get("ban"):
            raise RPCError("banned", "you are banned")
        if query.get("crash"):
            raise RuntimeError("hook bug")
        await conn.subscribe("feed:all")
        if team := query.get("team"):
            await conn.subscribe(f"team:{team}")
            if query.get("shout"):  # published between the hook's subscribe and the welcome
                await hub.publish(f"team:{team}", "during the hook")
                await hub.publish("feed:all", "during the hook")

    @hub.rpc("emit")
    async def emit(conn: Connection, params: Any) -> Any:
        return (await hub.publish("feed:all", params)).offset

    return hub_app


def listed(subscribed: list[Frame]) -> list[tuple[str, int | None]]:
    """The welcome's ``subscribed`` as (channel, offset); every epoch a string when given."""
    assert all(isinstance(e["epoch"], str) for e in subscribed if "offset" in e), subscribed
    return [(e["channel"], e.get("offset")) for e in subscribed]


async def test_hook_subscriptions_are_in_the_welcome_and_deliver(
    serve: Serve, backend: Backend
) -> None:
    """``subscribed`` lists the hook's channels; their messages come without a subscribe."""
    hub_app = hooked_hub(serve, backend)
    async with open_wire(hub_app.url("/ws?team=red")) as client:
        assert listed(client.welcome["subscribed"]) == [("feed:all", 0), ("team:red", None)]
        assert client.welcome["subscribed"][1] == {"channel": "team:red"}
        await hub_app.publish("team:red", {"go": 1})
        offset = await hub_app.publish("feed:all", {"n": 1})
        got = await client.messages("team:red", 1)
        assert got[0]["data"] == {"go": 1}
        [message] = await client.messages("feed:all", 1)
        assert (message["data"], message["offset"]) == ({"n": 1}, offset)
        # Clients may not subscribe to feed: themselves; a member may (a recovery).
        async with open_wire(hub_app.url("/ws")) as other:
            reply = await client.request(
                {"op": "subscribe", "id": 1, "channel": "feed:all", "since": 0}
            )
            assert reply["result"]["recovered"] is True, reply
            await other.send({"op": "unsubscribe", "id": 2, "channel": "feed:all"})
            assert (await other.reply(2))["result"] == {}
            refused = await other.request({"op": "subscribe", "id": 3, "channel": "feed:all"})
            assert refused["error"]["code"] == "forbidden", refused


async def test_nothing_reaches_the_client_before_its_welcome(
    serve: Serve, backend: Backend
) -> None:
    """Publications made while the hooks run come after the welcome (history: the position)."""
    hub_app = hooked_hub(serve, backend)
    async with open_wire(hub_app.url("/ws?team=blue&shout=1")) as client:
        assert client.raw[0].startswith('{"op":"welcome"')  # type: ignore[union-attr]
        subscribed = client.welcome["subscribed"]
        # feed:all keeps history: the welcome's position includes what the hook published.
        assert subscribed[0]["channel"] == "feed:all" and subscribed[0]["offset"] == 1
        [during] = await client.messages("team:blue", 1)
        assert during["data"] == "during the hook"
        await hub_app.publish("feed:all", "after")
        [after] = await client.messages("feed:all", 1)
        assert (after["data"], after["offset"]) == ("after", 2)  # offset 1 is before the start


async def test_a_refusing_hook_closes_with_4003_and_a_crashing_one_with_1011(
    serve: Serve, backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    """``RPCError`` in a hook: 4003 with its message, no welcome; a bug: 1011, logged."""
    hub_app = hooked_hub(serve, backend)
    ws = await connect(hub_app.url("/ws?ban=1"))
    with pytest.raises(websockets.ConnectionClosed) as closed:
        await asyncio.wait_for(ws.recv(), scaled(5))
    assert closed.value.rcvd is not None
    assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (4003, "you are banned")
    with caplog.at_level(logging.ERROR):
        ws = await connect(hub_app.url("/ws?crash=1"))
        with pytest.raises(websockets.ConnectionClosed) as crashed:
            await asyncio.wait_for(ws.recv(), scaled(5))
    assert crashed.value.rcvd is not None and crashed.value.rcvd.code == 1011
    [record] = [r for r in caplog.records if "on_connect hook raised" in r.getMessage()]
    assert record.exc_info is not None and record.exc_info[0] is RuntimeError
    await wait_until(lambda: hub_app.hub.connection_count == 0)
    async with open_wire(hub_app.url("/ws")) as fine:  # others are let in as usual
        assert listed(fine.welcome["subscribed"]) == [("feed:all", 0)]


async def held_recovery(client: WireClient, channel: str, since: int, epoch: str) -> list[Frame]:
    """What docs/protocol.md asks of a reconnecting client for a channel the welcome lists.

    Hold the channel's live messages from the welcome on, subscribe with ``since``,
    deliver the reply's messages, then the held ones newer than the last delivered.
    """
    await client.send(
        {"op": "subscribe", "id": "re", "channel": channel, "since": since, "epoch": epoch}
    )
    held: list[Frame] = []
    while True:
        frame = await client.next()
        if frame.get("op") == "message" and frame.get("channel") == channel:
            held.append(frame)
        elif frame.get("id") == "re":
            result = frame["result"]
            break
    assert result["recovered"] is True, result
    delivered = list(result["messages"])
    last = delivered[-1]["offset"] if delivered else since
    delivered += [m for m in held if m["offset"] > last]
    return delivered


async def test_raw_client_recovers_a_hook_channel_without_loss_or_duplicate(
    serve: Serve, backend: Backend
) -> None:
    """Live messages arrive before the resubscribe reply; the reply still carries them."""
    hub_app = hooked_hub(serve, backend)
    seen: list[Frame] = []
    async with open_wire(hub_app.url("/ws")) as first:
        for n in (1, 2):
            await hub_app.publish("feed:all", {"n": n})
        seen += await first.messages("feed:all", 2)
        await abort(first)
    epoch = (await hub_app.call(hub_app.hub.history("feed:all", limit=0))).position.epoch
    for n in (3, 4):
        await hub_app.publish("feed:all", {"n": n})
    async with open_wire(hub_app.url("/ws")) as second:
        assert second.welcome["subscribed"] == [
            {"channel": "feed:all", "offset": 4, "epoch": epoch}
        ]
        await hub_app.publish("feed:all", {"n": 5})
        # The hook's subscription is live already: 5 comes before any subscribe of ours.
        [live] = await second.messages("feed:all", 1)
        assert live["offset"] == 5
        second._pending.appendleft(live)  # as if still unread: held by `held_recovery`
        seen += await held_recovery(second, "feed:all", 2, epoch)
        await hub_app.publish("feed:all", {"n": 6})
        seen += await second.messages("feed:all", 1)
    assert [m["offset"] for m in seen] == [1, 2, 3, 4, 5, 6]
    assert [m["data"]["n"] for m in seen] == [1, 2, 3, 4, 5, 6]


async def test_python_client_recovers_a_hook_channel_while_publications_go_on(
    serve: Serve, backend: Backend
) -> None:
    """Publishing all along, the client is cut off twice: every offset once, in order."""
    hub_app = hooked_hub(serve, backend)
    total = 300
    received: list[Message] = []
    welcomes: list[list[Any]] = []

    def on_message(message: Message) -> None:
        if message.channel == "feed:all":
            received.append(message)

    async def publish_all() -> None:
        async def run() -> None:
            for n in range(1, total + 1):
                await hub_app.hub.publish("feed:all", {"n": n})
                await asyncio.sleep(0.002)

        await hub_app.call(run())

    client = Client(
        hub_app.url(), on_message=on_message, backoff_base=0.02, backoff_cap=0.05, proxy=None
    )
    async with client:
        assert client.welcome is not None
        welcomes.append(client.welcome["subscribed"])
        publisher = asyncio.create_task(publish_all())
        for cut in (50, 150):
            await wait_until(lambda cut=cut: len(received) >= cut, within=10)
            ws = client._ws
            assert ws is not None
            ws.transport.abort()
            await wait_until(lambda ws=ws: client._ws not in (None, ws), within=10)
        await publisher
        await wait_until(lambda: bool(received) and received[-1].offset == total, within=10)
        await asyncio.sleep(0.2)  # duplicates would show up now
        sub = await client.subscribe("feed:all")  # known server-side: answered at once
        assert sub.result is not None and "offset" in sub.result
    offsets = [m.offset for m in received]
    assert offsets == list(range(1, total + 1)), offsets
    assert any(m.recovered for m in received)
    assert [m.data["n"] for m in received] == list(range(1, total + 1))
    assert listed(welcomes[0]) == [("feed:all", 0)]


async def test_wshub_js_on_node_rpc_and_hook_channel_recovery(
    serve: Serve, backend: Backend
) -> None:
    """wshub.js on node: ``rpc`` results and error codes; the hook channel recovered once."""
    node = node_with_websocket()
    if node is None:
        missing_tool("needs node 20+ (apt-get install nodejs)")
    hub_app = hooked_hub(serve, backend)

    @hub_app.hub.rpc("fail")
    async def fail(conn: Connection, params: Any) -> None:
        raise RPCError("nope_code", "it failed")

    command = [*node, str(ROOT / "tests" / "js" / "rpc_live.mjs"), hub_app.url()]
    result = await asyncio.to_thread(
        subprocess.run, command, capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["emitted"] == [1, 2]
    assert report["errors"] == [
        ["nope_code", "nope_code: it failed"],
        ["not_found", "not_found: unknown method 'x'"],
    ]
    assert listed(report["subscribed"]) == [("feed:all", 0)]
    assert report["offsets"] == [1, 2, 3, 4, 5], report
    assert report["recovered"][:4] == [False, False, True, True], report
    assert [r["recovered"] for r in report["recoveries"]] == [True], report
