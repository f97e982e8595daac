"""Redaction of tokens in log records: query parameters, Bearer/apikey credentials, record args."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from wshub.core.redaction import REDACTED, RedactingFilter, install_redaction

TOKEN = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhZGEifQ.c2lnbmF0dXJl"


def record(msg: str, args: object = None) -> logging.LogRecord:
    """A log record as a logger would build it."""
    return logging.LogRecord("test", logging.INFO, __file__, 1, msg, args, None)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"/ws?token={TOKEN}", f"/ws?token={REDACTED}"),
        (f"/ws?room=a&token={TOKEN}&x=1", f"/ws?room=a&token={REDACTED}&x=1"),
        (f"/ws?access_token={TOKEN}", f"/ws?access_token={REDACTED}"),
        (f"/ws?jwt={TOKEN} [accepted]", f"/ws?jwt={REDACTED} [accepted]"),
        (f"/ws?api_key={TOKEN}&apikey={TOKEN}", f"/ws?api_key={REDACTED}&apikey={REDACTED}"),
        (f"/ws?TOKEN={TOKEN}", f"/ws?TOKEN={REDACTED}"),
        (f'"GET /x?token={TOKEN} HTTP/1.1"', f'"GET /x?token={REDACTED} HTTP/1.1"'),
        (f"Authorization: Bearer {TOKEN}", f"Authorization: Bearer {REDACTED}"),
        (f"authorization: bearer {TOKEN}, next", f"authorization: bearer {REDACTED}, next"),
        (f"ApiKey {TOKEN}", f"ApiKey {REDACTED}"),
        ("/ws?room=a&tokens=1&mytoken=2", "/ws?room=a&tokens=1&mytoken=2"),
        ("nothing secret here", "nothing secret here"),
    ],
)
def test_redact_replaces_secrets_only(text: str, expected: str) -> None:
    """Secret query values and credentials are replaced; other parameters are left alone."""
    assert RedactingFilter().redact(text) == expected


def test_extra_parameter_names_are_redacted_too() -> None:
    """Names passed to the filter are redacted in addition to the built-in ones."""
    flt = RedactingFilter(["sig"])
    assert flt.redact(f"/ws?sig=abc&token={TOKEN}") == f"/ws?sig={REDACTED}&token={REDACTED}"


def test_uvicorn_style_args_tuple_is_redacted_and_still_formats() -> None:
    """uvicorn's loggers pass the path as an argument; non-strings (the status) stay as they are."""
    rec = record(
        '%s - "%s %s HTTP/%s" %d', ("127.0.0.1:5000", "GET", f"/ws?token={TOKEN}", "1.1", 200)
    )
    assert RedactingFilter().filter(rec)
    assert rec.args == ("127.0.0.1:5000", "GET", f"/ws?token={REDACTED}", "1.1", 200)
    assert rec.getMessage() == f'127.0.0.1:5000 - "GET /ws?token={REDACTED} HTTP/1.1" 200'


def test_websocket_accepted_line_is_redacted() -> None:
    """The `uvicorn.error` handshake line carries the query string in its args."""
    rec = record('%s - "WebSocket %s" [accepted]', ("127.0.0.1:5000", f"/ws?token={TOKEN}"))
    RedactingFilter().filter(rec)
    assert TOKEN not in rec.getMessage()


def test_message_and_dict_args_are_redacted() -> None:
    """A secret in the message itself or in mapping args is redacted as well."""
    rec = record(f"GET /ws?token={TOKEN} by %(who)s: %(auth)s", None)
    rec.args = {"who": "ada", "auth": f"Bearer {TOKEN}", "n": 3}
    RedactingFilter().filter(rec)
    assert rec.getMessage() == f"GET /ws?token={REDACTED} by ada: Bearer {REDACTED}"
    assert rec.args["n"] == 3


@pytest.fixture
def clean_loggers() -> Iterator[list[logging.Logger]]:
    """The loggers install_redaction touches, with their filters restored afterwards."""
    names = ["uvicorn", "uvicorn.error", "uvicorn.access", "wshub"]
    loggers = [logging.getLogger(name) for name in names]
    saved = [list(logger.filters) for logger in loggers]
    for logger in loggers:
        for flt in list(logger.filters):
            if isinstance(flt, RedactingFilter):
                logger.removeFilter(flt)
    yield loggers
    for logger, filters in zip(loggers, saved, strict=True):
        logger.filters[:] = filters


def test_install_redaction_adds_one_filter_per_logger(
    clean_loggers: list[logging.Logger],
) -> None:
    """Installing twice leaves one RedactingFilter on each of uvicorn's and wshub's loggers."""
    install_redaction()
    install_redaction(["sig"])
    for logger in clean_loggers:
        assert sum(isinstance(f, RedactingFilter) for f in logger.filters) == 1, logger.name


def test_installed_filter_redacts_records_of_uvicorn_error(
    clean_loggers: list[logging.Logger], caplog: pytest.LogCaptureFixture
) -> None:
    """A handshake line logged on `uvicorn.error` reaches handlers without the token."""
    install_redaction()
    logger = logging.getLogger("uvicorn.error")
    handler = caplog.handler
    logger.addHandler(handler)
    try:
        with caplog.at_level(logging.INFO, logger="uvicorn.error"):
            logger.info('%s - "WebSocket %s" [accepted]', "127.0.0.1:1", f"/ws?token={TOKEN}")
    finally:
        logger.removeHandler(handler)
    assert caplog.text and TOKEN not in caplog.text
    assert f"/ws?token={REDACTED}" in caplog.text
