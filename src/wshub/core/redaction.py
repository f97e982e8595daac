"""Redaction: keep secrets out of every log line.

uvicorn logs each WebSocket handshake with its path *and query string* on the
``uvicorn.error`` logger (``"WebSocket /ws?token=... [accepted]"``), not only on
the access log, so redaction must sit on both, and on wshub's own loggers. Pure
text processing on `logging` records: no event loop, no web framework.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable

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
