"""A deadline for HTTP request headers: uvicorn's HTTP protocols with a handshake timeout.

uvicorn times out only an idle keep-alive connection (``timeout_keep_alive``, armed
after a response). A fresh connection that sends nothing, or a request whose request
line and headers never finish (slowloris), holds its socket and its protocol object
for as long as the peer likes: neither httptools' nor h11's protocol has a timer
before the headers are complete (h11 only bounds their size).

The protocols here arm one timer per connection when it is accepted and whenever a
new request starts arriving; the timer is cancelled once the request's headers are
complete (for a WebSocket, the upgrade request: the handshake proper then runs at
once). When it fires first, the connection is closed. With httptools the same
deadline also bounds a body that is discarded because the response went out before
it was read (an early 401 or 413): closing at once instead would make the kernel
reset the connection, and most clients would never see the response. Nothing else
changes: bodies, responses, keep-alive and the WebSocket protocol are uvicorn's own.

The deadline comes from ``config.handshake_timeout`` (see `HubConfig`; a plain
``uvicorn.Config`` gets `DEFAULT_HANDSHAKE_TIMEOUT`). `wshub.server.uvicorn_config`
builds a `HubConfig` and swaps uvicorn's ``httptools``/``h11``/``auto`` for these.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

logger = logging.getLogger("wshub.server")

#: Seconds a connection has to complete its request headers when the config names none.
DEFAULT_HANDSHAKE_TIMEOUT = 10.0


class HubConfig(uvicorn.Config):
    """A uvicorn config with a ``handshake_timeout`` (seconds; None: no deadline)."""

    def __init__(
        self,
        app: Any,
        *,
        handshake_timeout: float | None = DEFAULT_HANDSHAKE_TIMEOUT,
        **kwargs: Any,
    ) -> None:
        super().__init__(app, **kwargs)
        self.handshake_timeout = handshake_timeout


class _HandshakeDeadline:
    """The timer of one connection; the protocols below own one each."""

    def __init__(self, loop: asyncio.AbstractEventLoop, config: uvicorn.Config) -> None:
        self.loop = loop
        self.timeout: float | None = getattr(config, "handshake_timeout", DEFAULT_HANDSHAKE_TIMEOUT)
        self.timer: asyncio.TimerHandle | None = None
        self.transport: asyncio.BaseTransport | None = None

    def arm(self, transport: asyncio.BaseTransport) -> None:
        """Start the deadline unless it runs already."""
        self.transport = transport
        if self.timer is None and self.timeout is not None and not transport.is_closing():
            self.timer = self.loop.call_later(self.timeout, self._expired)

    def disarm(self) -> None:
        """Headers complete (or connection gone): no deadline."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _expired(self) -> None:
        self.timer = None
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        peer = transport.get_extra_info("peername")
        logger.debug("closing %s: no complete request headers within %ss", peer, self.timeout)
        transport.close()


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a deadline for each request's headers."""

    def __init__(self, config: uvicorn.Config, *args: Any, **kwargs: Any) -> None:
        super().__init__(config, *args, **kwargs)
        self._deadline = _HandshakeDeadline(self.loop, config)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._deadline.arm(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self._deadline.disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        # Bytes after a response, while the keep-alive timer runs: a next request
        # (or stray CRLFs, which start none) begins, and uvicorn cancels its timer.
        if self.timeout_keep_alive_task is not None:
            self._deadline.arm(self.transport)
        super().data_received(data)

    def on_message_begin(self) -> None:
        self._deadline.arm(self.transport)
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        self._deadline.disarm()
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        # A response sent before its request's body was all received (a refusal such
        # as 401 or 413): uvicorn reads and discards the rest. The rest of the body and
        # the next request's headers get one deadline, or a client could stream a
        # body that is never read for as long as it likes.
        refused_early = not self.pipeline and self.cycle is not None and self.cycle.more_body
        super().on_response_complete()
        if refused_early:
            self._deadline.arm(self.transport)


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline for each request's headers."""

    def __init__(self, config: uvicorn.Config, *args: Any, **kwargs: Any) -> None:
        super().__init__(config, *args, **kwargs)
        self._deadline = _HandshakeDeadline(self.loop, config)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._deadline.arm(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self._deadline.disarm()
        super().connection_lost(exc)

    def handle_events(self) -> None:
        super().handle_events()
        if self.conn.their_state is h11.IDLE:
            # Waiting for a request line: a fresh connection keeps the deadline armed
            # on accept; between requests, buffered bytes mean a request has begun
            # (none: uvicorn's keep-alive timer covers the silence).
            if self.conn.trailing_data[0]:
                self._deadline.arm(self.transport)
        else:
            self._deadline.disarm()


def guarded_protocol(http: Any) -> Any:
    """The guarded protocol class for uvicorn's ``http`` option, or ``http`` unchanged.

    ``"httptools"``, ``"h11"`` and ``"auto"`` (httptools, a dependency) are swapped;
    other names and classes are left alone (they get no handshake deadline).
    """
    if http in ("httptools", "auto"):
        return GuardedHttpToolsProtocol
    if http == "h11":
        return GuardedH11Protocol
    return http
