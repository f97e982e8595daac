"""Namespace(model=...), InvalidPublication and the publish pipeline, without a server."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel, Field

from wshub import Namespace, PublishError
from wshub.core.errors import ErrorCode, RPCError
from wshub.core.protocol import error_reply
from wshub.hub.permissions import InvalidPublication, Permissions
from wshub.hub.publish_hooks import PublishPipeline, refusal

pytestmark = pytest.mark.anyio


class Inner(BaseModel):
    n: int


class Item(BaseModel):
    name: str = Field(min_length=1)
    count: int = 1
    inner: Inner | None = None


def test_validate_fills_defaults_normalises_and_passes_untyped_data_through() -> None:
    space = Namespace(model=Item)
    assert space.validate("i:1", {"name": "a", "count": "2"}) == {
        "name": "a",
        "count": 2,
        "inner": None,
    }
    assert space.validate("i:1", Item(name="b")) == {"name": "b", "count": 1, "inner": None}
    assert Namespace().validate("x", {"any": object}) == {"any": object}


def test_invalid_publication_names_the_field_and_is_a_publish_error() -> None:
    with pytest.raises(InvalidPublication) as caught:
        Namespace(model=Item).validate("i:1", {"name": "", "inner": {"n": "x"}})
    exc = caught.value
    assert isinstance(exc, PublishError)
    assert exc.message == (
        "invalid data for 'i:1' (Item): name: String should have at least 1 character"
        " (and 1 more error)"
    )
    assert [e["loc"] for e in exc.errors] == [("name",), ("inner", "n")]
    assert str(exc) == exc.message


def test_namespace_refuses_a_model_that_is_not_pydantic() -> None:
    with pytest.raises(TypeError, match="BaseModel"):
        Namespace(model=dict)  # type: ignore[arg-type]


async def test_pipeline_runs_hooks_after_validation_by_namespace_and_wildcard() -> None:
    permissions = Permissions({"i": Namespace(model=Item), "*": Namespace(), "o": Namespace()})
    pipeline = PublishPipeline(permissions)
    assert not pipeline.needed("o:1") and pipeline.needed("i:1")
    seen: list[Any] = []

    @pipeline.on_publish("i")
    async def hook(conn: object, channel: str, data: Any) -> Any:
        seen.append((conn, channel, dict(data)))
        return {**data, "hooked": True}

    @pipeline.on_publish("*")
    async def wild(conn: object, channel: str, data: Any) -> Any:
        return ["wild", data]

    assert await pipeline.prepare(None, "i:1", {"name": "x"}) == {
        "name": "x",
        "count": 1,
        "inner": None,
        "hooked": True,
    }
    assert seen == [(None, "i:1", {"name": "x", "count": 1, "inner": None})]
    assert await pipeline.prepare(None, "z:1", 5) == ["wild", 5]  # not listed: "*"
    assert await pipeline.prepare(None, "o:1", 5) == 5  # listed by name: not "*"


def test_a_hook_refusal_goes_on_the_wire_with_its_own_code() -> None:
    exc = refusal(RPCError("too_fast", "slow down"), 7)
    assert error_reply(exc.request_id, exc.code, exc.message) == {
        "id": 7,
        "error": {"code": "too_fast", "message": "slow down"},
    }
    assert exc.code != ErrorCode.BAD_REQUEST
