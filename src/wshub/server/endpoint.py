"""The protocol endpoint: wire protocol v1 over one WebSocket (see docs/protocol.md).

A table maps each op to a handler; a handler returns the reply's ``result`` or
raises `ProtocolError`. The endpoint's loop reads one frame at a time and every
handler is quick (at most a broker round trip), so the socket is always read
and a client's frames are answered in the order it sent them.

Authentication, when the hub has an authenticator: a token in the handshake
(header, cookie, query) settles the identity before ``welcome``; without one,
the first frame must be ``{"op":"connect","token":...}`` within ``auth_timeout``
(``{"op":"connect"}`` without a token, or any other first frame, is let in as
anonymous only when anonymous access is allowed). Failures close with 4001.
Until it has authenticated, such a connection counts against ``max_unauthenticated``,
not ``max_connections`` (see `wshub.hub.lifecycle`).
Without an authenticator every connection is anonymous and ``welcome`` comes
at once; a ``connect`` frame after ``welcome`` is a no-op.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.websockets import WebSocket

from wshub.core.codecs import (
    PROTOCOL_SUBPROTOCOLS,
    codec_for_subprotocols,
    negotiate_subprotocol,
)
from wshub.core.errors import (
    CloseCode,
    ErrorCode,
    ProtocolError,
    PublishError,
    RPCError,
)
from wshub.core.limits import TokenBucket
from wshub.core.protocol import (
    Command,
    Op,
    error_reply,
    parse_command,
    reply,
    welcome,
)
from wshub.hub.connection import Connection, ConnectionState
from wshub.hub.connection_log import log_identified
from wshub.hub.facade import Hub
from wshub.hub.lifecycle import UNAUTHENTICATED
from wshub.hub.publish_hooks import Prepared, refusal
from wshub.hub.reader import Message
from wshub.hub.rpc import RPCCalls
from wshub.server.answer import Result, answer
from wshub.server.auth import ANONYMOUS, AuthError
from wshub.server.handshake import Handshake
from wshub.server.publish_lane import PublishLane

logger = logging.getLogger("wshub.endpoint")

Handler = Callable[[Connection, Command], Awaitable[Result]]


class ProtocolEndpoint:
    """An ASGI WebSocket endpoint speaking wire protocol v1 for a hub.

    Mount it with `wshub.fastapi.mount` or ``app.add_api_websocket_route(path, endpoint)``.

    Args:
        hub: the hub that routes this endpoint's publications.
    """

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.handshake = Handshake(hub)
        self._handlers: dict[Op, Handler] = {
            Op.SUBSCRIBE: self.handle_subscribe,
            Op.UNSUBSCRIBE: self.handle_unsubscribe,
            Op.PUBLISH: self.handle_publish,
            Op.PONG: self.handle_pong,
            Op.CONNECT: self.handle_connect,
            Op.REFRESH: self.handle_refresh,
            Op.PRESENCE: self.handle_presence,
            Op.HISTORY: self.handle_history,
            Op.RPC: self.handle_rpc,
        }

    async def __call__(self, websocket: WebSocket) -> None:
        # Every accept names one of the client's offers, refusals included: browsers and
        # most libraries fail a handshake answer without it (1006), hiding the close code.
        offered = list(websocket.scope.get("subprotocols") or [])
        subprotocol = negotiate_subprotocol(offered, PROTOCOL_SUBPROTOCOLS)
        codec = codec_for_subprotocols(offered)
        if subprotocol is not None or not offered:
            try:
                identity = await self.handshake.identity(websocket)
            except AuthError as exc:
                await self.handshake.refuse(websocket, subprotocol, exc.reason)
                return
        else:
            identity = ANONYMOUS  # closed with 4002 on accept, by `hub.connect`
        context = self.hub.connect(
            websocket,
            identity=UNAUTHENTICATED if identity is None else identity,
            codec=codec,
            subprotocols=PROTOCOL_SUBPROTOCOLS,
            # Clients that negotiated wshub.v1.* answer {"op":"ping"}; hand-driven ones
            # offering nothing (websocat, python -m websockets) rely on protocol pings.
            heartbeat=subprotocol is not None,
            reader=False,
        )
        async with context as conn:
            if conn.state is not ConnectionState.OPEN:
                return
            pending: Message | None = None
            if identity is None:
                settled = await self.handshake.first_frame_identity(conn)
                if settled is None:
                    return
                identity, pending = settled
                if not await self.hub.identify(conn, identity):
                    return
                log_identified(conn)
            ping = self.hub.settings.ping_interval

            def send_welcome(subscribed: list[dict[str, Any]]) -> None:
                conn.send(welcome(conn.id, conn.user, ping, subscribed))

            # on_connect hooks, then the welcome listing their subscriptions (wshub.hub.hooks).
            if not await self.hub.connect_hooks.welcome(conn, self.hub.recovery, send_welcome):
                return
            calls = RPCCalls(self.hub.settings.max_rpc_in_flight)
            try:
                if pending is not None:
                    await self.handle(conn, pending, calls=calls)
                await self._serve(conn, calls)
            finally:
                await calls.close()  # the connection ended: its RPC calls are cancelled

    async def _serve(self, conn: Connection, calls: RPCCalls | None = None) -> None:
        """Read and answer frames until the connection ends, within the rate limit."""
        s = self.hub.settings
        clock = asyncio.get_running_loop().time
        bucket = TokenBucket(s.rate_limit, s.rate_burst, clock())
        lane = PublishLane(s.publish_pipeline_depth)
        try:
            while True:
                message = await conn.receive()
                if message["type"] == "websocket.disconnect":
                    return
                if bucket.take(clock()):
                    await self.handle(conn, message, lane, calls)
                    continue
                self.hub.stats.rate_limited += 1
                if bucket.strikes >= s.rate_limit_strikes:
                    # Drain: the replies and `rate_limited` errors queued so far tell the client
                    # why it is closed (close_timeout bounds the flush for one not reading).
                    await lane.drain()
                    conn.close(CloseCode.RATE_LIMITED, "rate limited: too many frames")
                    return
                await lane.drain()  # answers go out in frame order, refusals included
                conn.send(error_reply(None, ErrorCode.RATE_LIMITED, "too many frames; slow down"))
        finally:
            await lane.close()

    async def handle(
        self,
        conn: Connection,
        message: dict[str, Any],
        lane: PublishLane | None = None,
        calls: RPCCalls | None = None,
    ) -> None:
        """Decode, run and answer one client message. Never raises for bad input.

        With a ``lane``, a publish is checked now, in frame order, and then sent on
        in the lane, so that the next frames are read while it is on its way; any
        other op first waits for the lane to drain (see `PublishLane`). With
        ``calls``, an ``rpc`` runs in a task of its own (see `RPCCalls`): it is
        answered when it is done, while the next frames are read and answered.
        """
        try:
            command = parse_command(conn.codec.decode(message.get("text"), message.get("bytes")))
        except ProtocolError as exc:
            conn.send(error_reply(exc.request_id, exc.code, exc.message))
            return
        if calls is not None and command.op is Op.RPC:
            if lane is not None and lane:
                await lane.drain()  # publishes sent before the call have reached the broker
            self._start_rpc(conn, command, calls)
            return
        if lane is None or command.op is not Op.PUBLISH:
            if lane is not None and lane:
                await lane.drain()
            await answer(conn, command, self._handlers[command.op](conn, command))
        elif await answer(conn, command, self._check_publish(conn, command), send_result=False):
            await lane.start(answer(conn, command, self._publish(conn, command)))

    def _start_rpc(self, conn: Connection, command: Command, calls: RPCCalls) -> None:
        """Start an ``rpc`` in its own task; past ``max_rpc_in_flight``, refuse it."""
        if calls.full:
            message = f"too many rpc calls in flight (max_rpc_in_flight={calls.limit})"
            conn.send(error_reply(command.id, ErrorCode.RATE_LIMITED, message))
            return
        calls.start(lambda: answer(conn, command, self.handle_rpc(conn, command)))

    async def handle_subscribe(self, conn: Connection, command: Command) -> Result:
        """``subscribe``: join a channel; with ``since``, recover what was missed.

        The reply is sent by the hub itself, between the recovered messages and the
        live ones held back meanwhile (see `Hub.subscribe_and_recover`).
        """
        assert command.channel is not None
        if command.since is not None and command.id is None:
            raise ProtocolError(ErrorCode.BAD_REQUEST, "subscribe with 'since' needs an 'id'")
        if command.channel not in conn.channels:
            # A member already (its own subscribe, or an on_connect hook's, which the
            # server granted): answered and recovered again without a new check.
            await self.hub.permissions.check_subscribe(conn.user, command.channel)
        request_id = command.id

        def send_reply(result: dict[str, Any]) -> None:
            if request_id is not None:
                conn.send(reply(request_id, result))

        await self.hub.subscribe_and_recover(
            conn, command.channel, command.since, command.epoch, send_reply
        )
        return None

    async def handle_unsubscribe(self, conn: Connection, command: Command) -> Result:
        """``unsubscribe``: leave a channel (leaving one never joined is not an error)."""
        assert command.channel is not None
        await self.hub.unsubscribe(conn, command.channel)
        return {}

    async def handle_publish(self, conn: Connection, command: Command) -> Result:
        """``publish``: send data to every member of a channel, in every process."""
        await self._check_publish(conn, command)
        return await self._publish(conn, command)

    async def _check_publish(self, conn: Connection, command: Command) -> Result:
        """Permissions, then the namespace's model and ``on_publish`` hooks, in frame order.

        The hooks' result replaces ``command.data`` as `Prepared`, which `_publish`
        hands to `Hub.publish`: published as it is, with no await before the broker.
        """
        channel = command.channel
        assert channel is not None
        space = await self.hub.permissions.check_publish(conn.user, channel, command.data)
        pipeline = self.hub.publish_pipeline
        if pipeline.needed(channel, space):
            try:
                data = await pipeline.prepare(conn, channel, command.data, space)
            except PublishError as exc:  # InvalidPublication: the message names the field
                raise ProtocolError(ErrorCode.BAD_REQUEST, str(exc), command.id) from None
            except RPCError as exc:
                raise refusal(exc, command.id) from None
            object.__setattr__(command, "data", Prepared(data))  # a frozen Command, carried on
        return None

    async def _publish(self, conn: Connection, command: Command) -> Result:
        # Nothing awaits before the broker has the publication: see `PublishLane`.
        assert command.channel is not None
        try:
            result = await self.hub.publish(
                command.channel,
                command.data,
                origin=conn.id,
                idempotency_key=command.idempotency_key,
            )
        except PublishError as exc:
            raise ProtocolError(ErrorCode.BAD_REQUEST, str(exc), command.id) from None
        return {} if result.offset is None else {"offset": result.offset}

    async def handle_pong(self, conn: Connection, command: Command) -> Result:
        """``pong``: the client is alive; no reply."""
        conn.pong_deadline = None
        return None

    async def handle_connect(self, conn: Connection, command: Command) -> Result:
        """``connect`` after ``welcome``: the identity is settled already; a no-op."""
        return {}

    async def handle_refresh(self, conn: Connection, command: Command) -> Result:
        """``refresh``: new credentials for the same user push the expiry back."""
        auth = self.hub.auth
        if auth is None:
            raise ProtocolError(ErrorCode.BAD_REQUEST, "authentication is off", command.id)
        assert command.token is not None
        try:
            identity = await auth.verify(command.token)
        except AuthError as exc:
            raise ProtocolError(ErrorCode.UNAUTHORIZED, exc.reason, command.id) from None
        if identity.user != conn.user:
            message = "the token is for another user"
            raise ProtocolError(ErrorCode.UNAUTHORIZED, message, command.id)
        self.hub.set_expiry(conn, identity.expires_at)
        expires = identity.expires_at
        if expires is not None and expires.is_integer():
            expires = int(expires)  # JWT's NumericDate: 1795642392, not 1795642392.0
        return {"expires": expires}

    async def handle_presence(self, conn: Connection, command: Command) -> Result:
        """``presence``: who is in a channel (those allowed to subscribe may ask)."""
        assert command.channel is not None
        await self.hub.permissions.check_subscribe(conn.user, command.channel)
        clients = await self.hub.presence(command.channel)
        return {"clients": {client: entry.to_json() for client, entry in clients.items()}}

    async def handle_history(self, conn: Connection, command: Command) -> Result:
        """``history``: read a channel's kept publications (``since``, ``limit``)."""
        channel = command.channel
        assert channel is not None
        await self.hub.permissions.check_subscribe(conn.user, channel)
        # Paginated to fit the send queue: "more": true when the rest was cut off.
        return await self.hub.recovery.history_reply(conn, channel, command.since, command.limit)

    async def handle_rpc(self, conn: Connection, command: Command) -> Result:
        """``rpc``: call an application method (``@hub.rpc``); replies with what it returns.

        The reply is sent here: an RPC's result is any JSON value, ``null`` included.
        """
        assert command.method is not None
        stats = self.hub.stats
        stats.rpc_calls += 1
        started = time.perf_counter()
        try:
            result = await self.hub.rpc_registry.call(conn, command.method, command.params)
        finally:
            stats.rpc_latency.observe(time.perf_counter() - started)
        if command.id is not None:
            conn.send(reply(command.id, result))
        return None
