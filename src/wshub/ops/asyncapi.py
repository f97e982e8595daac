"""An AsyncAPI 3.0 document of wire protocol v1, built from the definitions the code uses.

The ops come from `wshub.protocol.Op`, the error codes from `ErrorCode`, the close
codes from `CloseCode`, the channel-name rule from `wshub.channels`, the
subprotocols from `wshub.codecs`; the tables below add what the enums can't say
(each op's fields and result, each code's meaning), and a test checks they cover
every member. `add_asyncapi` serves the document at ``/asyncapi.json``.

AsyncAPI's "channel" is the WebSocket connection itself (one per endpoint, named
``hub``); wshub's channels (rooms) are a field of the frames. The document is
written from the server's side: ``receive`` operations are client frames, ``send``
operations server frames; requests with an ``id`` get a reply or an error.

Given the hub (``add_asyncapi(app, "/ws", hub=hub)``), the document also carries the
application's types under ``components/schemas``, by class name: each namespace's
model (`Namespace.model`, listed by namespace in the hub channel's
``x-namespaces``), and each RPC method's params and result models (``hub.rpc_methods()``),
whose methods are operations of their own (``receive_rpc_<method>``, with a reply).
`wshub types --ts` turns the same schemas into TypeScript (`wshub.ops.typescript`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, FastAPI, Request
from pydantic import BaseModel

from wshub.core.channels import (
    BROADCAST_CHANNEL,
    CHANNEL_CHARS,
    MAX_CHANNEL_LENGTH,
    USER_CHANNEL_PREFIX,
)
from wshub.core.codecs import JSON_SUBPROTOCOL, JSON_UNPACKED_SUBPROTOCOL, MSGPACK_SUBPROTOCOL
from wshub.core.errors import CloseCode, ErrorCode
from wshub.core.protocol import MAX_ID_LENGTH, PROTOCOL_VERSION, Op
from wshub.core.types import MAX_IDEMPOTENCY_KEY

if TYPE_CHECKING:
    from wshub.hub.facade import Hub

Schema = dict[str, Any]

CHANNEL: Schema = {
    "type": "string",
    "pattern": f"^[{CHANNEL_CHARS}]{{1,{MAX_CHANNEL_LENGTH}}}$",
    "description": f"a channel: 1 to {MAX_CHANNEL_LENGTH} of A-Z a-z 0-9 _ - : . @ / = +",
}
#: The channel of a live ``message`` frame: a client's channel, or an internal one
#: (`Hub.broadcast` on ``#all``, `Hub.send_to_user` on ``#user:<id>``).
MESSAGE_CHANNEL: Schema = {
    "anyOf": [
        CHANNEL,
        {"type": "string", "const": BROADCAST_CHANNEL},
        {"type": "string", "pattern": f"^{USER_CHANNEL_PREFIX}.+$"},
    ],
    "description": "a channel, or #all (broadcast) or #user:<id> (sent to a user)",
}
#: JSON Schema (draft 7) counts 1.0 as an integer; the server does not (a JSON number
#: with a fraction or exponent, or a MessagePack float, is refused with bad_request).
INTEGER_NOTE = "written without a fraction or exponent: 1.0 is refused"
REQUEST_ID: Schema = {
    "oneOf": [
        {"type": "integer", "description": INTEGER_NOTE},
        {"type": "string", "maxLength": MAX_ID_LENGTH},
        {"type": "null", "description": "the same as no id: no success reply"},
    ],
    "description": "chosen by the client; the reply carries it back",
}
#: The id of a reply: never null (a request without one gets no success reply).
REPLY_ID: Schema = {
    "oneOf": [{"type": "integer"}, {"type": "string", "maxLength": MAX_ID_LENGTH}],
    "description": "the request's id",
}
OFFSET: Schema = {"type": "integer", "minimum": 0}
#: An optional integer field of a client frame: null is the same as absent.
OPTIONAL_OFFSET: Schema = {"type": ["integer", "null"], "minimum": 0, "description": INTEGER_NOTE}
OPTIONAL_STRING: Schema = {"type": ["string", "null"], "description": "null: the same as absent"}
MESSAGE_ITEM: Schema = {
    "type": "object",
    "required": ["channel", "data"],
    "properties": {
        "channel": CHANNEL,
        "data": {},
        "offset": OFFSET,
        "from": {"type": "string", "description": "the publishing client's id"},
    },
}
MORE: Schema = {"type": "boolean", "const": True, "description": "only the first page"}

#: Per op: (summary, fields besides op and id, required fields, reply result or None).
OPS: dict[Op, tuple[str, Schema, list[str], Schema | None]] = {
    Op.SUBSCRIBE: (
        "Join a channel; with `since`, recover what was missed.",
        {"channel": CHANNEL, "since": OPTIONAL_OFFSET, "epoch": OPTIONAL_STRING},
        ["channel"],
        {
            "offset": OFFSET,
            "epoch": {"type": "string"},
            "recovered": {"type": "boolean"},
            "more": MORE,
            "messages": {"type": "array", "items": MESSAGE_ITEM},
        },
    ),
    Op.UNSUBSCRIBE: ("Leave a channel.", {"channel": CHANNEL}, ["channel"], {}),
    Op.PUBLISH: (
        "Publish data to every member of a channel, in every process.",
        {
            "channel": CHANNEL,
            "data": {"description": "any JSON value"},
            "idempotency_key": {
                "type": ["string", "null"],
                "minLength": 1,
                "maxLength": MAX_IDEMPOTENCY_KEY,
                "description": "a retry with the same key publishes once",
            },
        },
        ["channel", "data"],
        {"offset": OFFSET},
    ),
    Op.PONG: ("Answer a server ping.", {}, [], None),
    Op.CONNECT: (
        "First frame: authenticate when the handshake carried no token.",
        {"token": OPTIONAL_STRING},
        [],
        {},
    ),
    Op.REFRESH: (
        "New credentials for the same user, before the token expires.",
        {"token": {"type": "string"}},
        ["token"],
        {"expires": {"type": ["number", "null"]}},
    ),
    Op.PRESENCE: (
        "Who is in a channel.",
        {"channel": CHANNEL},
        ["channel"],
        {
            "clients": {
                "type": "object",
                "additionalProperties": {
                    "type": "object",
                    "properties": {"user": {"type": ["string", "null"]}, "info": {}},
                },
            }
        },
    ),
    Op.HISTORY: (
        "Read a channel's kept publications.",
        {"channel": CHANNEL, "since": OPTIONAL_OFFSET, "limit": OPTIONAL_OFFSET},
        ["channel"],
        {
            "offset": OFFSET,
            "epoch": {"type": "string"},
            "more": MORE,
            "messages": {"type": "array", "items": MESSAGE_ITEM},
        },
    ),
    Op.RPC: (
        "Call a server method registered with `@hub.rpc`; the reply's result is any JSON.",
        {
            "method": {"type": "string", "minLength": 1, "maxLength": 100},
            "params": {"description": "any JSON value; validated when the method declares a model"},
        },
        ["method"],
        None,  # any JSON, not an object: each method's reply is its own message (rpc_<name>)
    ),
}

#: What each error code a WebSocket reply can carry means (`too_large` is HTTP/SSE only).
ERROR_MEANINGS: dict[ErrorCode, str] = {
    ErrorCode.BAD_REQUEST: "malformed frame, unknown op, invalid channel, limit reached",
    ErrorCode.UNAUTHORIZED: "bad credentials in refresh",
    ErrorCode.FORBIDDEN: "the channel's rules or a permission hook refused",
    ErrorCode.NOT_FOUND: "rpc: no method by that name",
    ErrorCode.RATE_LIMITED: "too many frames, or too many rpc calls in flight",
    ErrorCode.UNAVAILABLE: "the broker is down; nothing was published",
    ErrorCode.INTERNAL: "a server bug; the connection stays usable",
    ErrorCode.TIMEOUT: "the broker did not answer in time; the publication may have gone out",
}

#: Codes wshub has that the protocol endpoint never sends.
NOT_SENT: dict[ErrorCode | CloseCode, str] = {
    ErrorCode.TOO_LARGE: "HTTP API and SSE only",
    CloseCode.POLICY_VIOLATION: "library-mode endpoints only",
}
#: An RPC handler's own error code (`RPCError`).
APP_ERROR_CODE = "^[a-z][a-z0-9_]{0,31}$"

#: When the protocol endpoint closes with each code.
CLOSE_MEANINGS: dict[CloseCode, str] = {
    CloseCode.NORMAL: "normal close",
    CloseCode.GOING_AWAY: "server shutting down (graceful drain); reconnect",
    CloseCode.MESSAGE_TOO_BIG: "message larger than the limit",
    CloseCode.INTERNAL_ERROR: "internal error",
    CloseCode.SERVICE_RESTART: "service restart (sent by uvicorn); treat like 1001",
    CloseCode.TRY_AGAIN_LATER: "connection limit reached; retry later",
    CloseCode.UNAUTHORIZED: "missing, invalid or expired token; don't retry with it",
    CloseCode.UNSUPPORTED_SUBPROTOCOL: (
        "none of the offered subprotocols is supported (the reason lists those that are); "
        "don't retry"
    ),
    CloseCode.FORBIDDEN: "origin not allowed, or an on_connect hook refused (the reason says)",
    CloseCode.SLOW_CONSUMER: "send queue overflowed; reconnect and recover from history",
    CloseCode.HEARTBEAT_TIMEOUT: "no pong in time",
    CloseCode.RATE_LIMITED: "too many frames",
}


def _op_const(name: str) -> Schema:
    return {"type": "string", "const": name}


def _object(required: list[str], properties: Schema) -> Schema:
    return {"type": "object", "required": required, "properties": properties}


def _client_message(op: Op) -> Schema:
    summary, fields, required, _ = OPS[op]
    payload = _object(["op", *required], {"op": _op_const(op.value), "id": REQUEST_ID, **fields})
    if op is Op.SUBSCRIBE:
        # "subscribe with 'since' needs an 'id'": the recovery reply must be matched.
        payload["if"] = {"required": ["since"], "properties": {"since": {"type": "integer"}}}
        payload["then"] = {"required": ["id"], "properties": {"id": REPLY_ID}}
    return {
        "name": op.value,
        "title": f"{op.value} (client)",
        "summary": summary,
        "payload": payload,
    }


def _reply_message(op: Op, result: Schema) -> Schema:
    payload = _object(["id", "result"], {"id": REPLY_ID, "result": _object([], result)})
    return {
        "name": f"{op.value}Reply",
        "summary": f"Success reply to {op.value}.",
        "payload": payload,
    }


def _server_messages() -> dict[str, Schema]:
    error = _object(
        ["code", "message"],
        {
            "code": {
                "anyOf": [
                    {"type": "string", "enum": [c.value for c in ERROR_MEANINGS]},
                    {"type": "string", "pattern": APP_ERROR_CODE, "description": "an RPC's own"},
                ]
            },
            "message": {"type": "string"},
        },
    )
    error["description"] = "; ".join(f"`{c.value}`: {m}" for c, m in ERROR_MEANINGS.items())
    presence_change = {
        "channel": CHANNEL,
        "client": {"type": "string"},
        "user": {"type": ["string", "null"]},
    }
    frames = {
        "welcome": (
            "First frame after accept.",
            ["client", "ping", "version"],
            {
                "client": {"type": "string", "description": "this connection's id"},
                "user": {"type": ["string", "null"]},
                "ping": {"type": "number", "description": "seconds between server pings"},
                "version": {"type": "integer", "const": PROTOCOL_VERSION},
                "subscribed": {
                    "type": "array",
                    "description": "channels on_connect hooks subscribed the connection to",
                    "items": _object(
                        ["channel"],
                        {"channel": CHANNEL, "offset": OFFSET, "epoch": {"type": "string"}},
                    ),
                },
            },
        ),
        "message": (
            "A publication on a subscribed channel, or on #all / #user:<id>.",
            ["channel", "data"],
            {**MESSAGE_ITEM["properties"], "channel": MESSAGE_CHANNEL},
        ),
        "gap": (
            "Publications of a channel were lost; what follows continues after offset.",
            ["channel"],
            {"channel": CHANNEL, "offset": OFFSET, "epoch": {"type": "string"}},
        ),
        "join": (
            "Someone joined a channel (namespaces with join/leave).",
            ["channel", "client"],
            presence_change,
        ),
        "leave": ("Someone left a channel.", ["channel", "client"], presence_change),
        "ping": ("Heartbeat: answer with pong.", [], {}),
    }
    messages = {
        name: {
            "name": name,
            "summary": summary,
            "payload": _object(["op", *required], {"op": _op_const(name), **props}),
        }
        for name, (summary, required, props) in frames.items()
    }
    messages["error"] = {
        "name": "error",
        "summary": "Failure reply; `id` is absent when the frame had none.",
        "payload": _object(["error"], {"id": REPLY_ID, "error": error}),
    }
    return messages


def _messages() -> dict[str, Schema]:
    messages = {op.value: _client_message(op) for op in Op}
    for op, (_, _, _, result) in OPS.items():
        if result is not None:
            messages[f"{op.value}Reply"] = _reply_message(op, result)
    messages.update(_server_messages())
    return messages


def _ref(name: str) -> Schema:
    return {"$ref": f"#/channels/hub/messages/{name}"}


def _operations(messages: dict[str, Schema]) -> dict[str, Schema]:
    channel = {"$ref": "#/channels/hub"}
    operations: dict[str, Schema] = {}
    for op in Op:
        operation: Schema = {
            "action": "receive",
            "channel": channel,
            "summary": OPS[op][0],
            "messages": [_ref(op.value)],
        }
        if f"{op.value}Reply" in messages:
            replies = [_ref(f"{op.value}Reply"), _ref("error")]
            operation["reply"] = {"channel": channel, "messages": replies}
        operations[f"receive_{op.value}"] = operation
    for name in ("welcome", "message", "join", "leave", "gap", "ping", "error"):
        summary = messages[name]["summary"]
        operations[f"send_{name}"] = {
            "action": "send",
            "channel": channel,
            "summary": summary,
            "messages": [_ref(name)],
        }
    return operations


#: The ref template pydantic's schemas are generated with: `components/schemas` by name.
REF_TEMPLATE = "#/components/schemas/{model}"
_UNSAFE = re.compile(r"[^A-Za-z0-9_.\-]")


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


def _rpc_messages(methods: list[RpcSchema]) -> tuple[dict[str, Schema], dict[str, Schema]]:
    """The messages and operations of the RPC methods."""
    messages: dict[str, Schema] = {}
    operations: dict[str, Schema] = {}
    channel = {"$ref": "#/channels/hub"}
    for method in methods:
        key = "rpc_" + _UNSAFE.sub("_", method.name)
        params = _schema_ref(method.params_model.__name__) if method.params_model else {}
        result = _schema_ref(method.result_model.__name__) if method.result_model else {}
        summary = method.summary.strip().split("\n")[0] or f"Call the RPC method {method.name}."
        messages[key] = {
            "name": key,
            "title": f"rpc {method.name} (client)",
            "summary": summary,
            "payload": _object(
                ["op", "id", "method"],
                {
                    "op": _op_const("rpc"),
                    "id": REQUEST_ID,
                    "method": {"type": "string", "const": method.name},
                    "params": params,
                },
            ),
        }
        messages[f"{key}Reply"] = {
            "name": f"{key}Reply",
            "summary": f"Result of the RPC method {method.name}.",
            "payload": _object(["id", "result"], {"id": REPLY_ID, "result": result}),
        }
        operations[f"receive_{key}"] = {
            "action": "receive",
            "channel": channel,
            "summary": summary,
            "messages": [_ref(key)],
            "reply": {"channel": channel, "messages": [_ref(f"{key}Reply"), _ref("error")]},
        }
    return messages, operations


def document(
    host: str = "localhost:8000",
    path: str = "/ws",
    protocol: str = "ws",
    hub: Hub | None = None,
) -> Schema:
    """Build the AsyncAPI 3.0 document of wire protocol v1.

    Args:
        host: the server's ``host:port``.
        path: the protocol endpoint's path.
        protocol: ``ws`` or ``wss``.
        hub: the hub, for the application's types (namespace models, RPC methods)
            under ``components/schemas``; None documents the protocol only.

    Returns:
        The document, as JSON-ready dicts.
    """
    messages = _messages()
    operations = _operations(messages)
    methods = rpc_schemas(hub)
    rpc_messages, rpc_operations = _rpc_messages(methods)
    messages.update(rpc_messages)
    operations.update(rpc_operations)
    typed = {name: _schema_ref(model.__name__) for name, model in namespace_models(hub).items()}
    channel_extras: Schema = {"x-namespaces": typed} if typed else {}
    cookie = hub.settings.auth_cookie if hub is not None else "wshub_token"
    components: Schema = {"securitySchemes": _security(cookie)}
    schemas = app_schemas(hub)
    if schemas:
        components["schemas"] = schemas
    closes = {str(int(code)): CLOSE_MEANINGS[code] for code in CloseCode if code in CLOSE_MEANINGS}
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "wshub wire protocol",
            "version": str(PROTOCOL_VERSION),
            "description": (
                "JSON frames in text messages (subprotocol "
                f"`{JSON_SUBPROTOCOL}`; several server frames may share one "
                "message, separated by newlines; "
                f"`{JSON_UNPACKED_SUBPROTOCOL}`: one frame per message), or the same "
                "frames as MessagePack (`application/msgpack`) in binary messages "
                f"(`{MSGPACK_SUBPROTOCOL}`). A client offering no subprotocol gets "
                f"`{JSON_SUBPROTOCOL}` framing and no `ping` frames (protocol pings only); "
                "one offering only unknown ones is closed with 4002. Close codes: "
                + "; ".join(f"{code} {meaning}" for code, meaning in closes.items())
            ),
        },
        "defaultContentType": "application/json",
        "servers": {
            "hub": {
                "host": host,
                "pathname": path,
                "protocol": protocol,
                "security": [
                    {"$ref": "#/components/securitySchemes/bearer"},
                    {"$ref": "#/components/securitySchemes/cookie"},
                    {"$ref": "#/components/securitySchemes/query"},
                ],
            }
        },
        "channels": {
            "hub": {
                "address": path,
                "title": "The WebSocket connection",
                "messages": messages,
                "bindings": {"ws": {"method": "GET", "query": _query(), "bindingVersion": "0.1.0"}},
                "x-close-codes": closes,
                "x-subprotocols": SUBPROTOCOLS,
                **channel_extras,
            }
        },
        "operations": operations,
        "components": components,
    }


def _query() -> Schema:
    return {
        "type": "object",
        "properties": {"token": {"type": "string", "description": "a JWT, when auth is on"}},
    }


def _security(cookie: str = "wshub_token") -> Schema:
    return {
        "bearer": {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "JWT",
            "description": "Authorization: Bearer <JWT> on the handshake (or a connect frame)",
        },
        "cookie": {
            "type": "httpApiKey",
            "name": cookie,
            "in": "cookie",
            "description": "the JWT in the cookie named by `auth_cookie` (default wshub_token)",
        },
        "query": {"type": "httpApiKey", "name": "token", "in": "query"},
    }


#: Each subprotocol's framing: the messages' content type, and whether frames are packed.
SUBPROTOCOLS: Schema = {
    JSON_SUBPROTOCOL: {"contentType": "application/json", "packed": True, "frames": "text"},
    JSON_UNPACKED_SUBPROTOCOL: {
        "contentType": "application/json",
        "packed": False,
        "frames": "text",
    },
    MSGPACK_SUBPROTOCOL: {
        "contentType": "application/msgpack",
        "packed": False,
        "frames": "binary",
    },
}


def add_asyncapi(
    app: FastAPI, ws_path: str = "/ws", path: str = "/asyncapi.json", *, hub: Hub | None = None
) -> None:
    """Serve the AsyncAPI document of the protocol endpoint at ``ws_path`` on ``GET path``.

    The document names the host and scheme the request came in with.

    Args:
        app: the FastAPI app.
        ws_path: where the protocol endpoint is mounted.
        path: where to serve the document.
        hub: the hub, whose namespace models and RPC methods the document then
            carries under ``components/schemas`` (read at each request).
    """

    async def asyncapi(request: Request) -> Schema:
        protocol = "wss" if request.url.scheme == "https" else "ws"
        return document(request.headers.get("host", "localhost"), ws_path, protocol, hub)

    router = APIRouter()
    router.add_api_route(path, asyncapi, methods=["GET"], include_in_schema=False)
    app.include_router(router)
