"""`SSEStream`: the ASGI WebSocket dialect the hub's connection writes, as an SSE response.

The connection's writer sends it frames (``websocket.send``) and a close
(``websocket.close``); it writes them as ``text/event-stream`` events, with the
position token (`wshub.server.sse_token`) as their ``id``. See `wshub.server.sse`.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterable
from typing import Any

import orjson
from starlette.requests import HTTPConnection
from starlette.types import Message, Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketState

from wshub.core.codecs import JSON
from wshub.core.errors import BrokerUnavailable, CloseCode, ProtocolError
from wshub.hub.facade import Hub
from wshub.hub.recovery import PAGE_MAX_MESSAGES
from wshub.server.sse_token import encode_position_token

__all__ = ["SSEStream"]

#: Internal frames, queued like any other so that they keep their place in the stream.
_SUBSCRIBED = "sse.subscribed"
_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache, no-transform"),
    (b"x-accel-buffering", b"no"),  # nginx: do not buffer the stream
]


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
