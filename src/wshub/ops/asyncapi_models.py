"""The application's types for the documents: namespace models and RPC methods.

Their JSON Schemas go under ``components/schemas``, by class name (`app_schemas`);
`wshub.ops.typescript` turns the same schemas into TypeScript.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from wshub.ops.asyncapi_fields import Schema

if TYPE_CHECKING:
    from wshub.hub.facade import Hub

#: The ref template pydantic's schemas are generated with: `components/schemas` by name.
REF_TEMPLATE = "#/components/schemas/{model}"


def _schema_ref(name: str) -> Schema:
    return {"$ref": REF_TEMPLATE.format(model=name)}


def model_schemas(models: Iterable[type[BaseModel]]) -> dict[str, Schema]:
    """JSON Schemas of ``models`` and of the models they use, by class name.

    Each is ``model_json_schema(ref_template=REF_TEMPLATE)`` with its ``$defs``
    hoisted beside it, so that every ``$ref`` points into ``components/schemas``.
    """
    schemas: dict[str, Schema] = {}
    for model in models:
        schema = model.model_json_schema(ref_template=REF_TEMPLATE)
        for name, definition in schema.pop("$defs", {}).items():
            schemas.setdefault(name, definition)
        schemas[model.__name__] = schema
    return schemas


class RpcSchema:
    """One RPC method as the documents see it: its name and its models (None: any JSON)."""

    __slots__ = ("name", "params_model", "result_model", "summary")

    def __init__(
        self,
        name: str,
        params_model: type[BaseModel] | None,
        result_model: type[BaseModel] | None,
        summary: str = "",
    ) -> None:
        self.name = name
        self.params_model = params_model
        self.result_model = result_model
        self.summary = summary


def namespace_models(hub: Hub | None) -> dict[str, type[BaseModel]]:
    """The hub's typed namespaces: namespace name -> its model."""
    namespaces = hub.permissions.namespaces if hub is not None else None
    return {
        name: space.model for name, space in (namespaces or {}).items() if space.model is not None
    }


def rpc_schemas(hub: Hub | None) -> list[RpcSchema]:
    """The hub's RPC methods (``hub.rpc_methods()``, when the hub has RPC), sorted by name."""
    listing = getattr(hub, "rpc_methods", None)
    if listing is None:
        return []
    methods: Any = listing()
    items = methods.items() if isinstance(methods, dict) else ((None, m) for m in methods)
    found: list[RpcSchema] = []
    for key, method in items:
        name = getattr(method, "name", None) or key
        if not isinstance(name, str):
            continue
        params, result = (
            getattr(method, "params_model", None),
            getattr(method, "result_model", None),
        )
        doc = getattr(method, "summary", None) or getattr(method, "doc", None) or ""
        found.append(RpcSchema(name, _model_or_none(params), _model_or_none(result), str(doc)))
    return sorted(found, key=lambda m: m.name)


def _model_or_none(value: object) -> type[BaseModel] | None:
    return value if isinstance(value, type) and issubclass(value, BaseModel) else None


def app_schemas(hub: Hub | None) -> dict[str, Schema]:
    """`components/schemas` for ``hub``: namespace models, RPC params and results."""
    models: list[type[BaseModel]] = list(namespace_models(hub).values())
    for method in rpc_schemas(hub):
        models.extend(m for m in (method.params_model, method.result_model) if m is not None)
    return model_schemas(dict.fromkeys(models))  # each model once, in first-seen order
