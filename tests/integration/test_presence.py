"""Presence and join/leave against real servers, on the memory broker and Redis.

Clients authenticate with JWTs whose ``info`` claim is shown to others; library-mode
connections (``hub.connect``) are present too, but receive only data. With Redis,
presence spans every process, and the entries of a process killed with SIGKILL
expire within ``presence_ttl``.
"""

from __future__ import annotations

import asyncio
import importlib
import signal
import time
import uuid
from collections.abc import Callable
from typing import Any

import jwt
import pytest

from wshub.brokers.presence import ClientInfo
from wshub.core.errors import ProtocolError
from wshub.hub.permissions import Namespace
from wshub.server.auth import JWTAuthenticator
from wshub.testing import TIME_SCALE, RunningServer, run_server, wait_until

from .history_support import (  # noqa: F401 (backend_fixture: the backend fixture)
    Backend,
    HubApp,
    backend_fixture,
    history,
    live_messages,
    offsets,
    open_wire,
    presence,
    serve_hub,
    subscribe,
    wait_presence,
)
from .processes import hub_env, hub_processes
from .recorders import RawClient
from .support import drop_clients  # noqa: F401 (an autouse fixture)
from .wire import Frame, WireClient, bad_request

pytestmark = pytest.mark.anyio

Serve = Callable[..., RunningServer]
SECRET = "presence-tests-secret-long-enough-for-hs256-0123456789abcdef"
ADA_INFO = {"name": "Ada Lovelace", "color": "#c0ffee"}


def token(user: str, info: dict[str, Any] | None = None) -> str:
    """An HS256 token for ``user`` with an ``info`` claim when given."""
    claims: dict[str, Any] = {"sub": user, "exp": int(time.time()) + 300}
    if info is not None:
        claims["info"] = info
    return jwt.encode(claims, SECRET, algorithm="HS256")


def serve_auth_hub(serve: Serve, backend: Backend) -> HubApp:
    """A test hub that verifies JWTs (anonymous connections allowed)."""
    return serve_hub(serve, backend, auth=JWTAuthenticator(SECRET, allow_anonymous=True))


def user_url(hub_app: HubApp, user: str, info: dict[str, Any] | None = None) -> str:
    """The protocol endpoint's URL with a token for ``user`` in the query."""
    return f"{hub_app.url()}?token={token(user, info)}"


async def next_event(client: WireClient, within: float = 5.0) -> Frame:
    """The next join or leave frame (publications and replies met on the way are skipped)."""
    while True:
        frame = await client.next(within)
        if frame.get("op") in ("join", "leave"):
            return frame


def event(op: str, channel: str, client: str, user: str | None) -> Frame:
    """A join or leave frame as the wire protocol sends it."""
    return {"op": op, "channel": channel, "client": client, "user": user}


async def test_presence_op_lists_clients_with_their_user_and_info(
    serve: Serve, backend: Backend
) -> None:
    """presence: every subscriber with user and token info; leavers and dropped clients go."""
    hub_app = serve_auth_hub(serve, backend)
    async with (
        open_wire(user_url(hub_app, "ada", ADA_INFO)) as ada,
        open_wire(user_url(hub_app, "bob")) as bob,
        open_wire(hub_app.url(), hello=True) as anon,
        open_wire(hub_app.url(), hello=True) as outsider,
    ):
        for client in (ada, bob, anon):
            await subscribe(client, "room:lobby")
        clients = await wait_presence(outsider, "room:lobby", {ada.id, bob.id, anon.id})
        assert clients == {
            ada.id: {"user": "ada", "info": ADA_INFO},
            bob.id: {"user": "bob", "info": None},
            anon.id: {"user": None, "info": None},
        }
        await ada.request({"op": "unsubscribe", "id": "u", "channel": "room:lobby"})
        await wait_presence(outsider, "room:lobby", {bob.id, anon.id})
        bob.ws.transport.abort()
        await wait_presence(outsider, "room:lobby", {anon.id})
        await anon.ws.close()
        assert await wait_presence(outsider, "room:lobby", set()) == {}
        reply = await outsider.request({"op": "presence", "id": "p", "channel": "hist:x"})
        assert "presence" in bad_request(reply, "p")


async def test_join_and_leave_frames_reach_subscribers_but_not_library_connections(
    serve: Serve, backend: Backend
) -> None:
    """Subscribers get join/leave of protocol and library members; hub.connect gets data only."""
    hub_app = serve_auth_hub(serve, backend)
    channel = "room:lobby"
    async with open_wire(user_url(hub_app, "ada", ADA_INFO)) as ada:
        await subscribe(ada, channel)
        assert await next_event(ada) == event("join", channel, ada.id, "ada")
        library = await RawClient.open(hub_app.url(f"/ws/lib/{channel}?user=lib"))
        try:
            joined = await next_event(ada)
            assert joined["op"] == "join" and joined["user"] == "lib"
            lib_id = joined["client"]
            assert (await presence(ada, channel))[lib_id] == {"user": "lib", "info": None}
            async with open_wire(user_url(hub_app, "bob")) as bob:
                await subscribe(bob, channel)
                assert await next_event(ada) == event("join", channel, bob.id, "bob")
                await bob.request({"op": "unsubscribe", "id": "u", "channel": channel})
                assert await next_event(ada) == event("leave", channel, bob.id, "bob")
                await bob.publish(channel, {"text": "hi"})
            [message] = await ada.messages(channel, 1)
            assert message["data"] == {"text": "hi"}
            await wait_until(lambda: len(library.messages) >= 1)
            # Per channel order: the join and leave before it would have come first.
            assert library.messages == ['{"text":"hi"}']
            assert library.open_still
        finally:
            await library.close()
        assert await next_event(ada) == event("leave", channel, lib_id, "lib")
        assert set(await presence(ada, channel)) == {ada.id}


async def test_server_side_hub_presence_returns_client_info(serve: Serve, backend: Backend) -> None:
    """hub.presence(channel) maps client ids to ClientInfo; channels without presence raise."""
    hub_app = serve_auth_hub(serve, backend)
    hub = hub_app.hub
    async with open_wire(user_url(hub_app, "ada", ADA_INFO)) as ada:
        await subscribe(ada, "chat:general")
        library = await RawClient.open(hub_app.url("/ws/lib/chat:general?user=lib"))
        try:
            await wait_until(lambda: len(hub.subscribers("chat:general")) == 2)
            [lib_id] = [c.id for c in hub.subscribers("chat:general") if c.id != ada.id]
            found = await hub_app.call(hub.presence("chat:general"))
            assert found == {
                ada.id: ClientInfo(ada.id, "ada", ADA_INFO),
                lib_id: ClientInfo(lib_id, "lib", None),
            }
        finally:
            await library.close()
    await wait_until(lambda: hub.connection_count == 0)
    assert await hub_app.call(hub.presence("chat:general")) == {}
    with pytest.raises(ProtocolError, match="tracks no presence"):
        await hub_app.call(hub.presence("hist:log"))


@pytest.mark.redis
@pytest.mark.parametrize("backend", ["redis"], indirect=True)
async def test_presence_and_join_leave_span_two_servers_on_one_redis(
    serve: Serve, backend: Backend
) -> None:
    """Two hubs on one Redis: each lists the other's clients, and join/leave cross over."""
    one, two = serve_auth_hub(serve, backend), serve_auth_hub(serve, backend)
    channel = "room:lobby"
    async with (
        open_wire(user_url(one, "ada", ADA_INFO)) as ada,
        open_wire(user_url(two, "bob")) as bob,
    ):
        await subscribe(ada, channel)
        assert await next_event(ada) == event("join", channel, ada.id, "ada")
        await subscribe(bob, channel)
        assert await next_event(ada) == event("join", channel, bob.id, "bob")
        expected = {
            ada.id: {"user": "ada", "info": ADA_INFO},
            bob.id: {"user": "bob", "info": None},
        }
        assert await wait_presence(ada, channel, set(expected)) == expected
        assert await wait_presence(bob, channel, set(expected)) == expected
        found = await one.call(one.hub.presence(channel))
        assert found[bob.id] == ClientInfo(bob.id, "bob", None)
        bob.ws.transport.abort()
        assert await next_event(ada) == event("leave", channel, bob.id, "bob")
        assert set(await presence(ada, channel)) == {ada.id}
        assert set(await two.call(two.hub.presence(channel))) == {ada.id}


@pytest.mark.redis
@pytest.mark.parametrize("backend", ["redis"], indirect=True)
async def test_clients_of_a_worker_killed_with_sigkill_leave_presence_within_the_ttl(
    serve: Serve, backend: Backend
) -> None:
    """`wshub serve` killed -9: its client stays while refreshed, then goes within ttl + 2 s."""
    ttl = 2.0
    env = hub_env(backend.url, backend.prefix, WSHUB_PRESENCE_TTL=str(ttl))
    observer_app = serve_hub(serve, backend)
    channel = "chat:room"
    async with (
        hub_processes(1, env, "wshub.demo:app") as [worker],
        open_wire(observer_app.url()) as observer,
        open_wire(worker.ws_url("/ws")) as doomed,
    ):
        await subscribe(observer, channel)
        await subscribe(doomed, channel)
        joined = await next_event(observer)
        while joined["client"] != doomed.id:  # the observer's own join may come first
            joined = await next_event(observer)
        await wait_presence(observer, channel, {observer.id, doomed.id})
        # Refreshed by its live process, the entry outlives the ttl.
        await asyncio.sleep(ttl * 1.5 * TIME_SCALE)
        assert set(await presence(observer, channel)) == {observer.id, doomed.id}
        worker.process.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        worker.process.wait(timeout=10)
        await wait_presence(observer, channel, {observer.id}, within=(ttl + 2) * TIME_SCALE)
        assert time.monotonic() - killed <= (ttl + 2) * TIME_SCALE


async def test_demo_chat_namespace_keeps_history_and_presence() -> None:
    """The demo's chat: namespace: 100 messages for 300 s, presence, join/leave; others neither."""
    demo = importlib.import_module("wshub.demo.app")  # wshub.demo.app is also the FastAPI app

    space = demo.hub.permissions.namespace("chat:anything")
    assert space == Namespace(
        history_size=100, history_ttl=300, presence=True, join_leave=True, model=demo.ChatMessage
    )
    channel = f"chat:room-{uuid.uuid4().hex[:8]}"
    with run_server(demo.app, demo.hub.settings) as server:
        url = server.ws_url("/ws")
        async with open_wire(url) as alice, open_wire(url) as bob:
            first = await subscribe(alice, channel)
            # A fresh history channel has its epoch from the first subscribe on (issue 14).
            assert first["offset"] == 0 and first["epoch"]
            assert await next_event(alice) == event("join", channel, alice.id, None)
            await subscribe(bob, channel)
            assert await next_event(alice) == event("join", channel, bob.id, None)
            clients = await presence(alice, channel)
            assert clients == {alice.id: {"user": None, "info": None}, bob.id: clients[bob.id]}
            for n in range(3):
                reply = await bob.publish(channel, {"text": f"{n}"}, n)
                assert reply["result"] == {"offset": n + 1}
            assert offsets(await live_messages(alice, channel, 3)) == [1, 2, 3]
            kept = (await history(alice, channel))["result"]
            assert offsets(kept["messages"]) == [1, 2, 3]
            assert kept["epoch"] == first["epoch"]
            await bob.ws.close()
            assert await next_event(alice) == event("leave", channel, bob.id, None)
            async with open_wire(url) as carol:
                result = await subscribe(carol, channel, since=1, epoch=kept["epoch"])
                assert result["recovered"] is True
                assert [m["data"]["text"] for m in result["messages"]] == ["1", "2"]
            for op in ("presence", "history"):
                reply = await alice.request({"op": op, "id": op, "channel": "lobby"})
                bad_request(reply, op)
