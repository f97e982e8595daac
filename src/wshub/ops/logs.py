"""Logging helpers: keep secrets out of every log line.

uvicorn logs each WebSocket handshake with its path *and query string* on the
``uvicorn.error`` logger (``"WebSocket /ws?token=... [accepted]"``), not only on
the access log, so redaction must sit on both, and on wshub's own loggers.

Also: the connection lines (one per connect and per disconnect, on the
``wshub.connections`` logger), `JsonFormatter` and `logging_config`, the
configuration `wshub serve` runs uvicorn with (``WSHUB_LOG_FORMAT=text|json``).
"""

from __future__ import annotations

import datetime
import logging
import re
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import orjson
from starlette.requests import HTTPConnection

if TYPE_CHECKING:
    from wshub.hub.connection import Connection

#: Query parameters whose values never reach a log line.
SECRET_PARAMS = ("token", "access_token", "jwt", "api_key", "apikey")
REDACTED = "[redacted]"
_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access", "wshub")


class RedactingFilter(logging.Filter):
    """Replace secret query-parameter values and Bearer/apikey credentials with ``[redacted]``.

    Args:
        params: query parameter names to redact, in addition to `SECRET_PARAMS`.
    """

    def __init__(self, params: Iterable[str] = ()) -> None:
        super().__init__()
        names = "|".join(re.escape(p) for p in {*SECRET_PARAMS, *params})
        self._query = re.compile(rf"([?&](?:{names})=)[^&\s\"']*", re.IGNORECASE)
        self._header = re.compile(r"\b(bearer|apikey)\s+[^\s\"',]+", re.IGNORECASE)

    def redact(self, text: str) -> str:
        """Return ``text`` with secrets replaced."""
        text = self._query.sub(rf"\g<1>{REDACTED}", text)
        return self._header.sub(rf"\g<1> {REDACTED}", text)

    def filter(self, record: logging.LogRecord) -> bool:
        # Redact the arguments one by one rather than the formatted message: uvicorn's
        # access formatter unpacks record.args and would break on a pre-formatted line.
        if isinstance(record.msg, str):
            record.msg = self.redact(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(self.redact(a) if isinstance(a, str) else a for a in record.args)
        elif isinstance(record.args, dict):
            record.args = {
                k: self.redact(v) if isinstance(v, str) else v for k, v in record.args.items()
            }
        return True


def install_redaction(params: Iterable[str] = ()) -> None:
    """Add a `RedactingFilter` to uvicorn's and wshub's loggers (once per logger)."""
    # A logger's filters don't run for records of its children, so every wshub.*
    # logger (modules create theirs at import) gets one of its own.
    children = [n for n in logging.root.manager.loggerDict if n.startswith("wshub.")]
    for name in (*_LOGGERS, *children):
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactingFilter) for f in logger.filters):
            logger.addFilter(RedactingFilter(params))


# -- connection lines ------------------------------------------------------------------------

#: The logger of the one-line-per-connect and per-disconnect records (level INFO).
CONNECTIONS = logging.getLogger("wshub.connections")


def remote_address(websocket: HTTPConnection) -> str:
    """``host:port`` of the peer as the ASGI server reports it, or ``-``."""
    client = websocket.client
    return "-" if client is None else f"{client.host}:{client.port}"


def log_connected(conn: Connection) -> None:
    """Log that ``conn`` was accepted and registered: id, user, remote address."""
    remote = remote_address(conn.websocket)
    CONNECTIONS.info(
        "connect id=%s user=%s remote=%s",
        conn.id,
        conn.user or "-",
        remote,
        extra={"event": "connect", "connection": conn.id, "user": conn.user, "remote": remote},
    )


def log_identified(conn: Connection) -> None:
    """Log that ``conn``, connected already, authenticated with its first frame."""
    CONNECTIONS.info(
        "identified id=%s user=%s",
        conn.id,
        conn.user or "-",
        extra={"event": "identified", "connection": conn.id, "user": conn.user},
    )


def log_disconnected(conn: Connection) -> None:
    """Log that ``conn`` ended: id, user, remote address, duration, close code and reason."""
    remote = remote_address(conn.websocket)
    duration = round(time.time() - conn.connected_at, 3)
    CONNECTIONS.info(
        "disconnect id=%s user=%s remote=%s duration=%.3fs code=%s reason=%r",
        conn.id,
        conn.user or "-",
        remote,
        duration,
        conn.close_code,
        conn.close_reason,
        extra={
            "event": "disconnect",
            "connection": conn.id,
            "user": conn.user,
            "remote": remote,
            "duration": duration,
            "close_code": conn.close_code,
            "close_reason": conn.close_reason,
        },
    )


def log_refused(websocket: HTTPConnection, code: int, reason: str) -> None:
    """Log a handshake refused before any connection existed (bad credentials)."""
    remote = remote_address(websocket)
    CONNECTIONS.info(
        "refused remote=%s code=%s reason=%r",
        remote,
        code,
        reason,
        extra={"event": "refused", "remote": remote, "close_code": code, "close_reason": reason},
    )


# -- formats ---------------------------------------------------------------------------------

# Attributes every LogRecord has: anything else on a record came from ``extra=``.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "color_message",
    "taskName",
}
_ACCESS_FIELDS = ("client", "method", "path", "http_version", "status")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and the record's extra fields.

    uvicorn's access lines also get ``client``, ``method``, ``path``, ``http_version``
    and ``status``. Every string field, the exception text included, passes through
    `RedactingFilter.redact` last, so a secret can't reach the output whatever logged it.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__()
        self._redactor = RedactingFilter()

    def format(self, record: logging.LogRecord) -> str:
        """Render ``record`` as one line of JSON.

        Returns:
            The JSON text, without a newline.
        """
        entry: dict[str, Any] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        args = record.args
        if record.name == "uvicorn.access" and isinstance(args, tuple) and len(args) == 5:
            entry.update(zip(_ACCESS_FIELDS, args, strict=True))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        # Redact field by field: on the serialized line an escaped quote would be eaten.
        redact = self._redactor.redact
        for key, value in entry.items():
            if isinstance(value, str):
                entry[key] = redact(value)
        return orjson.dumps(entry, default=str).decode()


def logging_config(log_format: str = "text", level: str = "info") -> dict[str, Any]:
    """Build a `logging.config.dictConfig` configuration for uvicorn's and wshub's loggers.

    Text is uvicorn's usual format (wshub's lines carry their logger name); ``json``
    writes one `JsonFormatter` object per line. Every handler redacts secrets.
    `wshub serve` passes this to uvicorn as its ``log_config``; pass it yourself when
    you run uvicorn another way.

    Args:
        log_format: ``text`` or ``json``.
        level: the level of wshub's loggers (uvicorn's follow uvicorn's ``log_level``).

    Returns:
        The configuration dictionary.

    Raises:
        ValueError: an unknown format.
    """
    if log_format not in ("text", "json"):
        raise ValueError(f"unknown log format {log_format!r}: use text or json")
    formatters: dict[str, dict[str, Any]] = {
        "default": {"()": "uvicorn.logging.DefaultFormatter", "fmt": "%(levelprefix)s %(message)s"},
        "access": {
            "()": "uvicorn.logging.AccessFormatter",
            "fmt": '%(levelprefix)s %(client_addr)s - "%(request_line)s" %(status_code)s',
        },
        "wshub": {
            "()": "uvicorn.logging.DefaultFormatter",
            "fmt": "%(levelprefix)s %(name)s: %(message)s",
        },
    }
    if log_format == "json":
        formatters = {name: {"()": "wshub.ops.logs.JsonFormatter"} for name in formatters}
    streams = {
        "default": "ext://sys.stderr",
        "access": "ext://sys.stdout",
        "wshub": "ext://sys.stderr",
    }
    handlers = {
        name: {
            "class": "logging.StreamHandler",
            "formatter": name,
            "filters": ["redact"],
            "stream": stream,
        }
        for name, stream in streams.items()
    }
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"redact": {"()": "wshub.ops.logs.RedactingFilter"}},
        "formatters": formatters,
        "handlers": handlers,
        "loggers": {
            "uvicorn": {"handlers": ["default"], "level": "INFO", "propagate": False},
            "uvicorn.error": {"level": "INFO"},
            "uvicorn.access": {"handlers": ["access"], "level": "INFO", "propagate": False},
            "wshub": {"handlers": ["wshub"], "level": level.upper(), "propagate": False},
        },
    }
