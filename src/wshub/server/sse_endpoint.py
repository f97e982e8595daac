"""`SSEEndpoint`: the ASGI app serving an SSE stream, and the checks it shares.

It refuses with an HTTP status what must not be retried (Origin, channels, token,
authentication, permissions), then connects an `SSEStream` to the hub, subscribes
it to its channels (recovering from the position token) and pings it. See
`wshub.server.sse`.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from starlette.datastructures import QueryParams
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from wshub.core.channels import is_valid_channel
from wshub.core.codecs import JSON
from wshub.core.errors import BrokerUnavailable, CloseCode, ErrorCode, ProtocolError
from wshub.core.protocol import PING, welcome
from wshub.hub.connection import Connection, ConnectionState
from wshub.hub.connection_log import log_refused
from wshub.hub.facade import Hub
from wshub.server.auth import ANONYMOUS, AuthError, Identity
from wshub.server.origins import origin_allowed
from wshub.server.sse_stream import _SUBSCRIBED, SSEStream
from wshub.server.sse_token import decode_position_token

__all__ = ["MAX_CHANNELS", "MAX_CHANNEL_CHARS", "SSEEndpoint"]

logger = logging.getLogger("wshub.sse")

#: Most channels one stream may carry (also capped by ``max_subscriptions``).
MAX_CHANNELS = 32
#: Most characters all channel names of one stream may add up to: the position token
#: stays under about 2 KiB (see docs/protocol.md).
MAX_CHANNEL_CHARS = 1024

#: Internal frames, queued like any other so that they keep their place in the stream.
_PING = JSON.encode(PING)


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
