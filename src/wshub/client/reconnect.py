"""Reconnecting: backoff with full jitter, what a close code allows, and the reconnect loop.

Connections that end are reopened with exponential backoff and full jitter. After
4001/4003 only with a different token from ``get_token``; a static token stops the
client. Consecutive 4008 (slow consumer) closes grow the delay even though each
connection was welcomed (`slow_consumer_delay`), until one stays up ``healthy_after``
seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Literal, Protocol

from wshub.client.models import ClientError, ClientState, StateChange, TokenSource

logger = logging.getLogger("wshub.client")

Policy = Literal["stop", "reauth", "later", "retry"]
#: How a connection ended: close code, reason, and whether ``welcome`` had come.
Outcome = tuple[int, str, bool]


def backoff_delay(
    attempt: int, base: float, cap: float, rand: Callable[[], float] = random.random
) -> float:
    """Exponential backoff with full jitter: uniform in [0, min(cap, base * 2**attempt))."""
    ceiling: float = min(cap, base * 2.0 ** min(attempt, 31))
    return rand() * ceiling


def slow_consumer_delay(
    streak: int, base: float, cap: float, rand: Callable[[], float] = random.random
) -> float:
    """The wait after the ``streak``-th 4008 close in a row: equal jitter, so never near 0.

    Uniform in [c/2, c) with c = min(cap, base * 2**(streak - 1)): 0.25-0.5 s, 0.5-1 s,
    1-2 s, ... for base 0.5 s. A server that keeps closing with 4008 is thus reconnected
    to a few times, not a hundred times in 10 s.
    """
    ceiling: float = min(cap, base * 2.0 ** min(max(streak - 1, 0), 31))
    return ceiling / 2 + rand() * ceiling / 2


def reconnect_policy(code: int) -> Policy:
    """After a close: ``stop`` (4002: no subprotocol of ours; retrying cannot help),
    ``reauth`` (4001/4003: only with a new token), ``later`` (1013/4029) or ``retry``."""
    if code == 4002:
        return "stop"
    if code in (4001, 4003):
        return "reauth"
    if code in (1013, 4029):
        return "later"
    return "retry"


class ReconnectHost(Protocol):
    """The client state a `ReconnectLoop` reads (token, backoff) and sets (``last_close``)."""

    last_close: tuple[int, str] | None

    @property
    def token(self) -> str | None: ...
    @property
    def get_token(self) -> TokenSource | None: ...
    @property
    def backoff_base(self) -> float: ...
    @property
    def backoff_cap(self) -> float: ...
    @property
    def healthy_after(self) -> float: ...


#: The close code of a slow consumer (its send queue overflowed).
SLOW_CONSUMER = 4008


class ReconnectLoop:
    """Keeps the client connected until halted: one connection after another, with backoff.

    It holds the token policy's state: the token in use, and the one the server
    refused, which is never sent again.

    Args:
        client: read for ``token``, ``get_token`` and the backoff settings; its
            ``last_close`` is set after every connection.
        connect: opens and serves one connection with the given token until it ends;
            returns how it ended, or None when the client was stopped instead.
        set_state: announces a state change.
        stop: stops the client for good after a refused token (close code, reason).
        report: hands an error nobody else sees to ``on_error``.
    """

    def __init__(
        self,
        client: ReconnectHost,
        *,
        connect: Callable[[str | None], Awaitable[Outcome | None]],
        set_state: Callable[[StateChange], None],
        stop: Callable[[int, str], None],
        report: Callable[[ClientError], None],
    ) -> None:
        self._client = client
        self._connect, self._set_state = connect, set_state
        self._stop, self._report = stop, report
        self.wanted = False
        self.wake = asyncio.Event()
        self.rejected: tuple[str | None, int, str] | None = None
        self.current_token: str | None = None
        #: 4008 closes in a row of connections that did not stay up ``healthy_after`` s.
        self.slow_streak = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start the loop in a task of its own."""
        self.wanted = True
        self.wake.clear()
        self._task = asyncio.create_task(self._run(), name="wshub-client")

    def halt(self) -> None:
        """Stop reconnecting, and cut short a backoff wait."""
        self.wanted = False
        self.wake.set()

    async def cancel(self) -> None:
        """Cancel the loop's task and wait for it to end."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def resolve_token(self) -> str | None:
        """The token for the next connection or refresh: ``get_token``'s, else ``token``.

        Raises:
            Exception: whatever ``get_token`` raises.
        """
        client = self._client
        if client.get_token is None:
            return client.token
        token = client.get_token(self.rejected is not None)
        if inspect.isawaitable(token):
            token = await token
        return token

    async def _run(self) -> None:
        client = self._client
        attempt = 0
        clock = asyncio.get_running_loop().time
        while self.wanted:
            self._set_state(StateChange(ClientState.CONNECTING, attempt=attempt))
            started = clock()
            outcome = await self._attempt()
            if outcome is None:
                return  # stopped
            code, reason, welcomed = outcome
            client.last_close = (code, reason)
            attempt = 0 if welcomed else attempt
            # Repeated 4008 (say, a reply the queue cannot hold): back off more each time,
            # until a connection stays up healthy_after seconds or ends another way.
            healthy = welcomed and clock() - started >= client.healthy_after
            self.slow_streak = self.slow_streak + 1 if code == SLOW_CONSUMER and not healthy else 0
            if not self.wanted:
                break
            policy = reconnect_policy(code)
            if policy == "stop":
                self._stop(code, reason)
                return
            if policy == "reauth":
                self.rejected = (self.current_token, code, reason)
                if client.get_token is None:
                    self._stop(code, reason)
                    return
            delay = backoff_delay(attempt, client.backoff_base, client.backoff_cap)
            if policy == "later":
                delay = max(delay, client.backoff_base)
            if self.slow_streak:
                attempt = max(attempt, self.slow_streak)
                delay = slow_consumer_delay(
                    self.slow_streak, client.backoff_base, client.backoff_cap
                )
            attempt += 1
            change = StateChange(ClientState.DISCONNECTED, code, reason, True, delay, attempt)
            self._set_state(change)
            logger.debug("wshub client: closed %s %s; reconnecting in %.2f s", code, reason, delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), delay)

    async def _attempt(self) -> Outcome | None:
        """One connection, from token to close; None when the client stopped instead."""
        try:
            token = await self.resolve_token()
        except Exception as exc:
            self._report(ClientError("unauthorized", f"get_token failed: {exc!r}"))
            return 1006, "get_token failed", False
        if self.rejected is not None and token == self.rejected[0]:
            self._stop(self.rejected[1], self.rejected[2])
            return None
        self.current_token = token
        return await self._connect(token)
