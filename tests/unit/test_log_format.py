"""JsonFormatter and logging_config: one JSON object per line, extras kept, secrets out."""

from __future__ import annotations

import logging
import sys

import orjson
import pytest

from wshub.core.redaction import REDACTED, RedactingFilter
from wshub.ops.logs import JsonFormatter, logging_config

TOKEN = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhZGEifQ.c2lnbmF0dXJl"


def record(msg: str, args: object = None, name: str = "wshub.test") -> logging.LogRecord:
    """A log record as a logger builds it."""
    return logging.LogRecord(name, logging.INFO, __file__, 1, msg, args, None)  # type: ignore[arg-type]


def test_json_line_has_the_standard_fields_and_the_extras() -> None:
    """time, level, logger, message, then whatever ``extra=`` added."""
    rec = record("connect id=%s", ("abc",))
    rec.connection, rec.user = "abc", "ada"
    line = orjson.loads(JsonFormatter().format(rec))
    assert line["message"] == "connect id=abc" and line["level"] == "info"
    assert line["logger"] == "wshub.test" and line["time"].endswith("+00:00")
    assert (line["connection"], line["user"]) == ("abc", "ada")


def test_access_lines_get_their_fields() -> None:
    """uvicorn's access record is split into client, method, path, http_version, status."""
    args = ("127.0.0.1:5000", "POST", "/api/publish", "1.1", 200)
    rec = record('%s - "%s %s HTTP/%s" %d', args, name="uvicorn.access")
    line = orjson.loads(JsonFormatter().format(rec))
    assert (line["method"], line["path"], line["status"]) == ("POST", "/api/publish", 200)


def test_secrets_are_redacted_in_message_extras_and_exceptions() -> None:
    """A token in the message, an extra field or an exception never reaches the line."""
    rec = record(f"GET /ws?token={TOKEN}")
    rec.header = f"Authorization: apikey {TOKEN}"
    try:
        raise RuntimeError(f"Bearer {TOKEN}")
    except RuntimeError:
        rec.exc_info = sys.exc_info()
    text = JsonFormatter().format(rec)
    assert TOKEN not in text and REDACTED in text
    orjson.loads(text)  # still one valid JSON object


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_logging_config_covers_uvicorn_and_wshub(log_format: str) -> None:
    """Both formats configure uvicorn's and wshub's loggers with redacting handlers."""
    config = logging_config(log_format, "debug")
    assert config["loggers"]["wshub"]["level"] == "DEBUG"
    assert all(h["filters"] == ["redact"] for h in config["handlers"].values())
    json_formatters = {f.get("()") for f in config["formatters"].values()}
    assert (json_formatters == {"wshub.ops.logs.JsonFormatter"}) == (log_format == "json")


def test_unknown_log_format_is_refused() -> None:
    """Only text and json exist."""
    with pytest.raises(ValueError):
        logging_config("xml")


def test_json_formatter_alone_redacts_header_lines_and_nested_values() -> None:
    """Without the filter in front: the formatted message, nested extras, bytes, objects."""

    class Opaque:
        def __str__(self) -> str:
            return f"Opaque(token={TOKEN})"

    rec = record("< %s: %s", ("cookie", f"wshub_token={TOKEN}"), name="uvicorn.error")
    rec.scope = {"query_string": b"tok%65n=" + TOKEN.encode(), "headers": [(b"cookie", b"a=b")]}
    rec.thing = Opaque()
    text = JsonFormatter().format(rec)
    assert TOKEN not in text, text
    line = orjson.loads(text)
    assert line["message"] == f"< cookie: wshub_token={REDACTED}"
    assert line["thing"].startswith(f"Opaque(token={REDACTED}")


def test_json_formatter_keeps_access_fields_after_the_filter() -> None:
    """The filter in front (as `logging_config` puts it) keeps uvicorn's access args usable."""
    args = ("127.0.0.1:5000", "GET", f"/x?tok%65n={TOKEN}", "1.1", 200)
    rec = record('%s - "%s %s HTTP/%s" %d', args, name="uvicorn.access")
    RedactingFilter().filter(rec)
    line = orjson.loads(JsonFormatter().format(rec))
    assert (line["path"], line["status"]) == (f"/x?tok%65n={REDACTED}", 200)
    assert TOKEN not in line["message"]


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_logging_config_routes_websockets_and_trace_through_redaction(log_format: str) -> None:
    """websockets' loggers get a redacting handler; uvicorn.asgi propagates to uvicorn's."""
    config = logging_config(log_format, "trace")
    loggers, handlers = config["loggers"], config["handlers"]
    assert loggers["wshub"]["level"] == "TRACE" == logging.getLevelName(5)
    assert loggers["websockets"]["propagate"] is False
    for name in ("uvicorn", "uvicorn.access", "wshub", "websockets"):
        for handler in loggers[name].get("handlers", []):
            assert handlers[handler]["filters"] == ["redact"]
    assert "uvicorn.asgi" not in loggers  # a child of "uvicorn": its default handler
