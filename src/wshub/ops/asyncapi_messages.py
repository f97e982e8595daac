"""The AsyncAPI document's messages and operations: client frames, replies, server frames.

Built from `OPS` and the code tables; each RPC method of the hub gets a message and
an operation of its own (``receive_rpc_<method>``). See `wshub.ops.asyncapi`.
"""

from __future__ import annotations

import re

from wshub.core.protocol import PROTOCOL_VERSION, Op
from wshub.ops.asyncapi_codes import APP_ERROR_CODE, ERROR_MEANINGS
from wshub.ops.asyncapi_fields import (
    CHANNEL,
    MESSAGE_CHANNEL,
    MESSAGE_ITEM,
    OFFSET,
    OPS,
    REPLY_ID,
    REQUEST_ID,
    Schema,
)
from wshub.ops.asyncapi_models import RpcSchema, _schema_ref

_UNSAFE = re.compile(r"[^A-Za-z0-9_.\-]")


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
