"""The AsyncAPI 3.0 document at /asyncapi.json validates and covers the whole protocol."""

from __future__ import annotations

import copy
import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from jsonschema import Draft7Validator

from wshub import Hub, mount
from wshub.core.errors import CloseCode, ErrorCode, ProtocolError
from wshub.core.protocol import Op, parse_command
from wshub.ops.asyncapi import (
    CLOSE_MEANINGS,
    ERROR_MEANINGS,
    NOT_SENT,
    OPS,
    add_asyncapi,
    document,
)
from wshub.testing import RunningServer

pytestmark = pytest.mark.anyio

SCHEMA = Path(__file__).parent.parent / "data" / "asyncapi-3.0.0.schema.json"

#: A minimal document the AsyncAPI 3.0 schema accepts.
KNOWN_GOOD: dict[str, Any] = {
    "asyncapi": "3.0.0",
    "info": {"title": "example", "version": "1.0.0"},
    "channels": {"c": {"address": "/c", "messages": {"m": {"payload": {"type": "object"}}}}},
    "operations": {
        "o": {
            "action": "send",
            "channel": {"$ref": "#/channels/c"},
            "messages": [{"$ref": "#/channels/c/messages/m"}],
        }
    },
}


@functools.cache
def validator() -> Draft7Validator:
    """A validator of the vendored AsyncAPI 3.0.0 schema (its definitions resolve by $id)."""
    return Draft7Validator(json.loads(SCHEMA.read_text()))


def errors(doc: dict[str, Any]) -> list[str]:
    """The schema's complaints about ``doc``, as readable lines."""
    return [f"{list(e.absolute_path)}: {e.message[:200]}" for e in validator().iter_errors(doc)]


def test_the_validator_accepts_a_known_good_document_and_rejects_broken_ones() -> None:
    """The vendored schema really checks: a good example passes, three broken ones fail."""
    assert errors(KNOWN_GOOD) == []
    wrong_action = copy.deepcopy(KNOWN_GOOD)
    wrong_action["operations"]["o"]["action"] = "shout"
    no_title = copy.deepcopy(KNOWN_GOOD)
    del no_title["info"]["title"]
    bad_version = {**KNOWN_GOOD, "asyncapi": "2.6.0"}
    for broken in (wrong_action, no_title, bad_version):
        assert errors(broken)


async def test_served_document_validates(serve: Callable[..., RunningServer]) -> None:
    """GET /asyncapi.json returns a valid AsyncAPI 3.0 document naming the server and path."""
    hub = Hub()
    app = FastAPI(lifespan=hub.lifespan)
    mount(app, hub, "/realtime")
    add_asyncapi(app, "/realtime")
    server = serve(app, settings=hub.settings)
    async with httpx.AsyncClient(trust_env=False) as client:
        response = await client.get(server.http_url("/asyncapi.json"))
    assert response.status_code == 200
    doc = response.json()
    assert errors(doc) == []
    assert doc["servers"]["hub"]["host"] == f"{server.host}:{server.port}"
    assert doc["servers"]["hub"]["pathname"] == "/realtime"
    assert doc["channels"]["hub"]["address"] == "/realtime"


def test_document_covers_every_op_error_and_close_code() -> None:
    """Each Op has a receive operation, each ErrorCode and CloseCode appears with a meaning."""
    doc = document()
    operations = doc["operations"]
    assert {f"receive_{op.value}" for op in Op} <= set(operations)
    assert set(OPS) == set(Op)
    # Every code is either documented as sent, or listed as never sent by this endpoint.
    assert set(ERROR_MEANINGS) | set(NOT_SENT) >= set(ErrorCode)
    assert set(CLOSE_MEANINGS) | set(NOT_SENT) >= set(CloseCode)
    assert not (set(ERROR_MEANINGS) | set(CLOSE_MEANINGS)) & set(NOT_SENT)
    error = doc["channels"]["hub"]["messages"]["error"]["payload"]["properties"]["error"]
    assert error["properties"]["code"]["anyOf"][0]["enum"] == [c.value for c in ERROR_MEANINGS]
    assert set(doc["channels"]["hub"]["x-close-codes"]) == {str(int(c)) for c in CLOSE_MEANINGS}
    assert operations["receive_subscribe"]["reply"]["messages"][0] == {
        "$ref": "#/channels/hub/messages/subscribeReply"
    }
    assert "reply" not in operations["receive_pong"]


@pytest.mark.parametrize("op", list(Op))
def test_each_client_message_schema_matches_the_parser(op: Op) -> None:
    """A frame with exactly the schema's required fields parses; without one it does not."""
    schema = document()["channels"]["hub"]["messages"][op.value]["payload"]
    examples = {"channel": "room", "data": 1, "token": "t", "since": 1, "epoch": "e", "limit": 1}
    examples["method"] = "m"
    frame = {"op": op.value, **{name: examples[name] for name in schema["required"][1:]}}
    assert parse_command(frame).op is op
    for name in schema["required"][1:]:
        with pytest.raises(ProtocolError):
            parse_command({k: v for k, v in frame.items() if k != name})
