"""Redaction of tokens in log records: query parameters, Bearer/apikey credentials, record args."""

from __future__ import annotations

import copy
import logging
import sys
from collections import namedtuple
from collections.abc import Iterator

import pytest
from websockets.frames import Frame, Opcode

from wshub.core.redaction import REDACTED, RedactingFilter, install_redaction, redact_header

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
    names = [
        "uvicorn",
        "uvicorn.error",
        "uvicorn.access",
        "uvicorn.asgi",
        "websockets",
        "websockets.server",
        "wshub",
    ]
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
    """Installing twice leaves one filter on each of uvicorn's, websockets' and wshub's loggers."""
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


# -- percent-decoded query parameter names --------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "tok%65n",
        "%74oken",
        "TOK%45N",
        "Token",
        "tok%2565n",
        "token+",
        "%20token",
        "jwt",
        "api%5Fkey",
    ],
)
def test_encoded_parameter_names_are_redacted(name: str) -> None:
    """Starlette percent-decodes query names: ``?tok%65n=`` is a ``token``, and redacted."""
    flt = RedactingFilter()
    assert flt.redact(f"/ws?{name}={TOKEN}&x=1") == f"/ws?{name}={REDACTED}&x=1"
    assert flt.redact(f'"WebSocket /ws?a=b&{name}={TOKEN}" [accepted]') == (
        f'"WebSocket /ws?a=b&{name}={REDACTED}" [accepted]'
    )


@pytest.mark.parametrize("name", ["tokens", "to%6Bens", "mytoken", "room", "x%3Dtoken"])
def test_other_encoded_names_are_left_alone(name: str) -> None:
    """Only names that decode to a secret parameter are redacted."""
    assert RedactingFilter().redact(f"/ws?{name}=abc") == f"/ws?{name}=abc"


def test_query_string_bytes_are_redacted_on_their_decoded_names() -> None:
    """The ASGI scope's ``query_string`` is bytes, with no ``?`` in front."""
    flt = RedactingFilter()
    assert flt.scrub(b"tok%65n=" + TOKEN.encode() + b"&room=a") == b"tok%65n=[redacted]&room=a"
    assert flt.scrub(bytearray(b"room=a&token=x")) == bytearray(b"room=a&token=[redacted]")


def test_placeholders_in_a_template_are_not_secrets() -> None:
    """``token=%s`` in a message template stays, so the record still formats."""
    rec = record("query token=%s cookie: %s", ("x", "y"))
    RedactingFilter().filter(rec)
    assert rec.getMessage() == "query token=x cookie: y"


# -- headers ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"< cookie: wshub_token={TOKEN}", f"< cookie: wshub_token={REDACTED}"),
        (f"Cookie: a=1; wshub_token={TOKEN}", f"Cookie: a={REDACTED}; wshub_token={REDACTED}"),
        (f"< Sec-WebSocket-Protocol: wshub, {TOKEN}", f"< Sec-WebSocket-Protocol: {REDACTED}"),
        ("< authorization: Basic dXNlcjpwYXNz", f"< authorization: Basic {REDACTED}"),
        ("Proxy-Authorization: abc123", f"Proxy-Authorization: {REDACTED}"),
        (
            f"set-cookie: wshub_token={TOKEN}; Path=/",
            f"set-cookie: wshub_token={REDACTED}; Path={REDACTED}",
        ),
        ("< host: example.com", "< host: example.com"),
    ],
)
def test_secret_header_lines_are_redacted(text: str, expected: str) -> None:
    """websockets' debug lines: every cookie value, credentials, subprotocols."""
    assert RedactingFilter().redact(text) == expected


def test_header_in_a_repr_is_redacted() -> None:
    """A header list or mapping that reached a string (a repr) is redacted too."""
    flt = RedactingFilter()
    text = f"Headers(raw=[(b'host', b'x'), (b'cookie', b'wshub_token={TOKEN}')])"
    assert (
        flt.redact(text)
        == f"Headers(raw=[(b'host', b'x'), (b'cookie', b'wshub_token={REDACTED}')])"
    )
    assert TOKEN not in flt.redact(f"{{'authorization': 'Bearer {TOKEN}'}}")


def test_logger_header_arguments_are_redacted() -> None:
    """websockets logs ``"< %s: %s", name, value``: the value of a secret header goes."""
    flt = RedactingFilter()
    for name, value in [
        ("cookie", f"theme=dark; wshub_token={TOKEN}"),
        ("Sec-WebSocket-Protocol", f"bearer.{TOKEN}"),
        ("authorization", "Bearer opaque-not-a-jwt"),
    ]:
        rec = record("< %s: %s", (name, value))
        flt.filter(rec)
        assert TOKEN not in rec.getMessage() and "opaque" not in rec.getMessage()
        assert rec.getMessage().startswith(f"< {name}: ")


def test_redact_header_keeps_names_and_the_scheme() -> None:
    """Cookie names and the authorization scheme are useful and not secret."""
    assert redact_header("cookie", "a=1; b=2") == f"a={REDACTED}; b={REDACTED}"
    assert redact_header("Authorization", "Bearer x") == f"Bearer {REDACTED}"
    assert redact_header("sec-websocket-protocol", "x") == REDACTED


# -- JSON, JWTs ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        f'< TEXT \'{{"op":"connect","token":"{TOKEN}"}}\' [120 bytes]',
        f'< TEXT \'{{"op": "connect", "token": "{TOKEN[:20]}...{TOKEN[-20:]}"}}\' [1 bytes]',
        f'{{\\"op\\":\\"connect\\",\\"token\\":\\"{TOKEN}\\"}}',
        f"{{'jwt': '{TOKEN}'}}",
        f"token='{TOKEN}'",
        f"auth failed for eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhZGEifQ.{TOKEN[-12:]}x",
    ],
)
def test_json_entries_and_bare_jwts_are_redacted(text: str) -> None:
    """The first-frame token (websockets elides long frames), dict reprs, JWT-shaped strings."""
    redacted = RedactingFilter().redact(text)
    assert TOKEN[-12:] not in redacted and TOKEN[:20] not in redacted, redacted
    assert REDACTED in redacted


# -- arguments of any type --------------------------------------------------------------------


def test_nested_arguments_are_redacted_on_a_copy() -> None:
    """An ASGI scope as uvicorn.asgi logs it: bytes, header pairs, nesting; the scope stays."""
    scope = {
        "type": "websocket",
        "path": "/ws",
        "query_string": b"tok%65n=" + TOKEN.encode(),
        "headers": [(b"host", b"x"), (b"cookie", b"wshub_token=" + TOKEN.encode())],
        "client": ("127.0.0.1", 5000),
        "state": {"deep": [{"token": TOKEN}, {f"Bearer {TOKEN}"}]},
        "subprotocols": [f"bearer.{TOKEN}"],
    }
    original = copy.deepcopy(scope)
    rec = record("ASGI [%d] Started scope=%s", (1, scope))
    RedactingFilter().filter(rec)
    assert scope == original  # the caller's objects are never modified
    message = rec.getMessage()
    assert TOKEN not in message and TOKEN[-12:] not in message, message
    assert "'client': ('127.0.0.1', 5000)" in message and "b'tok%65n=[redacted]'" in message
    assert "(b'cookie', b'wshub_token=[redacted]')" in message and "(b'host', b'x')" in message


def test_dict_args_and_named_tuples_keep_their_shape() -> None:
    """Mapping args still format with %(name)s; named tuples stay named tuples."""
    pair = namedtuple("pair", "name value")
    flt = RedactingFilter()
    scrubbed = flt.scrub(pair("x", f"token={TOKEN}"))
    assert isinstance(scrubbed, pair) and scrubbed.value == f"token={REDACTED}"
    rec = record("%(scope)s %(n)d", None)
    rec.args = {"scope": {"headers": [("authorization", f"Bearer {TOKEN}")]}, "n": 3}
    flt.filter(rec)
    assert TOKEN not in rec.getMessage() and rec.getMessage().endswith(" 3")


def test_objects_are_redacted_through_str_and_repr() -> None:
    """A websockets Frame (its debug line) reaches the log without the first-frame token."""
    frame = Frame(Opcode.TEXT, b'{"op":"connect","token":"' + TOKEN.encode() + b'"}')
    for template in ("< %s", "< %r"):
        rec = record(template, (frame,))
        RedactingFilter().filter(rec)
        assert TOKEN[-12:] not in rec.getMessage() and REDACTED in rec.getMessage()
    assert TOKEN.encode() in frame.data


def test_records_without_secrets_are_left_as_they_are() -> None:
    """The common case: the same args object, nothing copied."""
    args = ("127.0.0.1:5000", "GET", "/ws?room=a", "1.1", 200, None, 1.5, (1, 2), {"a": [b"x"]})
    rec = record("%s " * len(args), args)
    RedactingFilter().filter(rec)
    assert rec.args is args


def test_exceptions_and_stacks_are_redacted() -> None:
    """The formatted traceback of an exception that quotes a token."""
    try:
        raise RuntimeError(f"bad cookie wshub_token={TOKEN}")
    except RuntimeError:
        rec = logging.LogRecord("t", logging.ERROR, __file__, 1, "failed", None, sys.exc_info())
    rec.stack_info = f"Stack: token={TOKEN}"
    RedactingFilter().filter(rec)
    text = logging.Formatter().format(rec)
    assert "RuntimeError" in text and TOKEN not in text


def test_filtering_twice_is_harmless() -> None:
    """Logger and handler filters both see a record: the second pass changes nothing."""
    flt = RedactingFilter()
    rec = record("< %s: %s", ("cookie", f"wshub_token={TOKEN}"))
    flt.filter(rec)
    first = rec.getMessage()
    RedactingFilter().filter(rec)
    flt.filter(rec)
    assert rec.getMessage() == first == f"< cookie: wshub_token={REDACTED}"


def test_a_failing_redaction_fails_closed() -> None:
    """An argument that breaks the copy: the record is still redacted, nothing raises."""

    class Odd(tuple[str, ...]):
        _fields = ("a", "b")  # looks like a named tuple, but is built from one iterable

    odd = Odd(("x", f"token={TOKEN}"))
    rec = record("odd %s", (odd,))
    assert RedactingFilter().filter(rec)
    assert rec.args is None  # the fallback: the formatted line, redacted
    assert TOKEN not in rec.getMessage() and rec.getMessage().startswith("odd ")
