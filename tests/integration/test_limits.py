"""Abuse limits against a real server: frame rate, connection caps, subscriptions, message size.

The flood test is the one that matters most: one hostile client must be rate limited
and closed while well-behaved clients on the same process see no delay at all.
"""

import asyncio
import itertools
import time
from collections.abc import Callable
from typing import Any

import jwt
import orjson
import pytest
import websockets
from websockets.asyncio.client import ClientConnection

from wshub import Hub
from wshub.testing import TIME_SCALE, RunningServer, wait_until

pytestmark = pytest.mark.anyio

SECRET = "limits-test-secret-long-enough-for-any-hmac-algorithm-0123456789abcdef"
HubServer = Callable[..., tuple[RunningServer, Hub]]


async def connect(url: str, **kwargs: Any) -> ClientConnection:
    """A websockets client without proxy or compression."""
    return await websockets.connect(url, proxy=None, compression=None, **kwargs)


async def frames(ws: ClientConnection, timeout: float = 5.0) -> list[dict[str, Any]]:  # noqa: ASYNC109
    """One WebSocket message from the protocol endpoint, split into frames."""
    message = await asyncio.wait_for(ws.recv(), timeout * TIME_SCALE)
    assert isinstance(message, str)
    return [orjson.loads(line) for line in message.split("\n")]


async def until_closed(ws: ClientConnection, within: float = 5.0) -> list[dict[str, Any]]:
    """Every frame received until the server's close."""
    received: list[dict[str, Any]] = []

    async def read() -> None:
        try:
            while True:
                message = await ws.recv()
                assert isinstance(message, str)
                received.extend(orjson.loads(line) for line in message.split("\n"))
        except websockets.ConnectionClosed:
            pass

    await asyncio.wait_for(read(), within * TIME_SCALE)
    return received


async def open_protocol(server: RunningServer, token: str | None = None) -> ClientConnection:
    """Connect to /ws (with ``?token=`` when given) and read the welcome."""
    url = server.ws_url("/ws") + (f"?token={token}" if token else "")
    ws = await connect(url)
    [welcome] = await frames(ws)
    assert welcome["op"] == "welcome"
    return ws


def token(user: str) -> str:
    """A valid token for ``user``."""
    return jwt.encode({"sub": user, "exp": int(time.time()) + 300}, SECRET, "HS256")


async def assert_try_again_later(ws: ClientConnection, reason: str) -> None:
    """The server closes with 1013 and sends nothing before (no welcome)."""
    assert await until_closed(ws) == []
    assert (ws.close_code, ws.close_reason) == (1013, reason)


# -- frame rate -------------------------------------------------------------------------------


async def test_flood_is_rate_limited_and_closed_while_others_see_no_delay(
    hub_server: HubServer,
) -> None:
    """10,000 frames from one client: `rate_limited`, then 4029; 20 subscribers miss nothing."""
    server, hub = hub_server()
    subscribers = [await open_protocol(server) for _ in range(20)]
    for ws in subscribers:
        await ws.send('{"op":"subscribe","id":"s","channel":"steady"}')
        assert await frames(ws) == [{"id": "s", "result": {}}]
    publisher = await open_protocol(server)
    flooder = await open_protocol(server)
    count, interval = 60, 0.025

    async def publish() -> None:
        for n in range(count):
            frame = {"op": "publish", "channel": "steady", "data": {"n": n, "t": time.time()}}
            await publisher.send(orjson.dumps(frame).decode())
            await asyncio.sleep(interval)

    async def receive(ws: ClientConnection) -> tuple[list[int], float]:
        seen: list[int] = []
        worst = 0.0
        while len(seen) < count:
            for frame in await frames(ws):
                if frame.get("op") == "message":
                    seen.append(frame["data"]["n"])
                    worst = max(worst, time.time() - frame["data"]["t"])
        return seen, worst

    async def flood() -> list[dict[str, Any]]:
        # Read while flooding: a websockets client that never reads pauses its socket
        # after max_queue messages and would only notice the close after close_timeout.
        reader = asyncio.create_task(until_closed(flooder, within=10))
        try:
            for i in range(10_000):
                await flooder.send(f'{{"op":"publish","id":{i},"channel":"junk","data":{i}}}')
                if i % 50 == 0:
                    await asyncio.sleep(0)  # let the others run on this side too
        except websockets.ConnectionClosed:
            pass
        return await reader

    receivers = [asyncio.create_task(receive(ws)) for ws in subscribers]
    began = time.monotonic()
    flooded, _ = await asyncio.gather(flood(), publish())
    flood_time = time.monotonic() - began
    results = await asyncio.wait_for(asyncio.gather(*receivers), 10 * TIME_SCALE)

    assert (flooder.close_code, flooder.close_reason) == (4029, "rate limited: too many frames")
    limited = [f for f in flooded if f.get("error", {}).get("code") == "rate_limited"]
    assert limited, "no rate_limited error frame before the close"
    accepted = [f for f in flooded if "result" in f]
    s = hub.settings
    assert s.rate_burst <= len(accepted) <= s.rate_burst + s.rate_limit * flood_time + 1
    for seen, worst in results:
        assert seen == list(range(count))
        assert worst < 1.0 * TIME_SCALE, worst
    assert hub.stats.rate_limited >= hub.settings.rate_limit_strikes
    for ws in [publisher, *subscribers]:
        await ws.close()
    await wait_until(lambda: hub.connection_count == 0)


async def test_exactly_rate_burst_frames_pass_then_errors_then_4029(hub_server: HubServer) -> None:
    """A burst of `rate_burst` frames passes; the next ones get `rate_limited` until 4029."""
    server, hub = hub_server(rate_limit=0.1, rate_burst=5, rate_limit_strikes=3)
    ws = await open_protocol(server)
    for i in range(8):
        await ws.send(f'{{"op":"subscribe","id":{i},"channel":"c{i}"}}')
    received = await until_closed(ws)
    assert received[:5] == [{"id": i, "result": {}} for i in range(5)]
    assert [f["error"]["code"] for f in received[5:]] == ["rate_limited", "rate_limited"]
    assert all("id" not in f for f in received[5:])
    assert (ws.close_code, ws.close_reason) == (4029, "rate limited: too many frames")
    assert hub.stats.rate_limited == 3
    await wait_until(lambda: hub.connection_count == 0 and hub.channel_count == 0)


async def test_refused_frames_are_not_handled(hub_server: HubServer) -> None:
    """A frame over the rate is dropped, not run late: its publication never happens."""
    server, _ = hub_server(rate_limit=0.1, rate_burst=2, rate_limit_strikes=10)
    watcher = await open_protocol(server)
    ws = await open_protocol(server)
    async with watcher, ws:
        await watcher.send('{"op":"subscribe","id":1,"channel":"room"}')
        assert await frames(watcher) == [{"id": 1, "result": {}}]
        await ws.send('{"op":"publish","id":1,"channel":"room","data":1}')
        await ws.send('{"op":"publish","id":2,"channel":"room","data":2}')
        await ws.send('{"op":"publish","id":3,"channel":"room","data":3}')
        replies: list[dict[str, Any]] = []
        while len(replies) < 3:
            replies += await frames(ws)
        assert [r.get("id") for r in replies] == [1, 2, None]
        seen: list[Any] = []
        while len(seen) < 2:
            seen += [f["data"] for f in await frames(watcher) if f.get("op") == "message"]
        assert seen == [1, 2]
        with pytest.raises(TimeoutError):
            await frames(watcher, timeout=0.3)


async def test_library_endpoint_flood_is_closed_4029(hub_server: HubServer) -> None:
    """A library-mode client far over the rate is closed with 4029 too."""
    server, hub = hub_server(rate_limit=10, rate_burst=10, rate_limit_strikes=20)
    ws = await connect(server.ws_url("/ws/chat"))
    reader = asyncio.create_task(until_closed(ws, within=10))
    try:
        for _ in range(1_000):
            await ws.send('{"user":"flood","text":"x"}')
    except websockets.ConnectionClosed:
        pass
    echoed = await reader
    assert len(echoed) <= 20  # at most the burst (and a little refill) got through
    assert ws.close_code == 4029
    assert hub.stats.rate_limited >= 20
    await wait_until(lambda: hub.connection_count == 0)


# -- connection caps --------------------------------------------------------------------------


async def test_max_connections_refuses_the_one_over_with_1013(hub_server: HubServer) -> None:
    """At `max_connections` open, the next one is closed with 1013; a freed slot is reused."""
    server, hub = hub_server(max_connections=3)
    clients = [await open_protocol(server) for _ in range(3)]
    assert hub.connection_count == 3
    extra = await connect(server.ws_url("/ws"))
    await assert_try_again_later(extra, "too many connections")
    chat = await connect(server.ws_url("/ws/chat"))  # library mode counts against the cap too
    await assert_try_again_later(chat, "too many connections")
    assert hub.stats.refused == 2
    for ws in clients[1:]:
        await ws.send('{"op":"subscribe","id":1,"channel":"still"}')
        assert await frames(ws) == [{"id": 1, "result": {}}]
    await clients[0].close()
    await wait_until(lambda: hub.connection_count == 2)
    clients[0] = await open_protocol(server)
    assert hub.connection_count == 3
    for ws in clients:
        await ws.close()
    await wait_until(lambda: hub.connection_count == 0)


async def test_max_connections_per_user_refuses_with_1013(hub_server: HubServer) -> None:
    """A user at `max_connections_per_user` gets 1013 for one more; other users are unaffected."""
    server, hub = hub_server(jwt_secret=SECRET, max_connections_per_user=2)
    ada = [await open_protocol(server, token("ada")) for _ in range(2)]
    extra = await connect(server.ws_url(f"/ws?token={token('ada')}"))
    await assert_try_again_later(extra, "too many connections for this user")
    by_frame = await connect(server.ws_url("/ws"))  # the connect-frame path is capped as well
    await by_frame.send(orjson.dumps({"op": "connect", "token": token("ada")}).decode())
    await assert_try_again_later(by_frame, "too many connections for this user")
    bob = await open_protocol(server, token("bob"))
    assert hub.stats.refused == 2
    assert len(hub.user_connections("ada")) == 2
    await ada[0].close()
    await wait_until(lambda: len(hub.user_connections("ada")) == 1)
    ada[0] = await open_protocol(server, token("ada"))
    for ws in [*ada, bob]:
        await ws.close()
    await wait_until(lambda: hub.connection_count == 0 and not hub.registry.users)


async def connect_by_frame(server: RunningServer, user: str) -> ClientConnection:
    """Connect to /ws without a handshake token and send ``{"op":"connect","token":...}``."""
    ws = await connect(server.ws_url("/ws"))
    await ws.send(orjson.dumps({"op": "connect", "token": token(user)}).decode())
    return ws


async def test_unauthenticated_sockets_never_take_an_authenticated_users_slot(
    hub_server: HubServer,
) -> None:
    """Silent token-less sockets fill their own pool; valid users still get in, both ways.

    `max_connections=5` and the default `max_unauthenticated` (min(1000, 5) = 5): seven
    silent sockets leave the five newest waiting and the two oldest closed with 1013.
    """
    server, hub = hub_server(jwt_secret=SECRET, max_connections=5, auth_timeout=30)
    assert hub.settings.unauthenticated_limit() == 5
    silent = [await connect(server.ws_url("/ws")) for _ in range(7)]
    for ws in silent[:2]:
        await assert_try_again_later(ws, "too many unauthenticated connections")
    # The two closed ones leave the registry once their detach is done (it leaves last).
    await wait_until(lambda: len(hub.lifecycle.unauthenticated) == 5 and hub.connection_count == 5)
    assert not hub.lifecycle.authenticated

    users = [await open_protocol(server, token("ada"))]  # a handshake token: main pool only
    by_frame = await connect_by_frame(server, "bob")  # waits in the unauthenticated pool
    [welcome] = await frames(by_frame)
    assert (welcome["op"], welcome["user"]) == ("welcome", "bob")
    users.append(by_frame)
    # bob's socket took the oldest silent one's place before it authenticated.
    await assert_try_again_later(silent[2], "too many unauthenticated connections")
    users += [await open_protocol(server, token(f"user{i}")) for i in range(3)]
    assert len(hub.lifecycle.authenticated) == 5
    assert len(hub.lifecycle.unauthenticated) == 4  # silent[3:]

    # The main pool is full now: max_connections applies to both ways in, as before.
    extra = await connect(server.ws_url(f"/ws?token={token('eve')}"))
    await assert_try_again_later(extra, "too many connections")
    late = await connect_by_frame(server, "eve")
    await assert_try_again_later(late, "too many connections")
    assert hub.stats.refused == 3 + 2
    for ws in users:  # everyone let in still works
        await ws.send('{"op":"subscribe","id":1,"channel":"room"}')
        assert await frames(ws) == [{"id": 1, "result": {}}]

    for ws in [*users, *silent[3:]]:
        await ws.close()
    await wait_until(lambda: hub.connection_count == 0 and hub.channel_count == 0)
    assert not hub.lifecycle.authenticated and not hub.lifecycle.unauthenticated
    assert not hub.registry.users and not hub.lifecycle.heartbeats


async def test_max_unauthenticated_is_its_own_cap_and_frees_on_auth_or_timeout(
    hub_server: HubServer,
) -> None:
    """`max_unauthenticated=2`: a third silent socket evicts the oldest; authenticating or
    timing out leaves the pool, and a freed slot is reused without evicting anyone."""
    server, hub = hub_server(
        jwt_secret=SECRET, max_connections=5, max_unauthenticated=2, auth_timeout=1.0
    )
    first, second, third = [await connect(server.ws_url("/ws")) for _ in range(3)]
    await assert_try_again_later(first, "too many unauthenticated connections")
    await wait_until(lambda: len(hub.lifecycle.unauthenticated) == 2)
    await second.send(orjson.dumps({"op": "connect", "token": token("ada")}).decode())
    assert (await frames(second))[0]["user"] == "ada"
    assert len(hub.lifecycle.unauthenticated) == 1  # third only
    fourth = await connect(server.ws_url("/ws"))  # a free slot: nobody is evicted
    await wait_until(lambda: len(hub.lifecycle.unauthenticated) == 2)
    assert hub.stats.refused == 1
    for ws in (third, fourth):  # both time out with 4001 as usual
        assert await until_closed(ws) == []
        assert (ws.close_code, ws.close_reason) == (4001, "authentication timeout")
    assert hub.stats.auth_failures == 2
    await second.close()
    await wait_until(lambda: hub.connection_count == 0)
    assert not hub.lifecycle.authenticated and not hub.lifecycle.unauthenticated


async def test_anonymous_by_first_frame_moves_to_the_main_pool_under_max_connections(
    hub_server: HubServer,
) -> None:
    """With `allow_anonymous`, a token-less client let in counts against `max_connections`."""
    server, hub = hub_server(jwt_secret=SECRET, allow_anonymous=True, max_connections=1)
    first = await connect(server.ws_url("/ws"))
    await first.send('{"op":"connect"}')
    assert (await frames(first))[0]["op"] == "welcome"
    second = await connect(server.ws_url("/ws"))  # waits in the unauthenticated pool
    await wait_until(lambda: len(hub.lifecycle.unauthenticated) == 1)
    await second.send('{"op":"connect"}')
    await assert_try_again_later(second, "too many connections")
    await first.close()
    await wait_until(lambda: hub.connection_count == 0)
    assert not hub.lifecycle.authenticated and not hub.lifecycle.unauthenticated


# -- subscriptions and message size -----------------------------------------------------------


async def test_max_subscriptions_at_the_limit(hub_server: HubServer) -> None:
    """`max_subscriptions` channels are fine, one more is `bad_request`; leaving frees a slot."""
    server, hub = hub_server(max_subscriptions=3)
    ws = await open_protocol(server)
    ids = itertools.count()

    async def subscribe(op: str, channel: str) -> dict[str, Any]:
        request_id = next(ids)
        await ws.send(orjson.dumps({"op": op, "id": request_id, "channel": channel}).decode())
        [reply] = await frames(ws)
        assert reply["id"] == request_id
        return reply

    async with ws:
        for channel in ("a", "b", "c"):
            assert (await subscribe("subscribe", channel))["result"] == {}
        refused = await subscribe("subscribe", "d")
        assert refused["error"] == {
            "code": "bad_request",
            "message": "subscription limit reached (3)",
        }
        assert (await subscribe("subscribe", "a"))["result"] == {}  # already a member: no-op
        assert (await subscribe("unsubscribe", "b"))["result"] == {}
        assert (await subscribe("subscribe", "d"))["result"] == {}
        assert sorted(hub.connections()[0].channels) == ["a", "c", "d"]
        assert hub.subscribers("b") == []


async def test_message_over_max_message_size_is_closed_1009(hub_server: HubServer) -> None:
    """A message just over `max_message_size` closes with 1009; one at the limit is fine."""
    server, hub = hub_server(max_message_size=1024)
    ws = await open_protocol(server)
    head = '{"op":"publish","id":1,"channel":"room","data":"'
    at_limit = head + "x" * (1024 - len(head) - 2) + '"}'
    assert len(at_limit) == 1024
    await ws.send(at_limit)
    assert await frames(ws) == [{"id": 1, "result": {}}]
    await ws.send(at_limit[:-2] + 'x"}')
    await until_closed(ws)
    assert ws.close_code == 1009
    await wait_until(lambda: hub.connection_count == 0)
