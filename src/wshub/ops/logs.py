"""Log formats: `JsonFormatter` and `logging_config`, the configuration `wshub serve`
runs uvicorn with (``WSHUB_LOG_FORMAT=text|json``), redaction included.

Redaction itself lives in `wshub.core.redaction`, the connection lines in
`wshub.hub.connection_log`; both are re-exported here for the log configuration.
"""

from __future__ import annotations

import datetime
import logging
from typing import Any

import orjson
from uvicorn.logging import TRACE_LOG_LEVEL

from wshub.core.redaction import RedactingFilter

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
        if record.exc_text:
            entry["exception"] = record.exc_text
        elif record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = record.stack_info
        # Redact field by field (nested values and bytes too): on the serialized line an
        # escaped quote would be eaten. Objects orjson can't encode go through str, redacted.
        scrub, redact = self._redactor.scrub, self._redactor.redact
        for key, value in entry.items():
            entry[key] = scrub(value)
        return orjson.dumps(entry, default=lambda value: redact(str(value))).decode()


def logging_config(log_format: str = "text", level: str = "info") -> dict[str, Any]:
    """Build a `logging.config.dictConfig` configuration for uvicorn's and wshub's loggers.

    Text is uvicorn's usual format (wshub's lines carry their logger name); ``json``
    writes one `JsonFormatter` object per line. Every handler redacts secrets, and
    every logger that can log a handshake has one: uvicorn's (``uvicorn.asgi``'s
    trace dumps included, through ``uvicorn``), websockets' and wshub's.
    `wshub serve` passes this to uvicorn as its ``log_config``; pass it yourself when
    you run uvicorn another way.

    Args:
        log_format: ``text`` or ``json``.
        level: the level of wshub's and websockets' loggers (uvicorn's follow uvicorn's
            ``log_level``); ``trace`` is uvicorn's level 5, below debug.

    Returns:
        The configuration dictionary.

    Raises:
        ValueError: an unknown format.
    """
    if log_format not in ("text", "json"):
        raise ValueError(f"unknown log format {log_format!r}: use text or json")
    # uvicorn names its trace level when it configures logging; a config applied
    # another way may come first.
    logging.addLevelName(TRACE_LOG_LEVEL, "TRACE")
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
        "filters": {"redact": {"()": "wshub.core.redaction.RedactingFilter"}},
        "formatters": formatters,
        "handlers": handlers,
        "loggers": {
            "uvicorn": {"handlers": ["default"], "level": "INFO", "propagate": False},
            "uvicorn.error": {"level": "INFO"},
            "uvicorn.access": {"handlers": ["access"], "level": "INFO", "propagate": False},
            "wshub": {"handlers": ["wshub"], "level": level.upper(), "propagate": False},
            # uvicorn hands its own logger to websockets; a websockets client or another
            # server implementation logs here, headers included at debug level.
            "websockets": {"handlers": ["wshub"], "level": level.upper(), "propagate": False},
        },
    }
