"""`SSEPublish`: ``POST <path>/publish``, the publish route for SSE clients."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from wshub.core.channels import is_valid_channel
from wshub.core.errors import (
    BrokerUnavailable,
    ErrorCode,
    ProtocolError,
    PublishError,
    RPCError,
)
from wshub.hub.connection import Connection
from wshub.hub.publish_hooks import Prepared, refusal
from wshub.server.auth import AuthError, Identity
from wshub.server.sse_endpoint import _STATUS, SSEEndpoint, _error
from wshub.server.sse_stream import SSEStream

__all__ = ["SSEPublish"]


class SSEPublish:
    """``POST <path>/publish`` ``{"channel","data"}``: a publish for SSE clients.

    The same rules as a WebSocket ``publish``: the request's token (header, cookie or
    query) decides who publishes, then the channel's permissions (`check_publish`),
    the namespace's model and ``on_publish`` hooks, then `Hub.publish`. An optional
    ``"client"``, the stream's id from its ``welcome`` event, names an SSE stream of
    the same user: it is ``from`` for subscribers and ``conn`` for the hooks
    (channels with a model or hooks need it).

    Answers ``{"offset": N}`` (or ``{}``), else ``{"error": {"code","message"}}`` with
    400, 401, 403, 413 or 503.
    """

    def __init__(self, endpoint: SSEEndpoint) -> None:
        self.endpoint = endpoint
        self.hub = endpoint.hub

    async def __call__(self, request: Request) -> Response:
        endpoint, hub = self.endpoint, self.hub
        allowed, _ = endpoint.check_origin(request)
        if not allowed:
            return _error(403, ErrorCode.FORBIDDEN, "origin not allowed")
        try:
            identity = await endpoint.identify(request)
        except AuthError as exc:
            return endpoint.refuse_auth(request, exc.reason)
        body = await request.body()
        if len(body) > hub.settings.max_message_size:
            return _error(413, ErrorCode.TOO_LARGE, "request body too large")
        try:
            frame = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            return _error(400, ErrorCode.BAD_REQUEST, f"invalid JSON: {exc}")
        if not isinstance(frame, dict):
            return _error(400, ErrorCode.BAD_REQUEST, "the body must be a JSON object")
        channel = frame.get("channel")
        if not isinstance(channel, str) or not is_valid_channel(channel) or channel[0] == "#":
            return _error(400, ErrorCode.BAD_REQUEST, "invalid channel name")
        if "data" not in frame:
            return _error(400, ErrorCode.BAD_REQUEST, "publish needs 'data'")
        data = frame["data"]
        conn = self._connection(frame, identity)
        try:
            space = await hub.permissions.check_publish(identity.user, channel, data)
            pipeline = hub.publish_pipeline
            if pipeline.needed(channel, space):
                # Typed namespaces and on_publish hooks, as for a WebSocket publish: they
                # see the publishing connection, so the publish must name its stream.
                if conn is None:
                    message = "publishing to this channel needs 'client': your stream's id"
                    return _error(400, ErrorCode.BAD_REQUEST, message)
                data = Prepared(await pipeline.prepare(conn, channel, data, space))
            result = await hub.publish(channel, data, origin=None if conn is None else conn.id)
        except RPCError as exc:
            error = refusal(exc)
            return _error(_STATUS.get(error.code, 400), error.code, error.message)
        except ProtocolError as exc:
            return _error(_STATUS.get(exc.code, 400), exc.code, exc.message)
        except PublishError as exc:
            return _error(400, ErrorCode.BAD_REQUEST, str(exc))
        except BrokerUnavailable as exc:
            return _error(503, ErrorCode.UNAVAILABLE, str(exc) or "broker down")
        return JSONResponse({} if result.offset is None else {"offset": result.offset})

    def _connection(self, frame: dict[str, Any], identity: Identity) -> Connection | None:
        """The open SSE stream of the same user that ``"client"`` names, if any."""
        client = frame.get("client")
        conn = self.hub.registry.connections.get(client) if isinstance(client, str) else None
        if conn is None or not isinstance(conn.websocket, SSEStream) or conn.user != identity.user:
            return None
        return conn
