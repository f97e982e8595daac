"""One connection: open the socket, send ``connect``, await ``welcome``, then serve it.

``ping`` is answered with ``pong``; a server silent for longer than the announced ping
interval plus ``ping_grace`` is dropped (the reconnect loop then opens another).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import orjson
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI
from websockets.typing import Subprotocol

from wshub.client.frames import is_reply, split_frames
from wshub.client.models import ClientError
from wshub.client.reconnect import Outcome
from wshub.core.codecs import JSON_SUBPROTOCOL

FrameHandler = Callable[[dict[str, Any]], None]


@dataclasses.dataclass(frozen=True, slots=True)
class SessionHooks:
    """What the client does at each step of a connection.

    Attributes:
        opened: the connection was welcomed (the connection, the ``welcome`` frame).
        ready: resubscribes and announces the connection, before other frames are read.
        closed: the welcomed connection ended, however it did.
        reply, message, presence: take a reply, a ``message``, a ``join``/``leave`` frame.
        report: hands an error nobody else sees to ``on_error``.
        stop: stops the client for good (close code, reason, error kind).
    """

    opened: Callable[[ClientConnection, dict[str, Any]], None]
    ready: Callable[[ClientConnection], Awaitable[None]]
    closed: Callable[[], None]
    reply: FrameHandler
    message: FrameHandler
    presence: FrameHandler
    report: Callable[[ClientError], None]
    stop: Callable[[int, str, str | None], None]


class ConnectorHost(Protocol):
    """The client settings a `Connector` reads to open and watch a connection."""

    @property
    def url(self) -> str: ...
    @property
    def connect_timeout(self) -> float: ...
    @property
    def connect_options(self) -> dict[str, Any]: ...
    @property
    def ping_grace(self) -> float: ...


class Connector:
    """Opens connections and serves each until it ends.

    Args:
        client: read for ``url``, ``connect_timeout``, ``connect_options`` and ``ping_grace``.
        hooks: what the client does as a connection opens, receives frames, and ends.
    """

    def __init__(self, client: ConnectorHost, hooks: SessionHooks) -> None:
        self._client = client
        self._hooks = hooks

    async def run(self, token: str | None) -> Outcome | None:
        """Open a connection with ``token`` and serve it until it ends.

        Returns:
            The close code, reason and whether ``welcome`` came; None when the URL is
            invalid (the client is stopped then).
        """
        client = self._client
        ws: ClientConnection | None = None
        try:
            async with asyncio.timeout(client.connect_timeout):
                ws = await ws_connect(
                    client.url,
                    subprotocols=[Subprotocol(JSON_SUBPROTOCOL)],
                    open_timeout=None,
                    **client.connect_options,
                )
                first: dict[str, Any] = {"op": "connect"}
                if token:
                    first["token"] = token
                await ws.send(orjson.dumps(first).decode())
                welcome, rest = await self._read_welcome(ws)
        except ConnectionClosed as exc:
            rcvd = exc.rcvd
            return (rcvd.code, rcvd.reason, False) if rcvd else (1006, str(exc), False)
        except InvalidURI as exc:
            self._hooks.stop(1006, str(exc), "bad_url")
            return None
        except TimeoutError:
            if ws is not None:
                ws.transport.abort()
            return 1006, f"no welcome within {client.connect_timeout} s", False
        except (OSError, InvalidHandshake) as exc:
            return 1006, str(exc) or repr(exc), False
        code, reason = await self._session(ws, welcome, rest)
        return code, reason, True

    async def _read_welcome(self, ws: ClientConnection) -> tuple[dict[str, Any], list[Any]]:
        while True:
            message = await ws.recv()
            frames = split_frames(message) if isinstance(message, str) else []
            for index, frame in enumerate(frames):
                if isinstance(frame, dict) and frame.get("op") == "welcome":
                    return frame, frames[index + 1 :]

    async def _session(
        self, ws: ClientConnection, welcome: dict[str, Any], rest: list[Any]
    ) -> tuple[int, str]:
        """Serve one welcomed connection until it ends; returns its close code and reason."""
        loop = asyncio.get_running_loop()
        self._hooks.opened(ws, welcome)
        try:
            await self._hooks.ready(ws)
            for frame in rest:
                await self._on_frame(ws, frame)
            ping = welcome.get("ping")
            grace = self._client.ping_grace
            limit = float(ping) + grace if isinstance(ping, int | float) else None
            try:
                async with asyncio.timeout(limit) as deadline:
                    async for message in ws:
                        if limit is not None:
                            deadline.reschedule(loop.time() + limit)
                        await self._on_data(ws, message)
            except TimeoutError:
                ws.transport.abort()
                return 1006, f"heartbeat timeout: nothing from the server for {limit} s"
            except ConnectionClosed:
                pass
            return ws.close_code or 1006, ws.close_reason or ""
        finally:
            self._hooks.closed()

    async def _on_data(self, ws: ClientConnection, message: str | bytes) -> None:
        if not isinstance(message, str):
            self._hooks.report(ClientError("bad_frame", "binary frame on a JSON connection"))
            return
        for frame in split_frames(message):
            await self._on_frame(ws, frame)

    async def _on_frame(self, ws: ClientConnection, frame: Any) -> None:
        if not isinstance(frame, dict):
            return
        if is_reply(frame):
            self._hooks.reply(frame)
            return
        op = frame.get("op")
        if op == "message" or op == "gap":  # a gap is ordered with the messages
            self._hooks.message(frame)
        elif op == "ping":
            with contextlib.suppress(ConnectionClosed):
                await ws.send('{"op":"pong"}')
        elif op in ("join", "leave"):
            self._hooks.presence(frame)
        elif isinstance(frame.get("error"), dict):
            error = frame["error"]
            self._hooks.report(ClientError(str(error.get("code")), str(error.get("message"))))
