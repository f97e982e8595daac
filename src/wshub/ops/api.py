"""The HTTP server API: publish, broadcast, inspect and disconnect from your backend.

Routes under ``/api`` (see `add_api`), each guarded by the API key of the
``WSHUB_API_KEY`` setting, sent as ``Authorization: apikey <key>``:

- ``POST /api/publish`` ``{channel, data, idempotency_key?}``: publish to a channel, in
  every process (validated against the namespace's model and run through its
  ``on_publish`` hooks, with ``conn`` None, as ``hub.publish`` does: a refusal is 400
  ``{"detail": {"code": "bad_request" or the hook's code, "message": ...}}``);
- ``POST /api/broadcast`` ``{channels, data}``: publish one data to many channels;
- ``GET /api/channels``: channels with members in THIS process, with their counts;
- ``GET /api/presence/{channel}``: who is in a channel, in every process;
- ``GET /api/history/{channel}?since=&limit=``: a channel's kept publications;
- ``POST /api/disconnect`` ``{user, code, reason}``: close every connection of a
  user, in every process (the command travels through the broker).

Without a key configured the routes are not mounted at all (404, and absent from
the OpenAPI document): the API is off, never open. A missing or wrong key gets
401; a body larger than `max_body_size` (``max_message_size`` plus `ENVELOPE_BYTES`)
413; a bad body 422 with FastAPI's usual ``detail``; a refused request 400/403;
a broker that is down 503 (not published); a publish sent to the broker but not
answered in time 504 ``timeout`` (maybe published: retry with the same
``idempotency_key``). Errors other than 422 have the body
``{"detail": {"code": <wire error code>, "message": ...}}``.

The key and the size are checked before a byte of the body is read (`GuardedRoute`):
FastAPI reads and parses a route's body before it runs the route's dependencies, so a
dependency alone would let anyone without the key make the server buffer any amount.
The refusal goes out before the body has been sent; uvicorn discards what follows
without keeping it, for at most ``handshake_timeout`` under `wshub serve`.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
from collections.abc import Callable, Coroutine, Iterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Path, Query, Request, Response
from fastapi.routing import APIRoute
from fastapi.security import APIKeyHeader
from pydantic import BaseModel, Field, field_validator
from starlette.types import Message as ASGIMessage
from starlette.types import Receive

from wshub.core.channels import CHANNEL_CHARS, MAX_CHANNEL_LENGTH
from wshub.core.errors import (
    BrokerUnavailable,
    CloseCode,
    ErrorCode,
    ProtocolError,
    PublishError,
    PublishTimeout,
    RPCError,
)
from wshub.core.protocol import MAX_REASON_BYTES, publication_object
from wshub.core.types import MAX_IDEMPOTENCY_KEY
from wshub.hub.facade import Hub, sendable_close_code
from wshub.settings import Settings

logger = logging.getLogger("wshub.api")

#: The scheme of the ``Authorization`` header: ``Authorization: apikey <key>``.
SCHEME = "apikey"
CHANNEL_PATTERN = f"^[{CHANNEL_CHARS}]{{1,{MAX_CHANNEL_LENGTH}}}$"
MAX_BROADCAST_CHANNELS = 1000
#: What a body may hold besides ``data``: the keys and up to `MAX_BROADCAST_CHANNELS`
#: channel names of `MAX_CHANNEL_LENGTH` characters (twice that: JSON may escape "/").
ENVELOPE_BYTES = MAX_BROADCAST_CHANNELS * (2 * MAX_CHANNEL_LENGTH + 4) + 4096

Channel = Annotated[
    str, Field(pattern=CHANNEL_PATTERN, description="a channel name", examples=["chat:lobby"])
]

_STATUS = {
    ErrorCode.BAD_REQUEST: 400,
    ErrorCode.UNAUTHORIZED: 401,
    ErrorCode.FORBIDDEN: 403,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.TOO_LARGE: 413,
    ErrorCode.RATE_LIMITED: 429,
    ErrorCode.UNAVAILABLE: 503,
    ErrorCode.TIMEOUT: 504,
    ErrorCode.INTERNAL: 500,
}


# -- models -------------------------------------------------------------------------------


class PublishRequest(BaseModel):
    """Publish ``data`` to ``channel``."""

    channel: Channel
    data: Any = Field(
        description="any JSON value; checked against the namespace's model, if it has one"
    )
    idempotency_key: str | None = Field(
        None,
        min_length=1,
        max_length=MAX_IDEMPOTENCY_KEY,
        description="a retry with the same key (same channel, within idempotency_window) "
        "publishes nothing and answers the first publish's result",
    )


class PublishResponse(BaseModel):
    """Where the publication landed."""

    offset: int | None = Field(None, description="its history offset, if the channel keeps one")
    epoch: str | None = Field(None, description="the history's epoch, if the channel keeps one")


class BroadcastRequest(BaseModel):
    """Publish one ``data`` to each of ``channels``."""

    channels: list[Channel] = Field(min_length=1, max_length=MAX_BROADCAST_CHANNELS)
    data: Any = Field(
        description="any JSON value; checked against the namespace's model, if it has one"
    )


class BroadcastResponse(BaseModel):
    """Where each publication landed, by channel."""

    results: dict[str, PublishResponse]


class ChannelInfo(BaseModel):
    """A channel with members in the process that answered."""

    channel: str
    subscribers: int = Field(description="its members in this process")


class ChannelsResponse(BaseModel):
    """The channels with members in the process that answered (not the whole cluster)."""

    channels: list[ChannelInfo]


class ClientEntry(BaseModel):
    """One connection present in a channel."""

    user: str | None
    info: dict[str, Any] | None = None


class PresenceResponse(BaseModel):
    """Who is in a channel, in every process, by client id."""

    clients: dict[str, ClientEntry]


class Message(BaseModel):
    """One kept publication."""

    channel: str
    data: Any
    offset: int | None = None
    from_: str | None = Field(None, alias="from", description="the publishing client's id")


class HistoryResponse(BaseModel):
    """A channel's kept publications, oldest first, and its current position."""

    offset: int
    epoch: str
    messages: list[Message]


class DisconnectRequest(BaseModel):
    """Close every connection of ``user``, in every process."""

    user: str = Field(min_length=1, max_length=200)
    code: int = Field(
        CloseCode.NORMAL, description="close code: 1000, 1001, 1008, 1011-1013 or 3000-4999"
    )
    reason: str = Field("", description=f"close reason, at most {MAX_REASON_BYTES} bytes")

    @field_validator("code")
    @classmethod
    def _sendable(cls, code: int) -> int:
        if not sendable_close_code(code):
            raise ValueError("a server may close with 1000, 1001, 1008, 1011-1013 or 3000-4999")
        return code

    @field_validator("reason")
    @classmethod
    def _short(cls, reason: str) -> str:
        if len(reason.encode()) > MAX_REASON_BYTES:
            raise ValueError(f"at most {MAX_REASON_BYTES} bytes of UTF-8")
        return reason


class DisconnectResponse(BaseModel):
    """The command went out; connections close once their queues drained."""

    user: str
    code: int


# -- the key ------------------------------------------------------------------------------

_header = APIKeyHeader(
    name="Authorization",
    scheme_name="apikey",
    description="`Authorization: apikey <WSHUB_API_KEY>`",
    auto_error=False,
)


def _error(status: int, code: ErrorCode, message: str) -> HTTPException:
    headers = {"WWW-Authenticate": SCHEME} if status == 401 else None
    return HTTPException(status, {"code": code.value, "message": message}, headers=headers)


def _key_matcher(key: str) -> Callable[[str | None], bool]:
    """Whether an ``Authorization`` value is ``apikey <key>`` (constant-time comparison)."""
    expected = key.encode()

    def matches(authorization: str | None) -> bool:
        scheme, _, given = (authorization or "").partition(" ")
        return scheme.lower() == SCHEME and hmac.compare_digest(given.strip().encode(), expected)

    return matches


def _unauthorized() -> HTTPException:
    return _error(401, ErrorCode.UNAUTHORIZED, "missing or wrong API key")


def key_checker(key: str) -> Any:
    """Build the dependency that admits requests carrying ``Authorization: apikey <key>``.

    The comparison takes the same time wherever the given key differs. FastAPI runs
    dependencies after it has read the body: the API's routes check the key before
    that (`GuardedRoute`); this dependency documents the scheme in OpenAPI and checks
    again.

    Args:
        key: the API key.

    Returns:
        A FastAPI dependency raising 401 for a missing or wrong key.
    """
    matches = _key_matcher(key)

    async def check(authorization: Annotated[str | None, Depends(_header)]) -> None:
        if not matches(authorization):
            raise _unauthorized()

    return check


def max_body_size(settings: Settings) -> int:
    """The largest request body the API reads: ``max_message_size`` + `ENVELOPE_BYTES`."""
    return settings.max_message_size + ENVELOPE_BYTES


def _limited(receive: Receive, limit: int) -> Receive:
    """``receive`` that raises 413 as soon as the body's bytes so far exceed ``limit``."""
    received = 0

    async def receive_within() -> ASGIMessage:
        nonlocal received
        message = await receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit:
                raise _too_large(limit)
        return message

    return receive_within


def _too_large(limit: int) -> HTTPException:
    return _error(413, ErrorCode.TOO_LARGE, f"request body over {limit} bytes")


def guarded_route(key: str, limit: int) -> type[APIRoute]:
    """Build a route class that checks the key and the body size before the body is read.

    A missing or wrong key: 401 without reading the body. A ``Content-Length`` over
    ``limit``: 413 without reading it. Otherwise the body is read through a counter
    that refuses with 413 as soon as more than ``limit`` bytes have arrived (uvicorn
    buffers at most 64 KiB ahead of the app, so no more is held).

    The refusal goes out at once, before the client has sent its body. uvicorn then
    reads and discards the rest of it (closing instead would reset the connection
    and destroy the response before most clients read it); `wshub serve` bounds that
    discarding by ``handshake_timeout`` (`wshub.server.handshake_guard`).

    Args:
        key: the API key.
        limit: the largest body, in bytes.

    Returns:
        An ``APIRoute`` subclass, for ``APIRouter(route_class=...)``.
    """
    matches = _key_matcher(key)

    class GuardedRoute(APIRoute):
        def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
            handler = super().get_route_handler()

            async def guarded(request: Request) -> Response:
                if not matches(request.headers.get("authorization")):
                    raise _unauthorized()
                length = request.headers.get("content-length", "")
                if length.isdigit() and int(length) > limit:
                    raise _too_large(limit)
                return await handler(Request(request.scope, _limited(request.receive, limit)))

            return guarded

    return GuardedRoute


@contextlib.contextmanager
def _answers() -> Iterator[None]:
    """Turn the hub's errors into HTTP errors."""
    try:
        yield
    except PublishTimeout as exc:  # sent, unanswered: retry with the same idempotency key
        raise _error(504, ErrorCode.TIMEOUT, str(exc) or "no answer") from None
    except BrokerUnavailable as exc:
        raise _error(503, ErrorCode.UNAVAILABLE, str(exc) or "broker down") from None
    except ProtocolError as exc:
        raise _error(_STATUS.get(exc.code, 400), exc.code, exc.message) from None
    except RPCError as exc:  # an on_publish hook refused: 400 with the hook's own code
        detail = {"code": exc.code, "message": exc.message or exc.code}
        raise HTTPException(400, detail) from None
    except (PublishError, ValueError) as exc:
        # InvalidPublication (a namespace model refused the data) included: the same
        # message a protocol client gets with bad_request, naming the field.
        raise _error(400, ErrorCode.BAD_REQUEST, str(exc)) from None


# -- routes -------------------------------------------------------------------------------


def api_router(hub: Hub, key: str) -> APIRouter:
    """Build the API's router (without prefix) for ``hub``, guarded by ``key``.

    Its routes check the key, then the body's size (`max_body_size` of the hub's
    settings), before reading the body (see `guarded_route`).

    Args:
        hub: the hub the API acts on.
        key: the API key.

    Returns:
        The router; include it with a prefix, as `add_api` does.
    """
    router = APIRouter(
        dependencies=[Depends(key_checker(key))],
        tags=["wshub"],
        route_class=guarded_route(key, max_body_size(hub.settings)),
    )

    @router.post("/publish", response_model=PublishResponse)
    async def publish(body: PublishRequest) -> PublishResponse:
        """Publish ``data`` to ``channel``: every member, in every process, receives it."""
        with _answers():
            result = await hub.publish(
                body.channel, body.data, idempotency_key=body.idempotency_key
            )
        return PublishResponse(offset=result.offset, epoch=result.epoch)

    @router.post("/broadcast", response_model=BroadcastResponse)
    async def broadcast(body: BroadcastRequest) -> BroadcastResponse:
        """Publish ``data`` to each channel in turn (503 stops at the first broker failure)."""
        results: dict[str, PublishResponse] = {}
        with _answers():
            for channel in dict.fromkeys(body.channels):
                result = await hub.publish(channel, body.data)
                results[channel] = PublishResponse(offset=result.offset, epoch=result.epoch)
        return BroadcastResponse(results=results)

    @router.get("/channels", response_model=ChannelsResponse)
    async def channels() -> ChannelsResponse:
        """Channels with members in the process that answers, with their member counts.

        Each worker process answers for itself: behind several workers, ask each, or
        use presence for a cluster-wide view of one channel.
        """
        counts = sorted(hub.channel_counts().items())
        return ChannelsResponse(channels=[ChannelInfo(channel=c, subscribers=n) for c, n in counts])

    @router.get("/presence/{channel:path}", response_model=PresenceResponse)
    async def presence(channel: Annotated[str, Path(pattern=CHANNEL_PATTERN)]) -> Any:
        """Who is in ``channel``, in every process (the channel's namespace must track it)."""
        with _answers():
            clients = await hub.presence(channel)
        return {"clients": {client: entry.to_json() for client, entry in clients.items()}}

    @router.get("/history/{channel:path}", response_model=HistoryResponse)
    async def history(
        channel: Annotated[str, Path(pattern=CHANNEL_PATTERN)],
        since: Annotated[int | None, Query(ge=0, description="publications after it")] = None,
        limit: Annotated[int | None, Query(ge=0, le=10_000, description="at most")] = None,
    ) -> Any:
        """A channel's kept publications, oldest first (its namespace must keep history)."""
        with _answers():
            page = await hub.history(channel, since=since, limit=limit)
        messages = [publication_object(channel, p) for p in page.publications]
        return {"offset": page.position.offset, "epoch": page.position.epoch, "messages": messages}

    @router.post("/disconnect", response_model=DisconnectResponse, status_code=202)
    async def disconnect(body: DisconnectRequest) -> DisconnectResponse:
        """Close every connection of ``user`` in every process, after their queues drain."""
        with _answers():
            await hub.disconnect_user(body.user, body.code, body.reason)
        logger.info("API: disconnect user=%s code=%s", body.user, body.code)
        return DisconnectResponse(user=body.user, code=body.code)

    return router


def add_api(app: FastAPI, hub: Hub, prefix: str = "/api") -> bool:
    """Mount the HTTP server API under ``prefix`` when the hub's settings name an API key.

    Args:
        app: the FastAPI app.
        hub: the hub; the app must run ``hub.lifespan``.
        prefix: the path prefix.

    Returns:
        True when mounted; False when ``api_key`` is not set (the API stays off: its
        paths answer 404).
    """
    secret = hub.settings.api_key
    key = secret.get_secret_value() if secret is not None else ""
    if not key:
        logger.info("HTTP API off: set WSHUB_API_KEY to turn it on")
        return False
    app.include_router(api_router(hub, key), prefix=prefix)
    return True
