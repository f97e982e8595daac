"""/healthz and /readyz: cheap enough to probe every second; /readyz follows the broker."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import httpx
import pytest
from fastapi import FastAPI

from tests.redis_support import RedisServer
from wshub import Hub, add_health_routes
from wshub.testing import TIME_SCALE, RunningServer

pytestmark = pytest.mark.anyio


def health_app(hub: Hub) -> FastAPI:
    """An app with only the health routes."""
    app = FastAPI(lifespan=hub.lifespan)
    add_health_routes(app, hub)
    return app


async def status_of(client: httpx.AsyncClient, url: str) -> int:
    """The status code of ``GET url``."""
    return (await client.get(url)).status_code


async def wait_status(client: httpx.AsyncClient, url: str, status: int, within: float) -> None:
    """Poll ``GET url`` until it answers ``status``; fail after ``within`` s (scaled)."""
    deadline = time.monotonic() + within * TIME_SCALE
    while (seen := await status_of(client, url)) != status:
        assert time.monotonic() < deadline, f"{url} answered {seen}, not {status}"
        await asyncio.sleep(0.05)


async def test_probes_answer_fast_and_say_why(serve: Callable[..., RunningServer]) -> None:
    """200 probes take well under a second in all; /readyz names the broker state."""
    hub = Hub()
    server = serve(health_app(hub), settings=hub.settings)
    async with httpx.AsyncClient(trust_env=False) as client:
        started = time.monotonic()
        for _ in range(100):
            assert await status_of(client, server.http_url("/healthz")) == 200
            assert await status_of(client, server.http_url("/readyz")) == 200
        elapsed = time.monotonic() - started
        body = (await client.get(server.http_url("/readyz"))).json()
    assert elapsed < 5 * TIME_SCALE, f"200 probes took {elapsed:.2f} s"
    assert body == {"status": "ready", "broker": "connected"}


@pytest.mark.redis
async def test_readyz_flips_when_redis_goes_down_and_back(
    serve: Callable[..., RunningServer], redis_server: RedisServer
) -> None:
    """Redis killed: /readyz 503 (and /healthz still 200); Redis back: /readyz 200 again."""
    hub = Hub(broker=redis_server.url, redis_probe_interval=0.2)
    server = serve(health_app(hub), settings=hub.settings)
    ready, alive = server.http_url("/readyz"), server.http_url("/healthz")
    async with httpx.AsyncClient(trust_env=False, timeout=2 * TIME_SCALE) as client:
        await wait_status(client, ready, 200, within=5)
        redis_server.stop()
        await wait_status(client, ready, 503, within=5)
        assert (await client.get(ready)).json()["broker"] == "disconnected"
        assert await status_of(client, alive) == 200
        redis_server.start()
        await wait_status(client, ready, 200, within=15)
