"""Server-Sent Events (`wshub.mount_sse`) through a raw HTTP client, on a real server.

Live events, recovery through ``Last-Event-ID`` after a drop, ``gap`` events,
refusals (auth 401, Origin 403, permissions 403), heartbeat comments, a client that
stops reading (closed and counted as 4008), the limits, and the publish route.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx
import jwt
import pytest
from fastapi import FastAPI

from wshub import Access, Hub, JWTAuthenticator, Namespace, mount_sse
from wshub.server.sse import decode_position_token, encode_position_token
from wshub.testing import RunningServer, wait_until

pytestmark = pytest.mark.anyio

SECRET = "sse-test-secret-of-at-least-32-bytes!"
NAMESPACES = {
    "chat": Namespace(history_size=100, history_ttl=300, presence=True),
    "closed": Namespace(subscribe=Access.NOBODY),
    "*": Namespace(),
}
Serve = Callable[..., RunningServer]


def sse_app(**settings: Any) -> tuple[FastAPI, Hub]:
    settings.setdefault("namespaces", NAMESPACES)
    hub = Hub(**settings)
    app = FastAPI(lifespan=hub.lifespan)
    mount_sse(app, hub, "/sse")
    return app, hub


class Events:
    """The events of one SSE response, parsed as they arrive."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.lines = response.aiter_lines()
        self.comments: list[str] = []
        self.last_id: str | None = None

    async def next(self, within: float = 5.0) -> dict[str, Any]:
        """The next dispatched event: ``{"event","data","id"}`` (id-only blocks skipped)."""
        with anyio.fail_after(within):
            event: dict[str, Any] = {"event": "message", "data": None, "id": None}
            data: list[str] = []
            async for line in self.lines:
                if line == "":
                    if data:
                        event["data"] = json.loads("\n".join(data))
                        return event
                    event, data = {"event": "message", "data": None, "id": None}, []
                    continue
                field, _, value = line.partition(":")
                value = value.removeprefix(" ")
                if field == "":
                    self.comments.append(value)
                elif field == "event":
                    event["event"] = value
                elif field == "data":
                    data.append(value)
                elif field == "id":
                    event["id"] = self.last_id = value
            raise EOFError("the stream ended")

    async def until(self, kind: str, within: float = 5.0) -> dict[str, Any]:
        while True:
            event = await self.next(within)
            if event["event"] == kind:
                return event

    async def messages(self, count: int) -> list[Any]:
        found = []
        while len(found) < count:
            event = await self.until("message")
            found.append(event["data"])
        return found


@asynccontextmanager
async def stream(
    server: RunningServer, *channels: str, headers: dict[str, str] | None = None, **params: str
) -> AsyncIterator[Events]:
    query = [("channel", c) for c in channels] + list(params.items())
    async with (
        httpx.AsyncClient(timeout=10) as client,
        client.stream("GET", server.http_url("/sse"), params=query, headers=headers) as response,
    ):
        assert response.status_code == 200, await response.aread()
        assert response.headers["content-type"].startswith("text/event-stream")
        events = Events(response)
        welcome = await events.next()
        assert welcome["event"] == "welcome"
        yield events


async def publish(server: RunningServer, channel: str, data: Any, **extra: Any) -> httpx.Response:
    async with httpx.AsyncClient(timeout=10) as client:
        body = {"channel": channel, "data": data, **extra}
        return await client.post(server.http_url("/sse/publish"), json=body)


async def test_live_events_carry_the_message_frame_and_a_position_id(serve: Serve) -> None:
    app, hub = sse_app()
    server = serve(app, settings=hub.settings)
    async with stream(server, "chat:a", "news") as events:
        await wait_until(lambda: len(hub.subscribers("news")) == 1)
        assert (await publish(server, "chat:a", {"n": 1})).json() == {"offset": 1}
        assert (await publish(server, "news", "hi")).json() == {}
        first = await events.until("message")
        assert first["data"] == {
            "op": "message",
            "channel": "chat:a",
            "data": {"n": 1},
            "offset": 1,
        }
        epoch = (await hub.history("chat:a", limit=0)).position.epoch
        assert decode_position_token(first["id"]) == {"chat:a": (1, epoch)}
        second = await events.until("message")
        assert second["data"] == {"op": "message", "channel": "news", "data": "hi"}
        assert second["id"] == first["id"]  # no history on news: the position stays
        # An SSE client is a connection like any other: registries, presence.
        assert hub.connection_count == 1
        assert len(await hub.presence("chat:a")) == 1


async def test_last_event_id_recovers_exactly_the_missed_messages(serve: Serve) -> None:
    app, hub = sse_app()
    server = serve(app, settings=hub.settings)
    async with stream(server, "chat:r", "chat:s") as events:
        await wait_until(lambda: len(hub.subscribers("chat:r")) == 1)
        await publish(server, "chat:r", 1)
        await events.until("message")
        token = events.last_id
    await wait_until(lambda: hub.connection_count == 0)
    for n in (2, 3):
        await publish(server, "chat:r", n)
    await publish(server, "chat:s", "s1")
    assert token is not None
    async with stream(server, "chat:r", "chat:s", headers={"Last-Event-ID": token}) as events:
        missed = await events.messages(3)
        assert [(m["channel"], m["data"], m["offset"]) for m in missed] == [
            ("chat:r", 2, 2),
            ("chat:r", 3, 3),
            ("chat:s", "s1", 1),
        ]
        await publish(server, "chat:r", 4)
        live = await events.messages(1)
        assert live[0]["data"] == 4 and live[0]["offset"] == 4
        token = events.last_id
    assert token is not None
    await publish(server, "chat:r", 5)
    # The query parameter does the same for clients that can't set headers.
    async with stream(server, "chat:r", lastEventId=token) as events:
        assert [m["data"] for m in await events.messages(1)] == [5]


async def test_a_lost_range_sends_a_gap_event(serve: Serve) -> None:
    app, hub = sse_app()
    server = serve(app, settings=hub.settings)
    await publish(server, "chat:g", 1)
    await publish(server, "news", 1)
    token = encode_position_token({"chat:g": (1, "0badc0de")})
    async with stream(server, "chat:g", "news", headers={"Last-Event-ID": token}) as events:
        gap = await events.until("gap")
        position = (await hub.history("chat:g", limit=0)).position
        assert gap["data"] == {
            "op": "gap",
            "channel": "chat:g",
            "offset": 1,
            "epoch": position.epoch,
        }
        # A resumed stream can't know what it missed on a channel without history.
        assert (await events.until("gap"))["data"] == {"op": "gap", "channel": "news"}
        await publish(server, "chat:g", 2)
        assert (await events.messages(1))[0]["offset"] == 2


async def test_bad_requests_are_refused_with_400(serve: Serve) -> None:
    app, hub = sse_app()
    server = serve(app, settings=hub.settings)
    async with httpx.AsyncClient() as client:
        url = server.http_url("/sse")
        assert (await client.get(url)).status_code == 400
        assert (await client.get(url, params={"channel": "#all"})).status_code == 400
        bad = await client.get(url, params={"channel": "x"}, headers={"Last-Event-ID": "!!"})
        assert bad.status_code == 400
        assert bad.json()["error"]["code"] == "bad_request"


async def test_auth_refusals_are_401_and_tokens_work_from_header_cookie_query(
    serve: Serve,
) -> None:
    app, hub = sse_app(auth=JWTAuthenticator(SECRET))
    server = serve(app, settings=hub.settings)
    url = server.http_url("/sse")
    async with httpx.AsyncClient() as client:
        missing = await client.get(url, params={"channel": "x"})
        assert missing.status_code == 401
        assert missing.json()["error"] == {"code": "unauthorized", "message": "missing token"}
        bad = await client.get(url, params={"channel": "x", "token": "nope"})
        assert bad.status_code == 401
        expired = jwt.encode({"sub": "ada", "exp": int(time.time()) - 60}, SECRET)
        refused = await client.get(url, params={"channel": "x", "token": expired})
        assert refused.json()["error"]["message"] == "token expired"
    assert hub.stats.auth_failures == 3
    good = jwt.encode({"sub": "ada"}, SECRET)
    for kwargs in (
        {"headers": {"Authorization": f"Bearer {good}"}},
        {"headers": {"Cookie": f"wshub_token={good}"}},
        {"token": good},
    ):
        async with httpx.AsyncClient(timeout=10) as client:
            query: list[tuple[str, str]] = [("channel", "x")]
            if "token" in kwargs:
                query.append(("token", good))
            headers = kwargs.get("headers")
            async with client.stream("GET", url, params=query, headers=headers) as response:
                assert response.status_code == 200
                welcome = await Events(response).next()
                assert welcome["data"]["user"] == "ada"
    # Publishing over HTTP goes by the same token.
    async with httpx.AsyncClient() as client:
        body = {"channel": "x", "data": 1}
        publish_url = server.http_url("/sse/publish")
        assert (await client.post(publish_url, json=body)).status_code == 401
        headers = {"Authorization": f"Bearer {good}"}
        assert (await client.post(publish_url, json=body, headers=headers)).status_code == 200


async def test_foreign_origins_are_refused_with_403(serve: Serve) -> None:
    app, hub = sse_app(allowed_origins="https://friend.example")
    server = serve(app, settings=hub.settings)
    url = server.http_url("/sse")
    async with httpx.AsyncClient(timeout=10) as client:
        evil = {"Origin": "https://evil.example"}
        refused = await client.get(url, params={"channel": "x"}, headers=evil)
        assert refused.status_code == 403
        posted = await client.post(url + "/publish", json={"channel": "x", "data": 1}, headers=evil)
        assert posted.status_code == 403
        friend = {"Origin": "https://friend.example"}
        async with client.stream("GET", url, params={"channel": "x"}, headers=friend) as response:
            assert response.status_code == 200
            assert response.headers["access-control-allow-origin"] == "https://friend.example"
        own = {"Origin": server.http_url("").rstrip("/")}
        async with client.stream("GET", url, params={"channel": "x"}, headers=own) as response:
            assert response.status_code == 200


async def test_channel_permissions_are_refused_with_403(serve: Serve) -> None:
    app, hub = sse_app(namespaces={"chat": Namespace(), "closed": NAMESPACES["closed"]})
    server = serve(app, settings=hub.settings)
    url = server.http_url("/sse")
    async with httpx.AsyncClient() as client:
        for channel in ("closed:x", "other:x", "user:bob"):
            refused = await client.get(url, params=[("channel", "chat:a"), ("channel", channel)])
            assert refused.status_code == 403, channel
            assert refused.json()["error"]["code"] == "forbidden"
        posted = await client.post(url + "/publish", json={"channel": "user:bob", "data": 1})
        assert posted.status_code == 403
    assert hub.connection_count == 0


async def test_heartbeat_comments(serve: Serve) -> None:
    app, hub = sse_app(ping_interval=0.2)
    server = serve(app, settings=hub.settings)
    async with stream(server, "x") as events:
        pings = 0
        with anyio.fail_after(5):
            async for line in events.lines:
                pings += line == ": ping"
                if pings == 2:
                    break
        assert pings == 2


async def test_a_client_that_stops_reading_is_closed_and_counted_as_4008(serve: Serve) -> None:
    app, hub = sse_app(queue_max_messages=20, queue_max_bytes=64 * 1024, close_timeout=0.5)
    server = serve(app, settings=hub.settings)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((server.host, server.port))
    sock.sendall(f"GET /sse?channel=flood HTTP/1.1\r\nHost: {server.host}\r\n\r\n".encode())
    try:
        await wait_until(lambda: len(hub.subscribers("flood")) == 1)
        payload = "x" * 16_384
        async with httpx.AsyncClient(timeout=10) as client:
            for _ in range(400):
                await client.post(
                    server.http_url("/sse/publish"), json={"channel": "flood", "data": payload}
                )
                if hub.stats.overflows:
                    break
        await wait_until(lambda: hub.connection_count == 0, within=10)
        assert hub.stats.overflows == 1
        assert hub.stats.closes[4008] == 1
    finally:
        sock.close()


async def test_limits_close_the_stream_with_1013(serve: Serve) -> None:
    app, hub = sse_app(max_connections=1)
    server = serve(app, settings=hub.settings)
    async with stream(server, "x"):
        await wait_until(lambda: hub.connection_count == 1)
        async with httpx.AsyncClient(timeout=10) as client:
            url = server.http_url("/sse")
            async with client.stream("GET", url, params={"channel": "x"}) as response:
                assert response.status_code == 200  # EventSource retries after `retry`
                close = await Events(response).until("close")
                assert close["data"] == {
                    "op": "close",
                    "code": 1013,
                    "reason": "too many connections",
                }
    assert hub.stats.refused == 1


async def test_publish_route_checks_and_from(serve: Serve) -> None:
    app, hub = sse_app()
    server = serve(app, settings=hub.settings)
    async with stream(server, "chat:p") as events:
        await wait_until(lambda: len(hub.subscribers("chat:p")) == 1)
        client_id = hub.subscribers("chat:p")[0].id
        answer = await publish(server, "chat:p", {"t": 1}, client=client_id)
        assert answer.json() == {"offset": 1}
        message = (await events.messages(1))[0]
        assert message["from"] == client_id
        assert (await publish(server, "#all", 1)).status_code == 400
        async with httpx.AsyncClient() as client:
            url = server.http_url("/sse/publish")
            assert (await client.post(url, content=b"nope")).status_code == 400
            assert (await client.post(url, json={"channel": "x"})).status_code == 400
