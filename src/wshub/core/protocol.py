"""Wire protocol v1, Sans-I/O: decoded client frames in, commands out; replies and pushes built.

Client frames are JSON objects (or MessagePack maps) with an ``op``; the server
answers a request carrying an ``id`` with ``{"id":..,"result":{..}}`` or
``{"id":..,"error":{"code":..,"message":..}}``. A request without an ``id`` gets
no success reply, only an error frame if it fails. See docs/protocol.md for the tables.

Nothing here touches a socket or an event loop.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any

import orjson

from wshub.core.channels import MAX_CHANNEL_LENGTH, is_valid_channel
from wshub.core.errors import ErrorCode, ProtocolError
from wshub.core.types import MAX_IDEMPOTENCY_KEY, Publication

PROTOCOL_VERSION = 1
MAX_ID_LENGTH = 64
MAX_METHOD_LENGTH = 100
MAX_REASON_BYTES = 123  # RFC 6455: a close frame's payload is at most 125 bytes, 2 of them the code

PING: dict[str, Any] = {"op": "ping"}


class Op(enum.StrEnum):
    """Operations a client may send."""

    SUBSCRIBE = "subscribe"
    UNSUBSCRIBE = "unsubscribe"
    PUBLISH = "publish"
    PONG = "pong"
    CONNECT = "connect"
    REFRESH = "refresh"
    PRESENCE = "presence"
    HISTORY = "history"
    RPC = "rpc"


#: Op values to ops; a lookup that cannot raise, unlike ``Op(value)``.
_OPS: dict[str, Op] = {op.value: op for op in Op}


@dataclasses.dataclass(frozen=True, slots=True)
class Command:
    """One parsed client frame.

    Attributes:
        op: the operation.
        id: the client's request id, echoed in the reply; None asks for no success reply.
        channel: the channel, for ops that name one.
        data: the published data, for ``publish``.
        since: the last offset the client saw, for ``subscribe`` with recovery.
        epoch: the history epoch the client saw ``since`` in.
        token: the credentials, for ``connect`` and ``refresh``.
        limit: the most publications to return, for ``history``.
        method: the RPC method's name, for ``rpc``.
        params: the RPC's parameters as decoded (any value; None when absent), for ``rpc``.
        idempotency_key: for ``publish``: a retry with the same key publishes nothing.
    """

    op: Op
    id: int | str | None = None
    channel: str | None = None
    data: Any = None
    since: int | None = None
    epoch: str | None = None
    token: str | None = None
    limit: int | None = None
    method: str | None = None
    params: Any = None
    idempotency_key: str | None = None


def parse_command(frame: object) -> Command:
    """Validate a decoded client frame and turn it into a `Command`.

    Args:
        frame: the decoded JSON or MessagePack value.

    Returns:
        The command.

    Raises:
        ProtocolError: ``bad_request``, with a message naming the problem and the
            frame's id when it had a usable one.
    """
    if not isinstance(frame, dict):
        raise ProtocolError(ErrorCode.BAD_REQUEST, "a frame must be an object")
    request_id = _request_id(frame.get("id"))
    op_name = frame.get("op")
    op = _OPS.get(op_name) if isinstance(op_name, str) else None
    if op is None:
        problem = "missing 'op'" if op_name is None else f"unknown op {op_name!r}"
        message = f"{problem}; known ops: {', '.join(_OPS)}"
        raise ProtocolError(ErrorCode.BAD_REQUEST, message, request_id)
    if op is Op.PONG:
        return Command(op, request_id)
    if op is Op.CONNECT or op is Op.REFRESH:
        token = _optional(frame, "token", str, request_id)
        if op is Op.REFRESH and token is None:
            raise ProtocolError(ErrorCode.BAD_REQUEST, "refresh needs 'token'", request_id)
        return Command(op, request_id, token=token)
    if op is Op.RPC:
        method = frame.get("method")
        if method is None:
            raise ProtocolError(ErrorCode.BAD_REQUEST, "rpc needs 'method'", request_id)
        if not isinstance(method, str) or not 0 < len(method) <= MAX_METHOD_LENGTH:
            message = f"'method' must be a string of 1 to {MAX_METHOD_LENGTH} characters"
            raise ProtocolError(ErrorCode.BAD_REQUEST, message, request_id)
        return Command(op, request_id, method=method, params=frame.get("params"))
    channel = _channel(frame, request_id)
    if op is Op.PUBLISH:
        if "data" not in frame:
            raise ProtocolError(ErrorCode.BAD_REQUEST, "publish needs 'data'", request_id)
        key = _optional(frame, "idempotency_key", str, request_id)
        if key is not None and not 0 < len(key) <= MAX_IDEMPOTENCY_KEY:
            message = f"'idempotency_key' must be 1 to {MAX_IDEMPOTENCY_KEY} characters"
            raise ProtocolError(ErrorCode.BAD_REQUEST, message, request_id)
        return Command(op, request_id, channel, data=frame["data"], idempotency_key=key)
    if op is Op.SUBSCRIBE or op is Op.HISTORY:
        since = _non_negative(frame, "since", request_id)
        epoch = _optional(frame, "epoch", str, request_id)
        limit = _non_negative(frame, "limit", request_id) if op is Op.HISTORY else None
        return Command(op, request_id, channel, since=since, epoch=epoch, limit=limit)
    return Command(op, request_id, channel)


def _non_negative(frame: dict[Any, Any], name: str, request_id: int | str | None) -> int | None:
    value: int | None = _optional(frame, name, int, request_id)
    if value is not None and value < 0:
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"'{name}' must be >= 0", request_id)
    return value


def _request_id(value: object) -> int | str | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ProtocolError(ErrorCode.BAD_REQUEST, "'id' must be an integer or a string")
    if isinstance(value, str) and len(value) > MAX_ID_LENGTH:
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"'id' is longer than {MAX_ID_LENGTH}")
    return value


def _channel(frame: dict[Any, Any], request_id: int | str | None) -> str:
    channel = frame.get("channel")
    if not isinstance(channel, str):
        raise ProtocolError(ErrorCode.BAD_REQUEST, "'channel' must be a string", request_id)
    if not is_valid_channel(channel):
        message = (
            f"invalid channel name: 1 to {MAX_CHANNEL_LENGTH} characters "
            "from A-Z a-z 0-9 _ - : . @ / = +"
        )
        raise ProtocolError(ErrorCode.BAD_REQUEST, message, request_id)
    return channel


def _optional(
    frame: dict[Any, Any], name: str, kind: type[int] | type[str], request_id: int | str | None
) -> Any:
    value = frame.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, kind):
        message = f"'{name}' must be {'an integer' if kind is int else 'a string'}"
        raise ProtocolError(ErrorCode.BAD_REQUEST, message, request_id)
    return value


def reply(request_id: int | str, result: Any) -> dict[str, Any]:
    """Build a success reply (``result`` is an object, or any JSON value for ``rpc``)."""
    return {"id": request_id, "result": result}


def error_reply(
    request_id: int | str | None, code: ErrorCode | str, message: str
) -> dict[str, Any]:
    """Build a failure reply; ``request_id`` is left out when the frame had none.

    ``code`` is an `ErrorCode`, or an application's own (an `RPCError`'s).
    """
    frame: dict[str, Any] = {} if request_id is None else {"id": request_id}
    frame["error"] = {"code": str(code), "message": message}
    return frame


def welcome(
    client: str,
    user: str | None,
    ping_interval: float,
    subscribed: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Build the first frame after accept.

    Args:
        client: the connection's id.
        user: the authenticated user, or None for anonymous connections.
        ping_interval: seconds between server pings (the client's watchdog uses it).
        subscribed: the server-side subscriptions made before the welcome (by
            ``on_connect`` hooks), each ``{"channel"}`` plus ``"offset"`` and ``"epoch"``
            when the channel keeps history; the field is left out when there are none.
    """
    ping = int(ping_interval) if float(ping_interval).is_integer() else ping_interval
    frame: dict[str, Any] = {
        "op": "welcome",
        "client": client,
        "user": user,
        "ping": ping,
        "version": PROTOCOL_VERSION,
    }
    if subscribed:
        frame["subscribed"] = subscribed
    return frame


def truncate_reason(reason: str, limit: int = MAX_REASON_BYTES) -> str:
    """Cut a close reason to ``limit`` bytes of UTF-8 without splitting a character."""
    encoded = reason.encode()
    if len(encoded) <= limit:
        return reason
    return encoded[:limit].decode(errors="ignore")


def publication_object(channel: str, publication: Publication) -> dict[str, Any]:
    """A publication as the ``messages`` of subscribe and history replies show it."""
    item: dict[str, Any] = {"channel": channel, "data": orjson.loads(publication.data)}
    if publication.offset is not None:
        item["offset"] = publication.offset
    if publication.origin is not None:
        item["from"] = publication.origin
    return item
