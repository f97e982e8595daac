"""The app's types in /asyncapi.json and ``wshub types --ts``; the demo's typed chat.

Namespace models and RPC params/results appear under ``components/schemas`` by class
name (nested models hoisted beside them), RPC methods as operations with replies, and
the document stays valid AsyncAPI 3.0. ``wshub types --ts`` prints the same schemas as
TypeScript, with the client API typed by them.
"""

from __future__ import annotations

import enum
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import httpx
import pytest
from fastapi import FastAPI
from pydantic import BaseModel, Field

from wshub import Hub, Namespace, mount
from wshub.hub.connection import Connection
from wshub.ops.asyncapi import add_asyncapi, document
from wshub.ops.typescript import declarations, ts_type
from wshub.testing import RunningServer

from .test_asyncapi import errors
from .wire import bad_request, open_client

pytestmark = pytest.mark.anyio

WSHUB = Path(sys.executable).parent / "wshub"
ROOT = Path(__file__).resolve().parents[2]


class Mood(enum.Enum):
    HAPPY = "happy"
    SAD = "sad"


class Author(BaseModel):
    name: str
    mood: Mood = Mood.HAPPY


class Post(BaseModel):
    """A post in a board."""

    title: str = Field(max_length=80, description="shown in bold")
    author: Author
    tags: list[str] = []
    score: float | None = None
    kind: Literal["text", "link"] = "text"
    extra: dict[str, int] = {}


class AddParams(BaseModel):
    a: int
    b: int = 0


class AddResult(BaseModel):
    sum: int


def typed_hub() -> Hub:
    hub = Hub(namespaces={"board": Namespace(model=Post), "*": Namespace()})

    @hub.rpc("add")
    async def add(conn: Connection, params: AddParams) -> AddResult:
        """Add two numbers."""
        return AddResult(sum=params.a + params.b)

    return hub


def test_namespace_models_are_schemas_by_class_name_with_defs_hoisted() -> None:
    """Post and Author (its $def) sit in components/schemas; refs point there; valid."""
    doc = document(hub=Hub(namespaces={"board": Namespace(model=Post)}))
    assert errors(doc) == []
    schemas = doc["components"]["schemas"]
    assert {"Post", "Author", "Mood"} <= set(schemas)
    post = schemas["Post"]
    assert "$defs" not in post
    assert post["properties"]["author"] == {"$ref": "#/components/schemas/Author"}
    assert post["required"] == ["title", "author"]
    assert doc["channels"]["hub"]["x-namespaces"] == {
        "board": {"$ref": "#/components/schemas/Post"}
    }
    # Without a hub (or without models) the document is the protocol's alone.
    assert "schemas" not in document()["components"]


def test_rpc_methods_are_operations_with_their_params_and_result_schemas() -> None:
    """Each @hub.rpc method: a receive operation whose message and reply use its models."""
    doc = document(hub=typed_hub())
    assert errors(doc) == []
    schemas = doc["components"]["schemas"]
    assert {"AddParams", "AddResult", "Post"} <= set(schemas)
    operation = doc["operations"]["receive_rpc_add"]
    assert operation["action"] == "receive"
    assert operation["summary"] == "Add two numbers."
    assert operation["messages"] == [{"$ref": "#/channels/hub/messages/rpc_add"}]
    assert operation["reply"]["messages"] == [
        {"$ref": "#/channels/hub/messages/rpc_addReply"},
        {"$ref": "#/channels/hub/messages/error"},
    ]
    messages = doc["channels"]["hub"]["messages"]
    request = messages["rpc_add"]["payload"]["properties"]
    assert request["method"] == {"type": "string", "const": "add"}
    assert request["params"] == {"$ref": "#/components/schemas/AddParams"}
    result = messages["rpc_addReply"]["payload"]["properties"]["result"]
    assert result == {"$ref": "#/components/schemas/AddResult"}


async def test_served_document_carries_the_hubs_schemas(
    serve: Callable[..., RunningServer],
) -> None:
    """add_asyncapi(app, path, hub=hub): GET /asyncapi.json has them, and validates."""
    hub = typed_hub()
    app = FastAPI(lifespan=hub.lifespan)
    mount(app, hub, "/ws")
    add_asyncapi(app, "/ws", hub=hub)
    server = serve(app, settings=hub.settings)
    async with httpx.AsyncClient(trust_env=False) as client:
        doc = (await client.get(server.http_url("/asyncapi.json"))).json()
    assert errors(doc) == []
    assert {"Post", "Author", "AddParams", "AddResult"} <= set(doc["components"]["schemas"])
    assert "receive_rpc_add" in doc["operations"]


def test_typescript_of_objects_arrays_enums_optional_nullable_and_refs() -> None:
    """The converter covers what pydantic emits."""
    out = declarations(typed_hub())
    assert "export interface Post {" in out
    assert "  /** shown in bold */\n  title: string;" in out
    assert "  author: Author;" in out
    assert "  tags?: string[];" in out
    assert "  score?: number | null;" in out
    assert '  kind?: "text" | "link";' in out
    assert "  extra?: Record<string, number>;" in out
    assert 'export type Mood = "happy" | "sad";' in out
    assert "export interface AddParams {\n  a: number;\n  b?: number;\n}" in out
    assert "export interface Namespaces {\n  board: Post;\n}" in out
    assert "  add: { params: AddParams; result: AddResult };" in out
    assert "export interface TypedClient {" in out
    assert "publish<C extends string>(channel: C, data: DataOf<C>)" in out
    assert ts_type({"type": "array", "items": {"anyOf": [{"type": "string"}, {"type": "null"}]}})
    assert ts_type({"type": "array", "items": {"type": ["string", "null"]}}) == (
        "(string | null)[]"
    )
    assert ts_type({"type": "array", "prefixItems": [{"type": "integer"}, {"const": "x"}]}) == (
        '[number, "x"]'
    )
    assert ts_type({}) == "unknown"
    assert ts_type({"type": "object", "properties": {"a-b": {"type": "boolean"}}}) == (
        '{\n  "a-b"?: boolean;\n}'
    )


def run_types(target: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    return subprocess.run(
        [str(WSHUB), "types", "--ts", target],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_wshub_types_ts_prints_the_demo_interfaces() -> None:
    """``wshub types --ts wshub.demo:app`` finds the demo's hub and prints its types."""
    done = run_types("wshub.demo:app", ROOT)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "export interface ChatMessage {" in out
    assert "  text: string;" in out and "  user?: string | null;" in out
    assert "export interface Namespaces {\n  chat: ChatMessage;\n}" in out
    assert "export interface RpcMethods {" in out
    assert "export interface TypedClient {" in out


def test_wshub_types_ts_loads_an_app_from_the_current_directory(tmp_path: Path) -> None:
    """Like ``wshub serve``, the app module is imported from the current directory."""
    (tmp_path / "myapp.py").write_text(
        "from fastapi import FastAPI\n"
        "from pydantic import BaseModel\n"
        "from wshub import Hub, Namespace, mount\n\n"
        "class Score(BaseModel):\n    points: int\n    player: str | None = None\n\n"
        "class Empty(BaseModel):\n    pass\n\n"
        "hub = Hub(namespaces={'game': Namespace(model=Score)})\n\n"
        "@hub.rpc('reset')\nasync def reset(conn, params: Empty) -> Score:\n"
        "    return Score(points=0)\n\n"
        "app = FastAPI(lifespan=hub.lifespan)\nmount(app, hub, '/ws')\n"
    )
    done = run_types("myapp:app", tmp_path)
    assert done.returncode == 0, done.stderr
    assert "export interface Score {\n  points: number;\n  player?: string | null;\n}" in (
        done.stdout
    )
    assert "  reset: { params: Empty; result: Score };" in done.stdout
    assert "  game: Score;" in done.stdout
    assert run_types("myapp:hub", tmp_path).stdout == done.stdout
    missing = run_types("nosuchmodule:app", tmp_path)
    assert missing.returncode != 0


# -- the demo -----------------------------------------------------------------------------


@pytest.fixture
def demo(serve: Callable[..., RunningServer]) -> tuple[RunningServer, Hub]:
    from wshub.demo import app, hub

    return serve(app, settings=hub.settings), hub


async def test_demo_chat_messages_are_validated_stripped_and_stamped(
    demo: tuple[RunningServer, Hub],
) -> None:
    """chat:<room>: text 1-500 characters, stripped; the server sets user and ts."""
    server, _ = demo
    room = f"chat:t-{time.monotonic_ns()}"
    async with open_client(server) as sub, open_client(server) as pub:
        await sub.request({"op": "subscribe", "id": "s", "channel": room})
        before = time.time() * 1000
        reply = await pub.publish(room, {"user": "ada", "text": "  hello  ", "ts": 1})
        assert "offset" in reply["result"]
        [message] = await sub.messages(room, 1)
        data: dict[str, Any] = message["data"]
        assert data["text"] == "hello" and data["user"] == "ada"
        assert before - 1000 <= data["ts"] <= time.time() * 1000 + 1000  # the server's clock
        assert (await pub.publish(room, {"text": "x" * 500}))["result"]
        [long] = await sub.messages(room, 1)
        assert long["data"]["user"] == "anon"
        for bad, field in (({"text": "x" * 501}, "text"), ({"text": "   "}, "text"), (3, "")):
            message_text = bad_request(await pub.publish(room, bad, "b"), "b")
            assert "ChatMessage" in message_text and field in message_text
        history = await sub.request({"op": "history", "id": "h", "channel": room})
        assert [m["data"]["text"] for m in history["result"]["messages"]] == ["hello", "x" * 500]


async def test_demo_server_side_chat_keeps_the_given_author_and_the_stats_have_rpc(
    demo: tuple[RunningServer, Hub],
) -> None:
    """hub.publish (conn None) keeps its user, defaulting to "server"; /dashboard/stats
    reports RPC calls and latency; /asyncapi.json carries ChatMessage."""
    server, hub = demo
    space = hub.permissions.namespace("chat:any")
    assert space is not None and space.model is not None
    data = space.validate("chat:any", {"text": " hi "})
    assert data == {"text": "hi", "user": None, "ts": None}
    async with httpx.AsyncClient(trust_env=False) as client:
        stats = (await client.get(server.http_url("/dashboard/stats"))).json()
        doc = (await client.get(server.http_url("/asyncapi.json"))).json()
    from wshub.demo.app import stamp

    stamped = await stamp(None, "chat:x", {"text": "hi", "user": "bot", "ts": None})
    assert stamped["user"] == "bot" and isinstance(stamped["ts"], int)
    assert (await stamp(None, "chat:x", {"text": "hi", "user": None, "ts": 5}))["user"] == "server"
    assert set(stats["rpc"]) == {"calls", "latency_ms"}
    assert isinstance(stats["rpc"]["calls"], int)
    assert "ChatMessage" in doc["components"]["schemas"]
    assert errors(doc) == []


async def test_demo_rooms_rpc_lists_active_rooms_with_member_counts(
    demo: tuple[RunningServer, Hub],
) -> None:
    """``rooms``: the chat rooms with members, busiest first; typed in the schemas."""
    server, _ = demo
    tag = f"r{time.monotonic_ns()}"
    busy, quiet = f"{tag}-busy", f"{tag}-quiet"
    async with open_client(server) as a, open_client(server) as b:
        for client in (a, b):
            await client.request({"op": "subscribe", "id": "s", "channel": f"chat:{busy}"})
        await a.request({"op": "subscribe", "id": "s", "channel": f"chat:{quiet}"})
        await a.request({"op": "subscribe", "id": "s", "channel": f"nick:{busy}"})
        reply = await b.request({"op": "rpc", "id": 1, "method": "rooms"})
        listed = [r for r in reply["result"]["rooms"] if r["name"].startswith(tag)]
        assert listed == [{"name": busy, "members": 2}, {"name": quiet, "members": 1}]
    doc = document(hub=demo[1])
    assert {"Room", "RoomsResult"} <= set(doc["components"]["schemas"])
    assert "receive_rpc_rooms" in doc["operations"]
