"""The wire side of the client: splitting frames, reading tokens, matching replies by id."""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import itertools
import logging
from collections.abc import Callable
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from wshub.client.models import ClientError, run_callback

logger = logging.getLogger("wshub.client")


def split_frames(text: str) -> list[Any]:
    """Split a text message into its ``\\n``-packed JSON frames; bad lines are logged, skipped."""
    frames = []
    for line in text.split("\n"):
        if line:
            try:
                frames.append(orjson.loads(line))
            except orjson.JSONDecodeError:
                logger.warning("wshub client: not JSON: %.80s", line)
    return frames


def token_expiry(token: str | None) -> float | None:
    """A JWT's ``exp`` (Unix seconds), read without verification; None if there is none."""
    parts = token.split(".") if token else []
    if len(parts) != 3:
        return None
    try:
        payload = orjson.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, binascii.Error):
        return None
    exp = payload.get("exp") if isinstance(payload, dict) else None
    return float(exp) if isinstance(exp, int | float) else None


def is_reply(frame: dict[str, Any]) -> bool:
    """Whether ``frame`` answers a request (it carries an ``id`` and a result or error)."""
    return frame.get("id") is not None and ("result" in frame or "error" in frame)


@dataclasses.dataclass
class _Pending:
    future: asyncio.Future[Any]
    timer: asyncio.TimerHandle
    on_result: Callable[[dict[str, Any]], None] | None = None
    #: The result as it came (any JSON: an ``rpc``'s), not coerced to an object.
    raw: bool = False


class PendingRequests:
    """Requests in flight, matched to their replies by id, each failing after a timeout.

    Args:
        timeout: returns the seconds a request waits for its reply (read at every use,
            so that a changed ``Client.request_timeout`` applies).
    """

    def __init__(self, timeout: Callable[[], float]) -> None:
        self._timeout = timeout
        self._pending: dict[int, _Pending] = {}
        self._ids = itertools.count(1)

    async def send(
        self,
        ws: ClientConnection,
        frame: dict[str, Any],
        on_result: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """Send ``frame`` with a fresh ``id`` on ``ws`` and wait for its reply.

        Args:
            on_result: called with the result before the caller resumes, in the reader
                task, so that it runs before any frame that follows the reply.

        Returns:
            The reply's ``result``.

        Raises:
            ClientError: the server's error, ``timeout``, or ``disconnected``.
        """
        result: dict[str, Any] = await self._send(ws, frame, on_result, None, raw=False)
        return result

    async def call(
        self, ws: ClientConnection, frame: dict[str, Any], wait: float | None = None
    ) -> Any:
        """Like `send`, for a reply whose ``result`` is any JSON value (``rpc``).

        Args:
            wait: seconds to wait for the reply; None: the usual request timeout.
        """
        return await self._send(ws, frame, None, wait, raw=True)

    async def _send(
        self,
        ws: ClientConnection,
        frame: dict[str, Any],
        on_result: Callable[[dict[str, Any]], None] | None,
        wait: float | None,
        *,
        raw: bool,
    ) -> Any:
        loop = asyncio.get_running_loop()
        request_id = next(self._ids)
        future: asyncio.Future[Any] = loop.create_future()
        wait = self._timeout() if wait is None else wait

        def expire() -> None:
            self._pending.pop(request_id, None)
            if not future.done():
                message = f"no reply to {frame.get('op')} within {wait} s"
                future.set_exception(ClientError("timeout", message))

        timer = loop.call_later(wait, expire)
        self._pending[request_id] = _Pending(future, timer, on_result, raw)
        try:
            await ws.send(orjson.dumps({**frame, "id": request_id}).decode())
        except ConnectionClosed:
            self._pending.pop(request_id, None)
            timer.cancel()
            raise ClientError("disconnected", "the connection closed") from None
        return await future

    def fail_all(self, error: ClientError) -> None:
        """Fail every request in flight with ``error``."""
        pending, self._pending = self._pending, {}
        for item in pending.values():
            item.timer.cancel()
            if not item.future.done():
                item.future.set_exception(error)

    def resolve(self, frame: dict[str, Any]) -> None:
        """Hand a reply frame (see `is_reply`) to the request it answers, if still waiting."""
        pending = self._pending.pop(frame["id"], None) if isinstance(frame["id"], int) else None
        if pending is None:
            return  # timed out already
        pending.timer.cancel()
        if pending.future.done():
            return
        error = frame.get("error")
        if isinstance(error, dict):
            code, message = str(error.get("code")), str(error.get("message"))
            pending.future.set_exception(ClientError(code, message))
            return
        result = frame.get("result")
        if pending.raw:
            pending.future.set_result(result)
            return
        result = result if isinstance(result, dict) else {}
        run_callback(pending.on_result, result)  # synchronously: recovered before live messages
        pending.future.set_result(result)
