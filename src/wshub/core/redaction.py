"""Redaction: keep secrets out of every log line.

uvicorn logs each WebSocket handshake with its path *and query string* on the
``uvicorn.error`` logger (``"WebSocket /ws?token=... [accepted]"``), not only on
the access log; at debug level its WebSocket implementation logs every request
header (``< cookie: wshub_token=...``) and frame (``< TEXT '{"op":"connect",
"token":...}'``), and at trace level ``uvicorn.asgi`` dumps each ASGI scope
(``'query_string': b'token=...'``). So redaction sits on all of those loggers and
on wshub's own, and looks at:

- query parameters, by their *percent-decoded* name (Starlette decodes it, so
  ``?tok%65n=`` is a ``token``), case-insensitively, in text and bytes;
- the headers that can carry credentials (`SECRET_HEADERS`): in ``name: value``
  lines, in ``(b'cookie', b'...')`` pairs and ``{'cookie': ...}`` entries, and in
  a logger's ``"%s: %s"`` arguments; every cookie value is redacted;
- JSON or dict entries named like a secret parameter (``"token": "..."``);
- anything shaped like a JWT, and ``Bearer``/``apikey`` credentials;
- inside log arguments of any type: strings, bytes, dicts, lists, tuples (nested),
  and other objects through their ``str``/``repr``. Copies are redacted: the
  caller's objects (an ASGI scope, say) are never changed.

Pure text processing on `logging` records: no event loop, no web framework.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from urllib.parse import unquote_plus

#: Query parameters whose values never reach a log line.
SECRET_PARAMS = ("token", "access_token", "jwt", "api_key", "apikey")
#: Cookies whose values are redacted wherever they show as ``name=value``
#: (in a ``cookie`` header every value is).
SECRET_COOKIES = ("wshub_token",)
#: Headers whose values never reach a log line (``authorization`` keeps its scheme).
SECRET_HEADERS = frozenset(
    {"authorization", "proxy-authorization", "cookie", "set-cookie", "sec-websocket-protocol"}
)
REDACTED = "[redacted]"
_LOGGERS = (
    "uvicorn",
    "uvicorn.error",
    "uvicorn.access",
    "uvicorn.asgi",
    "websockets",
    "websockets.server",
    "websockets.client",
    "websockets.protocol",
    "wshub",
)
_MAX_DEPTH = 8

# A query parameter: a name (which may be percent-encoded) at a name boundary, then
# its value, bare (up to & or a quote) or quoted (``token='...'`` in a repr).
_PARAM = re.compile(r"(?<![A-Za-z0-9_.~%+-])([A-Za-z0-9_.~%+-]+)=((['\"])[^'\"\s]+\3|[^&\s\"'#]*)")
# A header line, ``Name: value`` (value to the end of the line or a quote).
_HEADER_LINE = re.compile(
    r"(?<![\w-])(proxy-authorization|authorization|set-cookie|cookie|sec-websocket-protocol)"
    r"([ \t]*:[ \t]*)([^\r\n\"']*)",
    re.IGNORECASE,
)
# A header inside a repr: ``'cookie': 'value'`` (a dict) or ``(b'cookie', b'value')``.
_HEADER_REPR = re.compile(
    r"(b?(['\"])(proxy-authorization|authorization|set-cookie|cookie|sec-websocket-protocol)\2"
    r"\s*[:,]\s*b?)(['\"])((?:(?!\4)[^\\]|\\.)*)\4",
    re.IGNORECASE,
)
# Anything shaped like a JWT (its header is base64url JSON, so it starts with ``eyJ``).
_JWT = re.compile(
    r"(?<![A-Za-z0-9_-])eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{2,}(?:\.[A-Za-z0-9_-]*){1,3}"
)
_AUTHORIZATION = re.compile(r"(\s*)(?:([\w-]+)\s+)?([^\s,]+)(.*)", re.DOTALL)
_CREDENTIAL = re.compile(r"\b(bearer|apikey)\s+(?!\[redacted\])[^\s\"',]+", re.IGNORECASE)
# printf-style placeholders: in a message template, ``token=%s`` is no secret.
_PLACEHOLDER = re.compile(
    r"(?:%(?:\(\w+\))?[-#0 +]*(?:\d+|\*)?(?:\.(?:\d+|\*))?[diouxXeEfFgGcrsa%])+"
)


def _name_of(raw: str) -> str:
    """A query parameter or key name as the app sees it: percent- and ``+``-decoded, lowered."""
    if "%" in raw or "+" in raw:
        for _ in range(3):  # decoded until stable, so double encoding is no way around
            decoded = unquote_plus(raw)
            if decoded == raw:
                break
            raw = decoded
    return raw.strip().lower()


def _header_name(value: object) -> str | None:
    """``value`` lowered when it is a str or bytes naming a secret header, else None."""
    if isinstance(value, bytes | bytearray):
        if len(value) > 32:
            return None
        value = bytes(value).decode("latin-1")
    if isinstance(value, str) and len(value) <= 32:
        name = value.strip().lower()
        return name if name in SECRET_HEADERS else None
    return None


def redact_header(name: str, value: str) -> str:
    """The value of header ``name`` with its credentials replaced.

    ``authorization`` keeps its scheme (``Bearer [redacted]``), cookies keep their
    names (``a=[redacted]; wshub_token=[redacted]``), anything else goes entirely.
    """
    if not value.strip() or _PLACEHOLDER.fullmatch(value.strip()):
        return value
    name = name.lower()
    if name in ("cookie", "set-cookie"):
        parts = []
        for part in value.split(";"):
            key, eq, _ = part.partition("=")
            parts.append(f"{key}={REDACTED}" if eq else REDACTED if part.strip() else part)
        return ";".join(parts)
    if name.endswith("authorization"):
        # The scheme stays; what follows a comma is left to the other patterns.
        match = _AUTHORIZATION.match(value)
        if match is None:
            return REDACTED
        lead, scheme, rest = match[1], match[2], match[4]
        return f"{lead}{scheme} {REDACTED}{rest}" if scheme else f"{lead}{REDACTED}{rest}"
    return REDACTED


class _Redacted:
    """Stands in for a log argument whose ``str``/``repr`` held a secret."""

    __slots__ = ("_repr", "_str")

    def __init__(self, text: str, representation: str) -> None:
        self._str, self._repr = text, representation

    def __str__(self) -> str:
        return self._str

    def __repr__(self) -> str:
        return self._repr


class RedactingFilter(logging.Filter):
    """Replace secrets in log records with ``[redacted]`` (see the module docstring).

    Args:
        params: query parameter (and JSON key) names to redact, in addition to
            `SECRET_PARAMS` and `SECRET_COOKIES`.
    """

    def __init__(self, params: Iterable[str] = ()) -> None:
        super().__init__()
        self._names = frozenset(n.lower() for n in (*SECRET_PARAMS, *SECRET_COOKIES, *params))
        names = "|".join(re.escape(n) for n in sorted(self._names, key=len, reverse=True))
        # ``"token": "..."`` in JSON or a dict repr, quotes possibly escaped.
        self._key = re.compile(
            rf"((\\?['\"])(?:{names})\2\s*:\s*b?\\?['\"])([^'\"\\]*)", re.IGNORECASE
        )

    # -- text ----------------------------------------------------------------------------------

    def redact(self, text: str) -> str:
        """Return ``text`` with secrets replaced (``text`` itself when it held none)."""
        if len(text) < 8:
            return text
        original = text
        if ":" in text:
            lowered = text.lower()
            if "cookie" in lowered or "authorization" in lowered or "protocol" in lowered:
                text = _HEADER_LINE.sub(_header_line, text)
                if "'" in text or '"' in text:
                    text = _HEADER_REPR.sub(_header_repr, text)
            if any(name in lowered for name in self._names):
                text = self._key.sub(self._json_value, text)
        if "=" in text:
            text = _PARAM.sub(self._param, text)
        if "eyJ" in text:
            text = _JWT.sub(REDACTED, text)
        if " " in text:
            text = _CREDENTIAL.sub(_credential, text)
        return original if text == original else text

    def _param(self, match: re.Match[str]) -> str:
        value = match[2]
        if value.startswith(REDACTED) or _name_of(match[1]) not in self._names:
            return match[0]
        if value and _PLACEHOLDER.fullmatch(value):
            return match[0]
        quote = match[3] or ""
        return f"{match[1]}={quote}{REDACTED}{quote}"

    @staticmethod
    def _json_value(match: re.Match[str]) -> str:
        value = match[3]
        if not value or value.startswith(REDACTED) or _PLACEHOLDER.fullmatch(value):
            return match[0]
        return match[1] + REDACTED

    # -- values --------------------------------------------------------------------------------

    def scrub(self, value: Any, _depth: int = 0) -> Any:
        """Return ``value`` with secrets replaced: ``value`` itself when it held none.

        Strings and bytes are redacted as text; dicts, lists and tuples are copied
        with their items scrubbed (a secret header's or parameter's entry as a whole);
        other objects are replaced by a stand-in with redacted ``str`` and ``repr``
        when those held a secret. The original is never modified.
        """
        if value is None or isinstance(value, int | float):
            return value
        if isinstance(value, str):
            return self.redact(value)
        if isinstance(value, bytes | bytearray):
            text = bytes(value).decode("latin-1")
            redacted = self.redact(text)
            return value if redacted == text else type(value)(redacted.encode("latin-1"))
        if _depth >= _MAX_DEPTH:
            return self._opaque(value)
        if isinstance(value, dict):
            return self._scrub_dict(value, _depth)
        if isinstance(value, list | tuple):
            return self._scrub_sequence(value, _depth)
        if isinstance(value, set | frozenset):
            items = [self.scrub(item, _depth + 1) for item in value]
            if all(a is b for a, b in zip(items, value, strict=True)):
                return value
            return type(value)(items)
        return self._opaque(value)

    def _scrub_dict(self, value: Mapping[Any, Any], depth: int) -> Any:
        out: dict[Any, Any] = {}
        changed = False
        for key, item in value.items():
            new = self._entry(key, item, depth)
            changed = changed or new is not item
            out[key] = new
        return out if changed else value

    def _entry(self, key: object, item: Any, depth: int) -> Any:
        """The value of the entry ``key: item`` (of a dict, or a ``(key, item)`` pair)."""
        header = _header_name(key)
        if header is not None:
            redacted = _redact_as(item, lambda text: redact_header(header, text))
            return self.scrub(item, depth + 1) if redacted is None else redacted
        if isinstance(key, str | bytes) and len(key) <= 32:
            name = key.decode("latin-1") if isinstance(key, bytes) else key
            if _name_of(name) in self._names:
                whole = _redact_as(item, lambda text: REDACTED)
                if whole is not None:
                    return whole
        return self.scrub(item, depth + 1)

    def _scrub_sequence(self, value: list[Any] | tuple[Any, ...], depth: int) -> Any:
        if len(value) == 2 and _header_name(value[0]) is not None:
            # ("cookie", "wshub_token=..."): a header pair, or a logger's "%s: %s" arguments.
            items = [value[0], self._entry(value[0], value[1], depth)]
        else:
            items = [self.scrub(item, depth + 1) for item in value]
        if all(a is b for a, b in zip(items, value, strict=True)):
            return value
        if isinstance(value, list):
            return items
        if hasattr(value, "_fields"):  # a named tuple
            return type(value)(*items)
        return tuple(items)

    def _opaque(self, value: object) -> object:
        try:
            text, representation = str(value), repr(value)
        except Exception:
            return value
        safe_text, safe_repr = self.redact(text), self.redact(representation)
        if safe_text == text and safe_repr == representation:
            return value
        return _Redacted(safe_text, safe_repr)

    # -- records -------------------------------------------------------------------------------

    def filter(self, record: logging.LogRecord) -> bool:
        # Once per record and filter: the same filter sits on loggers and on handlers.
        if record.__dict__.get("_wshub_redacted") == self._names:
            return True
        record.__dict__["_wshub_redacted"] = self._names
        try:
            self._redact_record(record)
        except Exception:
            # A logger's filter that raises would raise in the code that logged; fail
            # closed instead: the formatted line, redacted as text, or nothing of it.
            try:
                record.msg, record.args = self.redact(record.getMessage()), None
            except Exception:
                record.msg, record.args = "[log record withheld: redaction failed]", None
            record.exc_info = record.exc_text = record.stack_info = None
            record.__dict__.pop("color_message", None)
        return True

    def _redact_record(self, record: logging.LogRecord) -> None:
        # Redact the arguments one by one rather than the formatted message: uvicorn's
        # access formatter unpacks record.args and would break on a pre-formatted line.
        record.msg = self.scrub(record.msg)
        args = record.args
        if args:
            if isinstance(args, tuple):
                record.args = self._scrub_sequence(args, 0)
            elif isinstance(args, Mapping):
                record.args = self._scrub_dict(args, 0)
        color = record.__dict__.get("color_message")
        if isinstance(color, str):
            record.__dict__["color_message"] = self.redact(color)
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        if record.stack_info:
            record.stack_info = self.redact(record.stack_info)


def _header_line(match: re.Match[str]) -> str:
    return match[1] + match[2] + redact_header(match[1], match[3])


def _header_repr(match: re.Match[str]) -> str:
    value = match[5]
    return f"{match[1]}{match[4]}{redact_header(match[3], value)}{match[4]}"


def _credential(match: re.Match[str]) -> str:
    return f"{match[1]} {REDACTED}"


def _redact_as(item: Any, redact: Callable[[str], str]) -> Any:
    """``item`` (a str or bytes) passed through ``redact``; None for other types."""
    if isinstance(item, str):
        return redact(item)
    if isinstance(item, bytes | bytearray):
        return type(item)(redact(bytes(item).decode("latin-1")).encode("latin-1"))
    return None


def install_redaction(params: Iterable[str] = ()) -> None:
    """Add a `RedactingFilter` to uvicorn's, websockets' and wshub's loggers (once per logger)."""
    # A logger's filters don't run for records of its children, so every wshub.* and
    # websockets.* logger (modules create theirs at import) gets one of its own.
    prefixes = ("wshub.", "uvicorn.", "websockets.")
    children = [n for n in logging.root.manager.loggerDict if n.startswith(prefixes)]
    for name in dict.fromkeys((*_LOGGERS, *children)):
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactingFilter) for f in logger.filters):
            logger.addFilter(RedactingFilter(params))
