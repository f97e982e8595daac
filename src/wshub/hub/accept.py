"""Accepting a connection: the `ConnectContext` of ``hub.connect`` and handshake auth.

`connect_context` builds the send queue and negotiates the subprotocol for
`Hub.connect`; `authenticate` is the library-mode handshake check behind
`Hub.authenticate`. Both are the hub facade's, moved here to keep it small.
"""

from __future__ import annotations

from collections.abc import Iterable

from starlette.exceptions import WebSocketException
from starlette.websockets import WebSocket

from wshub.core.codecs import (
    RAW_JSON,
    Codec,
    negotiate_subprotocol,
    refusal_subprotocol,
    unsupported_reason,
)
from wshub.core.sendqueue import OverflowPolicy, SendQueue
from wshub.hub.connect import ConnectContext
from wshub.hub.connection import ConnectionOwner
from wshub.hub.connection_log import log_refused
from wshub.hub.identity import ANONYMOUS, Authenticator, Identity, websocket_identity
from wshub.hub.lifecycle import Lifecycle
from wshub.hub.stats import HubStats
from wshub.settings import Settings

__all__ = ["authenticate", "connect_context"]


def connect_context(
    owner: ConnectionOwner,
    lifecycle: Lifecycle,
    settings: Settings,
    websocket: WebSocket,
    *,
    identity: Identity | None = None,
    user: str | None = None,
    codec: Codec = RAW_JSON,
    subprotocol: str | None = None,
    subprotocols: Iterable[str] = (),
    heartbeat: bool = False,
    reader: bool = True,
    queue_max_messages: int | None = None,
    queue_max_bytes: int | None = None,
    overflow_policy: OverflowPolicy | None = None,
) -> ConnectContext:
    """Accept a WebSocket and manage it for the duration of an ``async with`` block.

    The block gets the `Connection`. On entry the socket is accepted, registered
    and its writer started; on exit, for any reason, it is flushed, closed and
    removed from every registry. A handler that returns closes with 1000, one that
    raises closes with 1011 (the exception propagates).

    Args:
        owner, lifecycle, settings: the hub's (the connection's owner), its
            lifecycle and its settings.
        websocket: the Starlette/FastAPI WebSocket (accepted already or not).
        identity: who the connection belongs to (from `wshub.hub.identity`); None
            leaves it anonymous until `identify` is called.
        user: shorthand for ``identity=Identity(user)``.
        codec: how frames are encoded; library mode sends data as JSON text.
        subprotocol: the subprotocol to accept with, as it is (no negotiation).
        subprotocols: without ``subprotocol``, the subprotocols this route speaks:
            the first one the client offers is accepted. A client that offered
            subprotocols but none of these is accepted with its first offer (so
            that browsers see the close code) and closed at once with 4002
            "unsupported subprotocol". By default (none), a library-mode route
            accepts clients that offer no subprotocol only.
        heartbeat: send ``{"op":"ping"}`` and expect pongs (protocol endpoint).
        reader: read the socket in a task of its own, for ``conn.iter_*()``.
        queue_max_messages, queue_max_bytes, overflow_policy: per-connection
            overrides of the hub's send-queue settings.
    """
    s = settings
    queue = SendQueue(
        s.queue_max_messages if queue_max_messages is None else queue_max_messages,
        s.queue_max_bytes if queue_max_bytes is None else queue_max_bytes,
        s.overflow_policy if overflow_policy is None else overflow_policy,
    )
    if identity is None and user is not None:
        identity = Identity(user)
    refusal = None
    if subprotocol is None:
        offered = list(websocket.scope.get("subprotocols") or [])
        supported = tuple(subprotocols)
        subprotocol = negotiate_subprotocol(offered, supported)
        if subprotocol is None and offered:
            subprotocol = refusal_subprotocol(offered)
            refusal = unsupported_reason(supported)
    return ConnectContext(
        owner,
        lifecycle,
        websocket,
        identity,
        codec,
        subprotocol,
        refusal,
        heartbeat,
        reader,
        queue,
    )


async def authenticate(
    auth: Authenticator | None, stats: HubStats, websocket: WebSocket
) -> Identity:
    """Authenticate a library-mode endpoint's handshake (behind `Hub.authenticate`).

    ``who: Identity = Depends(hub.authenticate)``, then ``hub.connect(ws,
    identity=who)``. Without an authenticator every connection is anonymous;
    with one, a missing or bad token accepts and closes with 4001 before the
    endpoint runs (see `wshub.hub.identity.websocket_identity`).
    """
    if auth is None:
        return ANONYMOUS
    try:
        return await websocket_identity(auth)(websocket)  # type: ignore[no-any-return]
    except WebSocketException as exc:
        # Refused before `connect`: no Connection, so the close is counted and logged here.
        stats.auth_failed(exc.reason)
        stats.closes[exc.code] += 1
        log_refused(websocket, exc.code, exc.reason)
        raise
