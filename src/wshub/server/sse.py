"""Server-Sent Events: the hub's channels over one ``text/event-stream`` response.

``GET /sse?channel=a&channel=b`` answers a stream in which every publication is one
event whose ``data`` is the protocol's message frame, and whose ``id`` is a position
token for every channel of the stream (`encode_position_token`). A browser that
reconnects sends the last one back as ``Last-Event-ID`` (or ``?lastEventId=``), and
the stream resumes with exactly what it missed on every channel, then live, through
the same hand-over as a subscribe with ``since`` (`Recovery.subscribe`).

An SSE client is an ordinary `Connection` of the hub: registered, counted by the
limits and in presence, with its bounded send queue and overflow policy, and its one
writer task. Only the "socket" differs: `SSEStream` speaks the ASGI WebSocket dialect
the writer uses (``websocket.send`` / ``websocket.close``) and turns it into an HTTP
response, frame by frame. The hub knows nothing of SSE.

Refusals that must not be retried are HTTP statuses, which SSE clients can see (and
on which `EventSource` stops): 400 (bad channels or token), 401 (authentication),
403 (Origin, or a channel's permissions). Refusals worth retrying (1013 limits, 1001
shutdown) and every later close are a ``close`` event at the end of a 200 stream, on
which `EventSource` reconnects after the stream's ``retry``. See docs/sse.md.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import random
from collections.abc import Iterable
from typing import Any

import orjson
from fastapi import APIRouter, FastAPI
from starlette.datastructures import QueryParams
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketState

from wshub.core.channels import is_valid_channel
from wshub.core.codecs import JSON
from wshub.core.errors import (
    BrokerUnavailable,
    CloseCode,
    ErrorCode,
    ProtocolError,
    PublishError,
    RPCError,
)
from wshub.core.protocol import PING, welcome
from wshub.hub.connection import Connection, ConnectionState
from wshub.hub.connection_log import log_refused
from wshub.hub.facade import Hub
from wshub.hub.publish_hooks import Prepared, refusal
from wshub.hub.recovery import PAGE_MAX_MESSAGES
from wshub.server.auth import ANONYMOUS, AuthError, Identity
from wshub.server.fastapi import add_client_route
from wshub.server.origins import origin_allowed

__all__ = [
    "MAX_CHANNELS",
    "MAX_CHANNEL_CHARS",
    "SSEEndpoint",
    "SSEStream",
    "decode_position_token",
    "encode_position_token",
    "mount_sse",
]

logger = logging.getLogger("wshub.sse")

#: Most channels one stream may carry (also capped by ``max_subscriptions``).
MAX_CHANNELS = 32
#: Most characters all channel names of one stream may add up to: the position token
#: stays under about 2 KiB (see docs/protocol.md).
MAX_CHANNEL_CHARS = 1024
#: Longest ``Last-Event-ID`` accepted, in characters.
MAX_TOKEN_CHARS = 4096

#: Internal frames, queued like any other so that they keep their place in the stream.
_SUBSCRIBED = "sse.subscribed"
_PING = JSON.encode(PING)
_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache, no-transform"),
    (b"x-accel-buffering", b"no"),  # nginx: do not buffer the stream
]


# -- the position token --------------------------------------------------------------


def encode_position_token(positions: dict[str, tuple[int, str]]) -> str:
    """The ``id`` of an event: base64url (unpadded) of ``{channel: [offset, epoch]}``."""
    compact = {channel: [offset, epoch] for channel, (offset, epoch) in positions.items()}
    return base64.urlsafe_b64encode(orjson.dumps(compact)).rstrip(b"=").decode()


def decode_position_token(token: str) -> dict[str, tuple[int, str]]:
    """Read a position token back.

    Raises:
        ValueError: it is not one (too long, not base64url JSON, or of the wrong shape).
    """
    if len(token) > MAX_TOKEN_CHARS:
        raise ValueError("position token too long")
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        value = orjson.loads(raw)
    except (binascii.Error, ValueError):
        raise ValueError("position token is not base64url JSON") from None
    if not isinstance(value, dict):
        raise ValueError("position token is not an object")
    positions: dict[str, tuple[int, str]] = {}
    for channel, position in value.items():
        if (
            not isinstance(position, list)
            or len(position) != 2
            or not isinstance(position[0], int)
            or isinstance(position[0], bool)
            or position[0] < 0
            or not isinstance(position[1], str)
            or len(position[1]) > 64
        ):
            raise ValueError(f"bad position for channel {channel!r}")
        positions[channel] = (position[0], position[1])
    return positions


def _event(name: str | None, data: bytes | str, event_id: str | None = None) -> bytes:
    parts = []
    if name is not None:
        parts.append(f"event: {name}\n".encode())
    if event_id is not None:
        parts.append(f"id: {event_id}\n".encode())
    parts.append(b"data: " + (data.encode() if isinstance(data, str) else data) + b"\n\n")
    return b"".join(parts)


# -- the stream -----------------------------------------------------------------------


class SSEStream(WebSocket):
    """An HTTP ``text/event-stream`` response that the hub's connection writes as a socket.

    It is handed to `Hub.connect` in place of a WebSocket. The connection's writer
    sends it frames (``websocket.send``) and at last a close (``websocket.close``);
    it writes each frame as an SSE event, keeping the position of every channel of
    the stream for the events' ``id``. The response starts (200) with the first
    frame, so that a connection refused by the limits still gets a stream.

    Args:
        hub: the hub (to read positions and recovery pages).
        scope, receive, send: the ASGI HTTP request.
        resumed: the request carried a position token (a reconnect).
        retry: seconds the client should wait before reconnecting (sent with jitter).
        cors_origin: an allowed foreign Origin to answer CORS for, or None.
    """

    def __init__(
        self,
        hub: Hub,
        scope: Scope,
        receive: Receive,
        send: Send,
        *,
        resumed: bool,
        retry: float,
        cors_origin: str | None,
    ) -> None:
        HTTPConnection.__init__(self, scope, receive)  # not a WebSocket scope
        self.client_state = WebSocketState.CONNECTING
        self.application_state = WebSocketState.CONNECTING
        self._hub = hub
        self._asgi_receive = receive
        self._asgi_send = send
        self._resumed = resumed
        self._retry_ms = max(1, round(retry * 1000 * random.uniform(0.75, 1.25)))
        self._cors_origin = cors_origin
        #: The position of every channel keeping history, as the client has it so far.
        self.positions: dict[str, tuple[int, str]] = {}
        self._token = encode_position_token({})
        self.started = False
        self.ended = asyncio.Event()

    # -- the WebSocket dialect the connection speaks ------------------------------

    async def accept(
        self, subprotocol: str | None = None, headers: Iterable[tuple[bytes, bytes]] | None = None
    ) -> None:
        self.client_state = WebSocketState.CONNECTED
        self.application_state = WebSocketState.CONNECTED

    async def receive(self) -> Message:
        """Wait for the client to go away (an SSE client sends nothing)."""
        while True:
            message = await self._asgi_receive()
            if message["type"] == "http.disconnect":
                self.client_state = WebSocketState.DISCONNECTED
                return {"type": "websocket.disconnect", "code": CloseCode.GOING_AWAY}

    async def send(self, message: Message) -> None:
        if self.ended.is_set():
            return
        if message["type"] == "websocket.close":
            await self.close(message.get("code", CloseCode.NORMAL), message.get("reason"))
        elif message["type"] == "websocket.send" and message.get("text") is not None:
            await self._frames(message["text"])

    async def close(self, code: int = CloseCode.NORMAL, reason: str | None = None) -> None:
        """End the stream with a ``close`` event (``{"op":"close","code","reason"}``)."""
        if self.ended.is_set():
            return
        frame = orjson.dumps({"op": "close", "code": code, "reason": reason or ""})
        try:
            await self._write(_event("close", frame), more=False)
        finally:
            self.ended.set()
            self.client_state = self.application_state = WebSocketState.DISCONNECTED

    # -- frames to events -----------------------------------------------------------

    async def _write(self, body: bytes, more: bool = True) -> None:
        if not self.started:
            self.started = True
            headers = list(_HEADERS)
            if self._cors_origin is not None:
                headers += [
                    (b"access-control-allow-origin", self._cors_origin.encode()),
                    (b"access-control-allow-credentials", b"true"),
                    (b"vary", b"Origin"),
                ]
            await self._asgi_send(
                {"type": "http.response.start", "status": 200, "headers": headers}
            )
            body = f"retry: {self._retry_ms}\n\n".encode() + body
        await self._asgi_send({"type": "http.response.body", "body": body, "more_body": more})

    async def _frames(self, text: str) -> None:
        out: list[bytes] = []
        for line in text.split("\n"):  # the writer packs frames with "\n"
            frame = orjson.loads(line)
            op = frame.get("op") if isinstance(frame, dict) else None
            if op == "message":
                await self._message(frame, line, out)
            elif op == "ping":
                out.append(b": ping\n\n")
            elif op == _SUBSCRIBED:
                await self._subscribed(frame, out)
            elif op in ("welcome", "join", "leave"):
                out.append(_event(op, line))
            # Nothing else is queued for an SSE connection.
        if out:
            await self._write(b"".join(out))

    def _advance(self, channel: str, offset: int, epoch: str) -> str:
        self.positions[channel] = (offset, epoch)
        self._token = encode_position_token(self.positions)
        return self._token

    def _gap(self, channel: str, position: tuple[int, str] | None) -> bytes:
        """The ``gap`` event: messages of ``channel`` were lost before ``position``."""
        frame: dict[str, Any] = {"op": "gap", "channel": channel}
        if position is not None:
            frame["offset"], frame["epoch"] = position
        return _event("gap", orjson.dumps(frame), self._token)

    async def _message(self, frame: dict[str, Any], line: str, out: list[bytes]) -> None:
        channel, offset = frame.get("channel"), frame.get("offset")
        if (
            not isinstance(channel, str)
            or channel not in self.positions
            or not isinstance(offset, int)
        ):
            out.append(_event(None, line, self._token))  # no history: the id stays
            return
        seen, epoch = self.positions[channel]
        if not epoch or offset <= seen:
            # The first publication of a new epoch (offsets restart at 1): learn the epoch.
            epoch = await self._epoch_of(channel, offset)
            lost = offset != 1
        else:
            lost = offset != seen + 1  # dropped by a drop_* overflow policy
        if lost:
            self._advance(channel, offset - 1, epoch)
            out.append(self._gap(channel, (offset - 1, epoch)))
        out.append(_event(None, line, self._advance(channel, offset, epoch)))

    async def _epoch_of(self, channel: str, offset: int) -> str:
        """The epoch ``offset`` belongs to, read from the history ("" when unknown)."""
        try:
            page = await self._hub.history(channel, limit=0)
        except (BrokerUnavailable, ProtocolError):
            return ""
        return page.position.epoch if page.position.offset >= offset else ""

    async def _subscribed(self, frame: dict[str, Any], out: list[bytes]) -> None:
        """A channel's (recovering) subscribe: what was missed, or a ``gap``, then its id."""
        channel: str = frame["channel"]
        result: dict[str, Any] = frame["result"]
        asked = frame.get("since") is not None
        if "offset" not in result:  # no history: a resumed client may have missed anything
            if self._resumed:
                out.append(self._gap(channel, None))
            return
        position = (int(result["offset"]), str(result["epoch"]))
        if asked and not result.get("recovered"):
            self._advance(channel, *position)
            out.append(self._gap(channel, position))
            return
        last = int(frame["since"] or 0)
        for item in result.get("messages", ()):
            last = int(item["offset"])
            data = orjson.dumps({"op": "message", **item})
            out.append(_event(None, data, self._advance(channel, last, position[1])))
        if result.get("more"):
            last = await self._pages(channel, last, position, out)
        # An event with only an id moves the client's Last-Event-ID without firing.
        out.append(f"id: {self._advance(channel, *position)}\n\n".encode())

    async def _pages(
        self, channel: str, last: int, position: tuple[int, str], out: list[bytes]
    ) -> int:
        """Write recovery pages 2..n (live frames wait in the queue meanwhile)."""
        target, epoch = position
        while last < target:
            await self._write(b"".join(out))
            out.clear()
            try:
                page = await self._hub.history(
                    channel, since=last, limit=min(target - last, PAGE_MAX_MESSAGES)
                )
            except (BrokerUnavailable, ProtocolError):
                page = None
            items = [] if page is None else page.publications
            if (
                page is None
                or page.position.epoch != epoch
                or not items
                or items[0].offset != last + 1
            ):
                self._advance(channel, *position)
                out.append(self._gap(channel, position))
                return target
            for publication in items:
                if publication.offset is None or publication.offset > target:
                    break
                message = JSON.message(channel, publication)
                assert message is not None
                last = publication.offset
                out.append(_event(None, message.payload, self._advance(channel, last, epoch)))
        return last


# -- the endpoints ----------------------------------------------------------------------


def _error(status: int, code: ErrorCode, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code.value, "message": message}}, status_code=status)


_STATUS = {ErrorCode.FORBIDDEN: 403, ErrorCode.BAD_REQUEST: 400, ErrorCode.UNAUTHORIZED: 401}


class SSEEndpoint:
    """The ASGI app serving ``GET <path>`` (the stream) for a hub.

    Args:
        hub: the hub.
        retry: seconds an `EventSource` waits before reconnecting (±25 % jitter).
    """

    def __init__(self, hub: Hub, retry: float = 2.0) -> None:
        self.hub = hub
        self.retry = retry
        self.allowed = frozenset(o.rstrip("/").lower() for o in hub.settings.origins())

    # -- checks shared by the stream and the publish route --------------------------

    def check_origin(self, request: HTTPConnection) -> tuple[bool, str | None]:
        """Whether the request's Origin is allowed, and the foreign origin to answer CORS for."""
        origin = request.headers.get("origin")
        scheme = str(request.scope.get("scheme") or "http")
        if not origin_allowed(origin, request.headers.get("host"), self.allowed, scheme):
            logger.info("refused SSE request from origin %r", origin)
            return False, None
        return True, origin

    async def identify(self, request: HTTPConnection) -> Identity:
        """The request's identity, from the same token places and settings as WebSockets.

        Raises:
            AuthError: the token is invalid, or missing without anonymous access.
        """
        auth = self.hub.auth
        if auth is None:
            return ANONYMOUS
        identity = await auth(request)
        if identity is not None:
            return identity
        if auth.allow_anonymous:
            return ANONYMOUS
        raise AuthError("missing token")

    def refuse_auth(self, request: HTTPConnection, reason: str) -> Response:
        """Count and log an authentication failure (as a 4001), and answer 401."""
        self.hub.stats.auth_failed(reason)
        self.hub.stats.closes[CloseCode.UNAUTHORIZED] += 1
        log_refused(request, CloseCode.UNAUTHORIZED, reason)
        return _error(401, ErrorCode.UNAUTHORIZED, reason)

    # -- the stream ------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        refusal, channels, positions, identity, cors = await self._admit(request)
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        assert identity is not None
        stream = SSEStream(
            self.hub,
            scope,
            receive,
            send,
            resumed=positions is not None,
            retry=self.retry,
            cors_origin=cors,
        )
        async with self.hub.connect(stream, identity=identity, codec=JSON, reader=False) as conn:
            if conn.state is not ConnectionState.OPEN:
                return  # refused by a limit: the close event says so
            conn.send(welcome(conn.id, conn.user, self.hub.settings.ping_interval))
            if await self._subscribe(conn, channels, positions or {}):
                await self._serve(conn, stream)

    async def _admit(
        self, request: Request
    ) -> tuple[
        Response | None, list[str], dict[str, tuple[int, str]] | None, Identity | None, str | None
    ]:
        """Check everything that can be refused with an HTTP status, in order."""
        allowed, origin = self.check_origin(request)
        if not allowed:
            return _error(403, ErrorCode.FORBIDDEN, "origin not allowed"), [], None, None, None
        cors = origin if origin is not None and origin.rstrip("/").lower() in self.allowed else None
        channels, problem = _channels(request.query_params, self.hub.settings.max_subscriptions)
        if problem is not None:
            return _error(400, ErrorCode.BAD_REQUEST, problem), [], None, None, None
        token = request.headers.get("last-event-id") or request.query_params.get("lastEventId")
        positions = None
        if token:
            try:
                positions = decode_position_token(token)
            except ValueError as exc:
                return _error(400, ErrorCode.BAD_REQUEST, str(exc)), [], None, None, None
        try:
            identity = await self.identify(request)
        except AuthError as exc:
            return self.refuse_auth(request, exc.reason), [], None, None, None
        for channel in channels:
            try:
                await self.hub.permissions.check_subscribe(identity.user, channel)
            except ProtocolError as exc:
                response = _error(_STATUS.get(exc.code, 400), exc.code, exc.message)
                return response, [], None, None, None
        return None, channels, positions, identity, cors

    async def _subscribe(
        self, conn: Connection, channels: list[str], positions: dict[str, tuple[int, str]]
    ) -> bool:
        """Subscribe to every channel, recovering from the token's positions."""
        for channel in channels:
            since, epoch = positions.get(channel, (None, None))

            def reply(
                result: dict[str, Any], channel: str = channel, since: int | None = since
            ) -> None:
                conn.send({"op": _SUBSCRIBED, "channel": channel, "since": since, "result": result})

            try:
                await self.hub.subscribe_and_recover(conn, channel, since, epoch, reply)
            except BrokerUnavailable:
                conn.close(CloseCode.TRY_AGAIN_LATER, "broker unavailable")
                return False
            except ProtocolError as exc:
                conn.close(CloseCode.POLICY_VIOLATION, exc.message)
                return False
        return True

    async def _serve(self, conn: Connection, stream: SSEStream) -> None:
        """Ping every ``ping_interval`` until the client leaves or the stream ends."""
        gone = asyncio.ensure_future(stream.receive())
        ended = asyncio.ensure_future(stream.ended.wait())
        try:
            while True:
                done, _ = await asyncio.wait(
                    {gone, ended},
                    timeout=self.hub.settings.ping_interval,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if gone in done:
                    conn.mark_closed(CloseCode.GOING_AWAY)
                    return
                if ended in done or conn.is_closed:
                    return
                conn.enqueue(_PING, control=True)
        finally:
            for task in (gone, ended):
                task.cancel()


def _channels(query: QueryParams, max_subscriptions: int) -> tuple[list[str], str | None]:
    channels = list(dict.fromkeys(query.getlist("channel")))  # in order, once each
    limit = min(MAX_CHANNELS, max_subscriptions)
    if not channels:
        return [], "at least one 'channel' query parameter is needed"
    if len(channels) > limit:
        return [], f"too many channels (at most {limit})"
    if sum(map(len, channels)) > MAX_CHANNEL_CHARS:
        return [], f"channel names too long (at most {MAX_CHANNEL_CHARS} characters in all)"
    for channel in channels:
        if not is_valid_channel(channel) or channel.startswith("#"):
            return [], f"invalid channel name {channel!r}"
    return channels, None


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


def mount_sse(
    app: FastAPI | APIRouter,
    hub: Hub,
    path: str = "/sse",
    *,
    publish_path: str | None = "/publish",
    retry: float = 2.0,
) -> SSEEndpoint:
    """Serve ``hub``'s channels as Server-Sent Events at ``GET path``.

    ``GET path?channel=a&channel=b`` streams every publication of those channels;
    ``POST path + publish_path`` publishes (None: no publish route). The browser
    client is served at ``/wshub/client.js`` too (``wshub.sse(url, channels)``).

    Args:
        app: the application or router.
        hub: the hub; the app must run ``hub.lifespan``.
        path: the stream's path.
        publish_path: the publish route, relative to ``path``; None for none.
        retry: seconds `EventSource` waits before reconnecting (sent with ±25 % jitter).

    Returns:
        The endpoint.
    """
    endpoint = SSEEndpoint(hub, retry)
    # A raw ASGI route: the stream writes its response itself.
    full_path = getattr(app, "prefix", "") + path
    app.routes.append(Route(full_path, endpoint, methods=["GET"], include_in_schema=False))
    if publish_path is not None:
        app.add_api_route(
            path.rstrip("/") + publish_path,
            SSEPublish(endpoint).__call__,
            methods=["POST"],
            include_in_schema=False,
        )
    add_client_route(app)
    return endpoint
