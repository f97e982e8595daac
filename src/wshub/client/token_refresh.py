"""Token refresh for the Python client: hand the server a new token before it expires.

`TokenRefresher` is the part of `Client` behind `Client.refresh`: it sends the
``refresh`` request and schedules the next one from the token's (JWT) expiry.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, Protocol

from wshub.client.models import ClientError, TokenSource
from wshub.client.reconnect import ReconnectLoop
from wshub.client.tasks import BackgroundTasks

__all__ = ["RefreshHost", "TokenRefresher"]


class RefreshHost(Protocol):
    """What the refresher reads of the client: its token source, margin and requests."""

    @property
    def get_token(self) -> TokenSource | None: ...
    @property
    def refresh_margin(self) -> float: ...
    async def request(self, frame: dict[str, Any]) -> dict[str, Any]: ...
    async def refresh(self, token: str | None = None) -> float | None: ...


class TokenRefresher:
    """Sends ``refresh`` requests; one scheduled refresh task (``"refresh"``) at a time."""

    def __init__(
        self,
        host: RefreshHost,
        *,
        reconnect: ReconnectLoop,
        tasks: BackgroundTasks,
        report: Callable[[ClientError], None],
    ) -> None:
        self._host = host
        self._reconnect = reconnect
        self._tasks = tasks
        self._report = report

    async def refresh(self, token: str | None) -> float | None:
        """`Client.refresh`: send ``token`` (or ``get_token``'s); the server's expiry."""
        fresh = token if token is not None else await self._reconnect.resolve_token()
        if not fresh:
            raise ClientError("unauthorized", "no token to refresh with")
        result = await self._host.request({"op": "refresh", "token": fresh})
        self._reconnect.current_token = fresh
        expires = result.get("expires")
        self.schedule(float(expires) if isinstance(expires, int | float) else None)
        return expires if isinstance(expires, int | float) else None

    def schedule(self, expires_at: float | None) -> None:
        """Refresh ``refresh_margin`` before ``expires_at`` (at most halfway there)."""
        self._tasks.cancel("refresh")
        if expires_at is None or self._host.get_token is None:
            return
        left = expires_at - time.time()
        wait = max(1.0, min(left - self._host.refresh_margin, left / 2))

        async def refresh_later() -> None:
            await asyncio.sleep(wait)
            try:
                await self._host.refresh()
            except ClientError as exc:
                self._report(exc)

        self._tasks.spawn(refresh_later(), "refresh")
