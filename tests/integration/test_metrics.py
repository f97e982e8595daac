"""Prometheus metrics at /metrics move with real clients, in one process and across two workers."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import redis.asyncio
from fastapi import FastAPI

from tests.redis_support import RedisServer
from wshub import Hub, Publication, mount
from wshub.ops.metrics import add_metrics
from wshub.testing import RunningServer

from .processes import NO_RATE_LIMIT, hub_env, hub_processes, numsub, stop
from .recorders import ProtocolClient, closing, open_clients, wait_received
from .scrape import Samples, scrape, value, wait_metrics
from .support import close_code, connect, drain_until_closed, drop_clients, recv_frames

__all__ = ["drop_clients"]

pytestmark = pytest.mark.anyio

SECRET = "metrics-test-secret-0123456789abcdef"


def metrics_app(**settings: Any) -> tuple[FastAPI, Hub]:
    """The protocol endpoint at /ws, /metrics, and POST /burst to fan a burst out at once.

    ``/burst?n=N`` hands N publications on ``room`` to the hub in one go, as a broker
    delivers a buffered burst, so that a small send queue overflows deterministically.
    """
    hub = Hub(**settings)
    app = FastAPI(lifespan=hub.lifespan)
    mount(app, hub, "/ws")
    add_metrics(app, hub)

    @app.post("/burst")
    async def burst(n: int) -> dict[str, int]:
        for i in range(n):
            hub.on_publication("room", Publication(b'{"n":%d}' % i))
        return {"sent": n}

    return app, hub


@pytest.fixture
def metrics_server(serve: Callable[..., RunningServer]) -> Callable[..., RunningServer]:
    """Start `metrics_app` on a real server: ``server = metrics_server(**hub_settings)``."""

    def start(**settings: Any) -> RunningServer:
        app, hub = metrics_app(**settings)
        return serve(app, settings=hub.settings)

    return start


async def test_metrics_follow_connects_publishes_and_disconnects(
    metrics_server: Callable[..., RunningServer],
) -> None:
    """Gauges rise and fall with clients; frames, publications and deliveries are counted."""
    server = metrics_server(**NO_RATE_LIMIT)
    url = server.http_url("/metrics")
    before = await scrape(url)
    assert value(before, "wshub_connections") == 0
    assert value(before, "wshub_broker_state", state="connected") == 1
    async with closing(await open_clients([server.ws_url()] * 2, "room")) as clients:
        samples = await scrape(url)
        assert value(samples, "wshub_connections") == 2
        assert value(samples, "wshub_subscriptions") == 2
        assert value(samples, "wshub_channels") == 1
        assert value(samples, "wshub_connections_accepted_total") == 2
        replies = await clients[0].publish_many("room", [{"n": i} for i in range(3)])
        assert all("result" in r for r in replies), replies
        await wait_received(clients, "room", 3)
        samples = await scrape(url)
        assert value(samples, "wshub_publications_total") == 3
        assert value(samples, "wshub_deliveries_total") == 6
        assert value(samples, "wshub_received_frames_total") == 2 + 3  # subscribes, publishes
        assert value(samples, "wshub_sent_frames_total") >= 2 + 2 + 3 + 6  # welcome, replies, ...
        assert value(samples, "wshub_sent_bytes_total") > 0
        assert value(samples, "wshub_publish_enqueue_seconds_count") == 3
        assert value(samples, "wshub_send_queue_depth_count") > 0
    samples = await wait_metrics(
        url, lambda s: value(s, "wshub_connections") == 0, what="connections back to 0"
    )
    assert value(samples, "wshub_subscriptions") == 0
    assert value(samples, "wshub_closes_total", code="1000") == 2


async def test_slow_consumer_and_drop_policies_count_drops_by_reason(
    metrics_server: Callable[..., RunningServer],
) -> None:
    """A burst into a 2-frame queue drops frames (drop_newest) or closes 4008 (disconnect)."""
    for policy, reason in (("drop_newest", "drop_newest"), ("disconnect", "slow_consumer")):
        server = metrics_server(queue_max_messages=2, overflow_policy=policy)
        ws = await connect(server.ws_url("/ws"))
        await recv_frames(ws)  # welcome
        await ws.send('{"op":"subscribe","id":1,"channel":"room"}')
        await recv_frames(ws)
        async with httpx.AsyncClient(trust_env=False) as http:
            assert (await http.post(server.http_url("/burst?n=10"))).status_code == 200
        url = server.http_url("/metrics")
        if policy == "disconnect":
            await drain_until_closed(ws)
            assert close_code(ws) == 4008
            samples = await wait_metrics(
                url, lambda s: value(s, "wshub_closes_total", code="4008") == 1, what="4008 close"
            )
            assert value(samples, "wshub_dropped_frames_total", reason=reason) == 1
        else:
            samples = await scrape(url)
            assert value(samples, "wshub_dropped_frames_total", reason=reason) == 8
            await ws.close()


async def test_auth_failures_are_counted_by_reason_and_close_code(
    metrics_server: Callable[..., RunningServer],
) -> None:
    """A bad token and a connect frame without one count as invalid and missing, both 4001."""
    server = metrics_server(jwt_secret=SECRET)
    bad = await connect(server.ws_url("/ws?token=not-a-jwt"))
    await drain_until_closed(bad)
    assert close_code(bad) == 4001
    bare = await connect(server.ws_url("/ws"))
    await bare.send('{"op":"connect"}')
    await drain_until_closed(bare)
    assert close_code(bare) == 4001
    good_token = jwt.encode({"sub": "ada"}, SECRET, algorithm="HS256")
    good = await ProtocolClient.open(server.ws_url(f"/ws?token={good_token}"))
    samples = await wait_metrics(
        server.http_url("/metrics"),
        lambda s: value(s, "wshub_closes_total", code="4001") == 2,
        what="two 4001 closes",
    )
    assert value(samples, "wshub_auth_failures_total", reason="invalid") == 1
    assert value(samples, "wshub_auth_failures_total", reason="missing") == 1
    assert value(samples, "wshub_connections") == 1
    await good.close()


async def test_openmetrics_is_served_when_asked_for(
    metrics_server: Callable[..., RunningServer],
) -> None:
    """``Accept: application/openmetrics-text`` gets OpenMetrics, ending with # EOF."""
    server = metrics_server()
    headers = {"Accept": "application/openmetrics-text; version=1.0.0"}
    async with httpx.AsyncClient(trust_env=False) as http:
        response = await http.get(server.http_url("/metrics"), headers=headers)
    assert response.headers["content-type"].startswith("application/openmetrics-text")
    assert response.text.rstrip().endswith("# EOF")
    assert "wshub_connections " in response.text


def metrics_dirs(tmp: Path) -> list[Path]:
    """The multiprocess directories `wshub serve` made under ``tmp`` (its TMPDIR)."""
    return list(tmp.glob("wshub-metrics-*"))


@pytest.mark.redis
async def test_metrics_add_up_across_two_worker_processes(
    redis_server: RedisServer, admin: redis.asyncio.Redis, prefix: str, tmp_path: Path
) -> None:
    """With --workers 2, any scrape shows both workers' clients, fan-outs and deliveries."""
    env = hub_env(
        redis_server.url,
        prefix,
        WSHUB_METRICS_INTERVAL="0.2",
        TMPDIR=str(tmp_path),
        **NO_RATE_LIMIT,
    )
    async with hub_processes(1, env, "--workers", "2") as [hub], closing([]) as clients:
        while await numsub(admin, f"{prefix}room") < 2:
            assert len(clients) < 200, "every client landed on the same worker"
            clients += await open_clients([hub.ws_url()] * 10, "room")
        count = len(clients)
        assert len(metrics_dirs(tmp_path)) == 1  # the parent made it
        url = hub.http_url("/metrics")

        def connected(samples: Samples) -> bool:
            return value(samples, "wshub_connections") == count

        for _ in range(4):  # each scrape is answered by either worker: all agree
            samples = await wait_metrics(url, connected, within=5, what=f"{count} connections")
            assert value(samples, "wshub_broker_state", state="connected") == 2
            assert value(samples, "wshub_subscriptions") == count
        assert "result" in await clients[0].publish("room", {"n": 1})
        await wait_received(clients, "room", 1)

        def delivered(samples: Samples) -> bool:
            return value(samples, "wshub_deliveries_total") == count

        samples = await wait_metrics(url, delivered, what=f"{count} deliveries")
        assert value(samples, "wshub_publications_total") == 2  # one fan-out per worker
        assert value(samples, "wshub_connections_accepted_total") == count
        await asyncio.gather(*(client.close() for client in clients))
        clients.clear()
        samples = await wait_metrics(url, lambda s: value(s, "wshub_connections") == 0)
        assert value(samples, "wshub_closes_total", code="1000") == count
        assert await stop(hub) == 0, hub.log()
    assert not metrics_dirs(tmp_path), "the multiprocess directory was left behind"
