"""Errors and the codes that go on the wire.

Tree::

    WshubError
     +-- ProtocolError        a client frame the server refuses; carries an ErrorCode
     +-- PublishError         data that cannot be published (not JSON-serialisable)
     +-- BrokerUnavailable    the broker cannot be reached; maps to ErrorCode.UNAVAILABLE
"""

from __future__ import annotations

import enum


class CloseCode(enum.IntEnum):
    """WebSocket close codes wshub sends (see DESIGN.md, "Close codes")."""

    NORMAL = 1000
    GOING_AWAY = 1001
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    SERVICE_RESTART = 1012
    TRY_AGAIN_LATER = 1013
    UNAUTHORIZED = 4001
    FORBIDDEN = 4003
    SLOW_CONSUMER = 4008
    HEARTBEAT_TIMEOUT = 4009
    RATE_LIMITED = 4029


class ErrorCode(enum.StrEnum):
    """Codes carried in `{"id":N,"error":{"code":...}}` reply frames."""

    BAD_REQUEST = "bad_request"
    UNAUTHORIZED = "unauthorized"
    FORBIDDEN = "forbidden"
    NOT_FOUND = "not_found"
    TOO_LARGE = "too_large"
    RATE_LIMITED = "rate_limited"
    UNAVAILABLE = "unavailable"
    INTERNAL = "internal"


class WshubError(Exception):
    """Root of every exception wshub raises on purpose."""


class ProtocolError(WshubError):
    """A client frame the server refuses; the connection stays usable.

    Attributes:
        code: the error code sent to the client.
        message: a human-readable explanation, sent to the client as well.
        request_id: the `id` of the offending frame, when it had a usable one.
    """

    def __init__(self, code: ErrorCode, message: str, request_id: int | str | None = None) -> None:
        super().__init__(f"{code.value}: {message}")
        self.code = code
        self.message = message
        self.request_id = request_id


class PublishError(WshubError):
    """Data that cannot be published, for example because JSON cannot represent it."""


class BrokerUnavailable(WshubError):
    """The broker cannot be reached; publishes fail instead of reaching only local clients."""
