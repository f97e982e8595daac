"""Publishing from the Python client: idempotency keys and retries (`Client.publish`).

A publish whose outcome is unknown or that could not be sent is retried with backoff
under one idempotency key, so that it is published exactly once.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any, Protocol

from wshub.client.models import ClientError
from wshub.client.reconnect import backoff_delay

__all__ = ["RETRIED", "PublishHost", "publish"]

#: Publish errors `Client.publish` retries with ``retry=True``: the outcome is unknown
#: (``timeout``, ``disconnected``) or it was not published (``unavailable``).
RETRIED = frozenset({"timeout", "unavailable", "disconnected"})


class PublishHost(Protocol):
    """What `publish` needs of the client: its request and its backoff ceilings."""

    @property
    def backoff_base(self) -> float: ...
    @property
    def backoff_cap(self) -> float: ...
    async def request(self, frame: dict[str, Any]) -> dict[str, Any]: ...


async def publish(
    host: PublishHost,
    channel: str,
    data: Any,
    *,
    idempotency_key: str | None,
    retry: bool,
    retry_for: float,
) -> int | None:
    """`Client.publish`: send the publish, retrying as asked; its offset, if kept."""
    frame: dict[str, Any] = {"op": "publish", "channel": channel, "data": data}
    if retry and idempotency_key is None:
        idempotency_key = uuid.uuid4().hex
    if idempotency_key is not None:
        frame["idempotency_key"] = idempotency_key
    deadline = time.monotonic() + retry_for
    attempt = 0
    while True:
        try:
            result = await host.request(frame)
            break
        except ClientError as exc:
            if not retry or exc.code not in RETRIED or time.monotonic() >= deadline:
                raise
        delay = backoff_delay(attempt, host.backoff_base, host.backoff_cap)
        attempt += 1
        await asyncio.sleep(min(delay, max(0.0, deadline - time.monotonic())))
    offset = result.get("offset")
    return offset if isinstance(offset, int) else None
