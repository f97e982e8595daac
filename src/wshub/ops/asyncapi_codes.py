"""What each error and close code of the protocol endpoint means, for the AsyncAPI document.

A test checks these tables cover every member of `ErrorCode` and `CloseCode`.
"""

from __future__ import annotations

from wshub.core.errors import CloseCode, ErrorCode

#: What each error code a WebSocket reply can carry means (`too_large` is HTTP/SSE only).
ERROR_MEANINGS: dict[ErrorCode, str] = {
    ErrorCode.BAD_REQUEST: "malformed frame, unknown op, invalid channel, limit reached",
    ErrorCode.UNAUTHORIZED: "bad credentials in refresh",
    ErrorCode.FORBIDDEN: "the channel's rules or a permission hook refused",
    ErrorCode.NOT_FOUND: "rpc: no method by that name",
    ErrorCode.RATE_LIMITED: "too many frames, or too many rpc calls in flight",
    ErrorCode.UNAVAILABLE: "the broker is down; nothing was published",
    ErrorCode.INTERNAL: "a server bug; the connection stays usable",
    ErrorCode.TIMEOUT: "the broker did not answer in time; the publication may have gone out",
}

#: Codes wshub has that the protocol endpoint never sends.
NOT_SENT: dict[ErrorCode | CloseCode, str] = {
    ErrorCode.TOO_LARGE: "HTTP API and SSE only",
    CloseCode.POLICY_VIOLATION: "library-mode endpoints only",
}
#: An RPC handler's own error code (`RPCError`).
APP_ERROR_CODE = "^[a-z][a-z0-9_]{0,31}$"

#: When the protocol endpoint closes with each code.
CLOSE_MEANINGS: dict[CloseCode, str] = {
    CloseCode.NORMAL: "normal close",
    CloseCode.GOING_AWAY: "server shutting down (graceful drain); reconnect",
    CloseCode.MESSAGE_TOO_BIG: "message larger than the limit",
    CloseCode.INTERNAL_ERROR: "internal error",
    CloseCode.SERVICE_RESTART: "service restart (sent by uvicorn); treat like 1001",
    CloseCode.TRY_AGAIN_LATER: "connection limit reached; retry later",
    CloseCode.UNAUTHORIZED: "missing, invalid or expired token; don't retry with it",
    CloseCode.UNSUPPORTED_SUBPROTOCOL: (
        "none of the offered subprotocols is supported (the reason lists those that are); "
        "don't retry"
    ),
    CloseCode.FORBIDDEN: "origin not allowed, or an on_connect hook refused (the reason says)",
    CloseCode.SLOW_CONSUMER: "send queue overflowed; reconnect and recover from history",
    CloseCode.HEARTBEAT_TIMEOUT: "no pong in time",
    CloseCode.RATE_LIMITED: "too many frames",
}
