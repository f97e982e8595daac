"""Logs of a real `wshub serve`: one line per connect and disconnect, JSON or text, no secrets."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import httpx
import jwt
import orjson
import pytest
from fastapi import FastAPI

from wshub import Hub, mount
from wshub.testing import RunningServer, wait_until

from .processes import HubProcess, hub_env, hub_processes, stop
from .recorders import ProtocolClient
from .support import close_code, connect, drain_until_closed, drop_clients, recv_frames

__all__ = ["drop_clients"]

pytestmark = pytest.mark.anyio

SECRET = "logs-test-jwt-secret-0123456789abcdef"
KEY = "logs-test-api-key-93b1e0"


def token(user: str) -> str:
    """A JWT for ``user``."""
    return jwt.encode({"sub": user}, SECRET, algorithm="HS256")


async def exercise(hub: HubProcess) -> list[str]:
    """Connect with a query token, a Bearer header and a bad token; call the API; stop.

    Returns:
        The secrets that were sent (for the test to look for in the output).
    """
    ada, bob, bad = token("ada"), token("bob"), token("eve")[:-4] + "AAAA"
    client = await ProtocolClient.open(hub.ws_url(f"/ws?token={ada}"))
    await client.subscribe("news")
    await client.close()
    ws = await connect(hub.ws_url("/ws"), additional_headers={"Authorization": f"Bearer {bob}"})
    assert (await recv_frames(ws))[0]["user"] == "bob"
    await ws.close()
    refused = await connect(hub.ws_url(f"/ws?token={bad}"))
    await drain_until_closed(refused)
    assert close_code(refused) == 4001
    async with httpx.AsyncClient(trust_env=False) as http:
        body = {"channel": "news", "data": 1}
        good = await http.post(
            hub.http_url("/api/publish"), json=body, headers={"Authorization": f"apikey {KEY}"}
        )
        assert good.status_code == 200, good.text
        wrong = await http.post(
            hub.http_url(f"/api/publish?api_key={KEY}"),
            json=body,
            headers={"Authorization": f"apikey {KEY}-wrong"},
        )
        assert wrong.status_code == 401
    assert await stop(hub) == 0, hub.log()
    return [ada, bob, bad, KEY, SECRET]


def log_env(log_format: str) -> dict[str, str]:
    """The environment of a logging `wshub serve`: auth, API key, the format."""
    return hub_env(
        "memory://", WSHUB_JWT_SECRET=SECRET, WSHUB_API_KEY=KEY, WSHUB_LOG_FORMAT=log_format
    )


async def test_json_logs_have_connection_fields_and_no_secrets() -> None:
    """Every line is JSON; connect/disconnect/refused carry their fields; no token or key."""
    async with hub_processes(1, log_env("json"), "--log-level", "info") as [hub]:
        secrets = await exercise(hub)
        output = hub.log()
    lines = [orjson.loads(line) for line in output.splitlines() if line.strip()]
    assert all({"time", "level", "logger", "message"} <= set(line) for line in lines), output
    by_event: dict[str, list[dict[str, Any]]] = {}
    for line in lines:
        by_event.setdefault(line.get("event", ""), []).append(line)
    [ada_in, bob_in] = by_event["connect"]
    assert ada_in["user"] == "ada" and bob_in["user"] == "bob"
    assert ada_in["remote"].startswith("127.0.0.1:") and ada_in["connection"]
    ada_out = next(e for e in by_event["disconnect"] if e["connection"] == ada_in["connection"])
    assert ada_out["user"] == "ada" and ada_out["close_code"] == 1000
    assert isinstance(ada_out["duration"], float) and ada_out["duration"] >= 0
    assert ada_out["remote"] == ada_in["remote"] and "close_reason" in ada_out
    [refused] = by_event["refused"]
    assert refused["close_code"] == 4001 and refused["close_reason"].startswith("invalid token")
    access = [line for line in lines if line["logger"] == "uvicorn.access"]
    assert {(a["method"], a["status"]) for a in access} >= {("POST", 200), ("POST", 401)}
    assert "[redacted]" in output  # uvicorn's handshake and access lines had the secrets
    for secret in secrets:
        assert secret not in output


async def test_text_logs_have_one_line_per_connect_and_disconnect() -> None:
    """Text format: ``connect id=.. user=.. remote=..`` and ``disconnect ... code=..``."""
    async with hub_processes(1, log_env("text"), "--log-level", "info") as [hub]:
        secrets = await exercise(hub)
        output = hub.log()
    connects = [line for line in output.splitlines() if "wshub.connections: connect " in line]
    disconnects = [line for line in output.splitlines() if "wshub.connections: disconnect" in line]
    assert len(connects) == 2 and len(disconnects) == 2, output
    assert "user=ada remote=127.0.0.1:" in connects[0]
    assert "duration=" in disconnects[0] and "code=1000" in disconnects[0]
    for secret in secrets:
        assert secret not in output


async def test_handler_errors_are_logged_with_their_context(
    serve: Callable[..., RunningServer], caplog: pytest.LogCaptureFixture
) -> None:
    """A permission hook that raises: the client gets ``internal``; the log names who and what."""

    async def broken(user: str | None, channel: str, data: object) -> bool:
        raise RuntimeError("hook bug")

    hub = Hub(can_publish=broken)
    app = FastAPI(lifespan=hub.lifespan)
    mount(app, hub, "/ws")
    server = serve(app, settings=hub.settings)
    caplog.set_level(logging.ERROR, logger="wshub")
    client = await ProtocolClient.open(server.ws_url())
    reply = await client.publish("news", {"n": 1})
    assert reply["error"]["code"] == "internal"
    await client.close()
    await wait_until(lambda: any(r.name == "wshub.endpoint" for r in caplog.records))
    [record] = [r for r in caplog.records if r.name == "wshub.endpoint"]
    assert record.connection == client.id  # type: ignore[attr-defined]
    assert (record.op, record.channel) == ("publish", "news")  # type: ignore[attr-defined]
    assert record.exc_info is not None and "hook bug" in str(record.exc_info[1])
    assert f"connection {client.id}" in record.getMessage()
