"""Errors and the codes that go on the wire.

Tree::

    WshubError
     +-- ProtocolError        a client frame the server refuses; carries an ErrorCode
     +-- PublishError         data that cannot be published (not JSON-serialisable)
     +-- BrokerUnavailable    the broker cannot be reached; maps to ErrorCode.UNAVAILABLE
          +-- PublishTimeout  a publish was sent but not answered in time; ErrorCode.TIMEOUT
     +-- RPCError             raised by an RPC handler or connect hook: its code and message
"""

from __future__ import annotations

import enum
import re


class CloseCode(enum.IntEnum):
    """WebSocket close codes wshub sends (see docs/protocol.md, "Close codes")."""

    NORMAL = 1000
    GOING_AWAY = 1001
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    SERVICE_RESTART = 1012
    TRY_AGAIN_LATER = 1013
    UNAUTHORIZED = 4001
    UNSUPPORTED_SUBPROTOCOL = 4002
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
    TIMEOUT = "timeout"
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
    """The broker cannot be reached; publishes fail instead of reaching only local clients.

    Raised by a publish, it means the publication was certainly NOT published: it never
    left this process (not connected, connection refused). Its subclass `PublishTimeout`
    is the exception: catch that first wherever the difference matters.
    """


class PublishTimeout(BrokerUnavailable):
    """A publish was written to the broker but no answer came in time (or the connection
    broke after writing): it may or may not have been published (wire code ``timeout``).

    Retry it with the same idempotency key to publish it at most once (docs/guarantees.md).
    A subclass of `BrokerUnavailable` so that code which only knows that one still treats
    it as a failure.
    """


#: What an `RPCError` code may be: a short lowercase identifier.
RPC_CODE_PATTERN = re.compile(r"[a-z][a-z0-9_]{0,31}")


class RPCError(WshubError):
    """Raised by an RPC handler (or an ``on_connect`` hook) to refuse with a code and message.

    The client receives ``{"id":N,"error":{"code":code,"message":message}}``; raised by
    an ``on_connect`` hook, the connection is closed with 4003 and ``message`` as reason.

    Args:
        code: a short lowercase identifier (``^[a-z][a-z0-9_]{0,31}$``), an `ErrorCode`
            or the application's own (``"out_of_stock"``).
        message: a human-readable explanation, sent to the client.

    Raises:
        ValueError: ``code`` is not such an identifier.
    """

    def __init__(self, code: str, message: str = "") -> None:
        code = str(code)
        if not RPC_CODE_PATTERN.fullmatch(code):
            raise ValueError(f"RPC error code {code!r} must match ^[a-z][a-z0-9_]{{0,31}}$")
        super().__init__(f"{code}: {message}" if message else code)
        self.code = code
        self.message = message
