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

from typing import TYPE_CHECKING

from fastapi import APIRouter, FastAPI, Request

from wshub.core.codecs import JSON_SUBPROTOCOL, JSON_UNPACKED_SUBPROTOCOL, MSGPACK_SUBPROTOCOL
from wshub.core.errors import CloseCode
from wshub.core.protocol import PROTOCOL_VERSION
from wshub.ops.asyncapi_codes import APP_ERROR_CODE, CLOSE_MEANINGS, ERROR_MEANINGS, NOT_SENT
from wshub.ops.asyncapi_fields import (
    CHANNEL,
    INTEGER_NOTE,
    MESSAGE_CHANNEL,
    MESSAGE_ITEM,
    MORE,
    OFFSET,
    OPS,
    OPTIONAL_OFFSET,
    OPTIONAL_STRING,
    REPLY_ID,
    REQUEST_ID,
    Schema,
)
from wshub.ops.asyncapi_messages import _messages, _operations, _rpc_messages
from wshub.ops.asyncapi_models import (
    REF_TEMPLATE,
    RpcSchema,
    _schema_ref,
    app_schemas,
    model_schemas,
    namespace_models,
    rpc_schemas,
)

if TYPE_CHECKING:
    from wshub.hub.facade import Hub

__all__ = [
    "APP_ERROR_CODE",
    "CHANNEL",
    "CLOSE_MEANINGS",
    "ERROR_MEANINGS",
    "INTEGER_NOTE",
    "MESSAGE_CHANNEL",
    "MESSAGE_ITEM",
    "MORE",
    "NOT_SENT",
    "OFFSET",
    "OPS",
    "OPTIONAL_OFFSET",
    "OPTIONAL_STRING",
    "REF_TEMPLATE",
    "REPLY_ID",
    "REQUEST_ID",
    "SUBPROTOCOLS",
    "RpcSchema",
    "Schema",
    "add_asyncapi",
    "app_schemas",
    "document",
    "model_schemas",
    "namespace_models",
    "rpc_schemas",
]


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
