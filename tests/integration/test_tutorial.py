"""docs/tutorial.md runs: each step's app.py imports and serves; the last ones behave as told.

Blocks starting with ``# app.py (step N)`` are whole files; ``# app.py (step N): step M,
plus`` blocks are appended to step M's file.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import httpx
import pytest
from fastapi import FastAPI

from wshub.testing import RunningServer

from .wire import bad_request, open_client

pytestmark = pytest.mark.anyio

TUTORIAL = Path(__file__).resolve().parents[2] / "docs" / "tutorial.md"
HEADER = re.compile(r"^# app\.py \(step (\d+)\)(?:: step (\d+), plus)?$")


def steps() -> dict[int, str]:
    """Each step's complete source, by step number."""
    blocks = re.findall(r"```python\n(.*?)```", TUTORIAL.read_text(), flags=re.DOTALL)
    sources: dict[int, str] = {}
    for block in blocks:
        match = HEADER.match(block.splitlines()[0])
        if match is None:
            continue
        step, base = int(match[1]), match[2]
        sources[step] = (sources[int(base)] + "\n\n" if base is not None else "") + block
    return sources


def load(step: int, tmp_path: Path) -> ModuleType:
    path = tmp_path / f"tutorial_step{step}.py"
    path.write_text(steps()[step])
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    spec.loader.exec_module(module)
    return module


def test_every_step_is_there_and_builds_an_app(tmp_path: Path) -> None:
    """Steps 0-7, each an importable module with a FastAPI ``app``."""
    assert sorted(steps()) == list(range(8))
    for step in range(8):
        assert isinstance(load(step, tmp_path).app, FastAPI)


async def test_step_7_validates_stamps_refuses_answers_rpc_and_documents(
    serve: Callable[..., RunningServer], tmp_path: Path
) -> None:
    """The last step does what the tutorial shows on the wire."""
    module = load(7, tmp_path)
    server = serve(module.app, settings=module.hub.settings)
    async with open_client(server) as ada:
        await ada.request({"op": "subscribe", "id": 0, "channel": "chat:lobby"})
        refused = await ada.publish("chat:lobby", {"text": "   "}, 1)
        assert "(ChatMessage): text: String should have at least 1 character" in bad_request(
            refused, 1
        )
        spam = await ada.publish("chat:lobby", {"text": "buy spam"}, 3)
        assert spam["error"] == {"code": "spam", "message": "no spam in the chat, please"}
        assert (await ada.publish("chat:lobby", {"user": "ada", "text": " hi "}, 4))["result"]
        [message] = await ada.messages("chat:lobby", 1)
        assert message["data"]["text"] == "hi" and message["data"]["user"] == "ada"
        assert isinstance(message["data"]["ts"], int)
        rooms = await ada.request({"op": "rpc", "id": 5, "method": "rooms"})
        assert rooms["result"] == {"rooms": [{"name": "lobby", "members": 1}]}
        async with httpx.AsyncClient(trust_env=False) as http:
            announced = await http.post(server.http_url("/announce"), params={"text": "hello"})
            doc = (await http.get(server.http_url("/asyncapi.json"))).json()
        assert announced.status_code == 200
        [notice] = await ada.messages("chat:lobby", 1)
        assert notice["data"]["user"] == "announcer"
    assert {"ChatMessage", "Room", "RoomsResult"} <= set(doc["components"]["schemas"])
    assert "receive_rpc_rooms" in doc["operations"]
