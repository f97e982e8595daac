"""The JSON Schemas of the protocol's fields, and the table of each client op.

`OPS` says, per `Op`, what the enum can't: its summary, its fields, which are
required, and its reply's result. See `wshub.ops.asyncapi`.
"""

from __future__ import annotations

from typing import Any

from wshub.core.channels import (
    BROADCAST_CHANNEL,
    CHANNEL_CHARS,
    MAX_CHANNEL_LENGTH,
    USER_CHANNEL_PREFIX,
)
from wshub.core.protocol import MAX_ID_LENGTH, Op
from wshub.core.types import MAX_IDEMPOTENCY_KEY

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
