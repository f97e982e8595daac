"""Origin checks: own origin by scheme and Host, loopback equivalence, the allow-list and `*`."""

from __future__ import annotations

import pytest

from wshub.server.origins import origin_allowed

NONE: frozenset[str] = frozenset()


def test_no_origin_header_is_allowed() -> None:
    """Non-browser clients send no Origin; they have no ambient credentials to protect."""
    assert origin_allowed(None, "example.com", NONE)
    assert origin_allowed(None, None, NONE)


@pytest.mark.parametrize(
    ("origin", "host", "scheme"),
    [
        ("https://example.com", "example.com", "wss"),
        ("http://example.com:8000", "example.com:8000", "ws"),
        ("HTTPS://Example.COM", "example.com", "wss"),
        ("http://[::1]:8000", "[::1]:8000", "ws"),
        ("https://example.com:443", "example.com", "wss"),
        ("https://example.com", "example.com:443", "wss"),
        ("http://example.com:80", "example.com", "ws"),
        ("http://example.com", "example.com", "http"),  # an ASGI server reporting http(s)
        ("https://example.com", "example.com", "https"),
    ],
)
def test_own_origin_is_allowed(origin: str, host: str, scheme: str) -> None:
    """An Origin whose scheme, host and port are the server's own (default ports filled in)."""
    assert origin_allowed(origin, host, NONE, scheme)


@pytest.mark.parametrize(
    ("origin", "host", "scheme"),
    [
        ("https://127.0.0.1:8000", "127.0.0.1:8000", "ws"),
        ("http://127.0.0.1:8000", "127.0.0.1:8000", "wss"),
        ("https://localhost:8000", "127.0.0.1:8000", "ws"),
        ("https://example.com", "example.com", "ws"),  # 443 vs 80, and another scheme
        ("http://example.com", "example.com", "wss"),
        ("https://example.com:80", "example.com", "ws"),  # same port, other scheme
        ("http://example.com:443", "example.com:443", "wss"),
    ],
)
def test_another_scheme_is_another_origin(origin: str, host: str, scheme: str) -> None:
    """https:// pages may not open ws:// sockets of the same host and port, nor the reverse."""
    assert not origin_allowed(origin, host, NONE, scheme)


@pytest.mark.parametrize(
    ("origin", "host"),
    [
        ("https://evil.example", "example.com"),
        ("http://example.com:9000", "example.com:8000"),
        ("http://example.com", "example.com:8000"),
        ("https://example.com.evil.example", "example.com"),
        ("https://evilexample.com", "example.com"),
        ("null", "example.com"),
        ("", "example.com"),
        ("https://example.com", None),
    ],
)
def test_foreign_origin_is_refused(origin: str, host: str | None) -> None:
    """Another host, another port, a look-alike, `null` or a missing Host header are refused."""
    assert not origin_allowed(origin, host, NONE)


@pytest.mark.parametrize(
    ("origin", "host"),
    [
        ("http://127.0.0.1:8000", "localhost:8000"),
        ("http://localhost:8000", "127.0.0.1:8000"),
        ("http://[::1]:8000", "localhost:8000"),
        ("http://localhost:8000", "[::1]:8000"),
        ("http://localhost", "127.0.0.1"),
        ("http://localhost", "127.0.0.1:80"),
        ("http://127.0.0.1:80", "localhost"),
    ],
)
def test_loopback_names_on_the_same_port_are_one_origin(origin: str, host: str) -> None:
    """A page on 127.0.0.1:PORT may open ws://localhost:PORT, and the other way round."""
    assert origin_allowed(origin, host, NONE)


@pytest.mark.parametrize(
    ("origin", "host"),
    [
        ("http://127.0.0.1:9000", "localhost:8000"),
        ("http://localhost:8000", "127.0.0.1:9000"),
        ("https://localhost", "127.0.0.1:80"),
        ("http://localhost:8000", "example.com:8000"),
        ("http://evil.example:8000", "localhost:8000"),
    ],
)
def test_loopback_on_another_port_or_host_is_refused(origin: str, host: str) -> None:
    """Another local port is another origin, and loopback equivalence never reaches other hosts."""
    assert not origin_allowed(origin, host, NONE)


@pytest.mark.parametrize(
    ("origin", "host"),
    [
        ("http://localhost:notaport", "localhost:8000"),
        ("http://localhost:99999", "localhost:8000"),
        ("http://localhost:8000", "localhost:notaport"),
        ("http://127.0.0.1:8000", "localhost:99999"),
        ("http://[::1:8000", "localhost:8000"),
        ("http://localhost:8000", "[::1:8000"),
    ],
)
def test_unparsable_ports_are_refused_without_raising(origin: str, host: str) -> None:
    """A garbage port in Origin or Host (both client-controlled) is a refusal, not an exception."""
    assert not origin_allowed(origin, host, NONE)


def test_listed_origins_match_with_their_default_port() -> None:
    """An allow-list entry with its scheme's default port is the same origin as without one."""
    allowed = frozenset({"https://app.example.com:443", "http://other.example.com"})
    assert origin_allowed("https://app.example.com", "api.example.com", allowed)
    assert origin_allowed("http://other.example.com:80", "api.example.com", allowed)
    assert not origin_allowed("http://app.example.com:443", "api.example.com", allowed)


def test_listed_origins_are_allowed() -> None:
    """An extra allowed origin passes from any Host; unlisted ones still do not."""
    allowed = frozenset({"https://app.example.com"})
    assert origin_allowed("https://app.example.com", "api.example.com", allowed)
    assert origin_allowed("https://app.example.com/", "api.example.com", allowed)
    assert origin_allowed("HTTPS://APP.EXAMPLE.COM", "api.example.com", allowed)
    assert not origin_allowed("http://app.example.com", "api.example.com", allowed)
    assert not origin_allowed("https://app.example.com:8443", "api.example.com", allowed)
    assert not origin_allowed("https://evil.example", "api.example.com", allowed)


def test_star_allows_every_origin() -> None:
    """`*` is the explicit opt-in to any origin."""
    assert origin_allowed("https://evil.example", "example.com", frozenset({"*"}))
    assert origin_allowed("null", None, frozenset({"*"}))
