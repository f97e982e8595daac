"""The transport fast path: its frames parse as RFC 6455 frames, and its guard.

The guard tests break a real uvicorn protocol object (the installed version's) one
attribute at a time, so that they follow the class they stand for.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import sys
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from types import SimpleNamespace
from typing import Any, TypeVar

import pytest
from uvicorn.config import Config
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from uvicorn.server import ServerState
from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader

from wshub.hub import transport as transport_module
from wshub.hub.transport import OP_BINARY, OP_TEXT, FastPath, frame_bytes, frame_header

P = TypeVar("P", bound=WebSocketsSansIOProtocol)


def parse(data: bytes) -> Frame:
    """Parse one server-to-client frame with websockets' own parser."""
    reader = StreamReader()
    reader.feed_data(data)
    parser = Frame.parse(reader.read_exact, mask=False)
    try:
        next(parser)
    except StopIteration as done:
        frame: Frame = done.value
        return frame
    raise AssertionError("incomplete frame")


@pytest.mark.parametrize("length", [0, 1, 125, 126, 127, 65535, 65536, 70000])
def test_text_frames_of_every_length_class_parse(length: int) -> None:
    """7-bit, 16-bit and 64-bit payload lengths are all encoded as RFC 6455 says."""
    payload = b"x" * length
    frame = parse(frame_bytes(payload, OP_TEXT))
    assert frame.opcode is Opcode.TEXT and frame.fin and frame.data == payload


def test_binary_frames_parse() -> None:
    """Binary frames carry opcode 2 and the payload unchanged."""
    frame = parse(frame_bytes(b"\x00\xff" * 10, OP_BINARY))
    assert frame.opcode is Opcode.BINARY and frame.data == b"\x00\xff" * 10


def test_header_sizes() -> None:
    """Headers are 2, 4 or 10 bytes long for the three length classes."""
    assert [len(frame_header(n, OP_TEXT)) for n in (125, 126, 65536)] == [2, 4, 10]


def test_unknown_send_callables_give_no_fast_path() -> None:
    """Anything but a known server's protocol object leaves the writer on plain ASGI."""

    async def send(message: object) -> None:
        return None

    assert FastPath.find(None) is None
    assert FastPath.find(send) is None
    assert FastPath.find(print) is None


# -- the guard: uvicorn's private attributes, checked once when the fast path is attached --


async def asgi_app(scope: object, receive: object, send: object) -> None:
    return None


@asynccontextmanager
async def connected(cls: type[P]) -> AsyncIterator[P]:
    """A uvicorn protocol object of ``cls`` on a real transport (one end of a socketpair)."""
    loop = asyncio.get_running_loop()
    config = Config(app=asgi_app, ws="websockets-sansio", log_config=None)
    config.load()
    made = cls(config, ServerState(), {}, _loop=loop)
    ours, theirs = socket.socketpair()
    transport, _ = await loop.connect_accepted_socket(lambda: made, ours)
    attributes = dict(vars(made))
    try:
        yield made
    finally:
        vars(made).update(attributes)  # what a test broke, uvicorn's connection_lost uses
        transport.close()
        theirs.close()
        await asyncio.sleep(0)  # let the transport finish closing


@pytest.fixture
async def protocol() -> AsyncIterator[WebSocketsSansIOProtocol]:
    """The installed uvicorn's sans-I/O protocol object, connected."""
    async with connected(WebSocketsSansIOProtocol) as made:
        yield made


@pytest.fixture
def fallback_log(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> Iterator[pytest.LogCaptureFixture]:
    """caplog on ``wshub.transport``, whatever logging config ran before, logging afresh."""
    monkeypatch.setattr(transport_module, "_fallback_logged", False)
    logger = logging.getLogger("wshub.transport")
    monkeypatch.setattr(logger, "disabled", False)
    monkeypatch.setattr(logger, "propagate", False)  # caplog.handler below sees it once
    logger.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.INFO, logger="wshub.transport"):
            yield caplog
    finally:
        logger.removeHandler(caplog.handler)
        transport_module._known_class.cache_clear()


def fallback_messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "wshub.transport" and r.levelno == logging.INFO
    ]


class WriteOnly:
    """A transport-like object without ``is_closing``."""

    def write(self, data: bytes) -> None:
        return None


BREAKAGES: dict[str, Callable[[WebSocketsSansIOProtocol], None]] = {
    "transport missing": lambda p: delattr(p, "transport"),
    "transport None": lambda p: setattr(p, "transport", None),
    "transport without is_closing": lambda p: setattr(p, "transport", WriteOnly()),
    "conn missing": lambda p: delattr(p, "conn"),
    "conn without state": lambda p: setattr(p, "conn", object()),
    "conn.state not a State": lambda p: setattr(p, "conn", SimpleNamespace(state="OPEN")),
    "writable missing": lambda p: delattr(p, "writable"),
    "writable a threading.Event": lambda p: setattr(p, "writable", threading.Event()),
    "close_sent missing": lambda p: delattr(p, "close_sent"),
    "close_sent not a bool": lambda p: setattr(p, "close_sent", 0),
    "disconnected missing": lambda p: delattr(p, "disconnected"),
    "disconnected not a bool": lambda p: setattr(p, "disconnected", "no"),
}


@pytest.mark.anyio
async def test_the_installed_uvicorn_protocol_passes_the_guard(
    protocol: WebSocketsSansIOProtocol, fallback_log: pytest.LogCaptureFixture
) -> None:
    """The real protocol object of the installed uvicorn has every attribute, as expected."""
    assert transport_module._problem(protocol) is None
    fast = FastPath.find(protocol.send)
    assert fast is not None
    assert not fast.ready()  # no handshake yet: conn.state is CONNECTING, not OPEN
    assert fallback_messages(fallback_log) == []


@pytest.mark.anyio
async def test_the_guard_sees_through_middleware_closures(
    protocol: WebSocketsSansIOProtocol, fallback_log: pytest.LogCaptureFixture
) -> None:
    """``send`` wrapped by an ASGI middleware's closure still leads to the protocol."""
    inner = protocol.send

    async def wrapped(message: Any) -> None:
        await inner(message)

    assert FastPath.find(wrapped) is not None


@pytest.mark.anyio
@pytest.mark.parametrize("breakage", list(BREAKAGES))
async def test_a_missing_or_mistyped_attribute_gives_plain_asgi_logged_once(
    protocol: WebSocketsSansIOProtocol, fallback_log: pytest.LogCaptureFixture, breakage: str
) -> None:
    """One attribute renamed or retyped: no fast path, and one INFO line naming it."""
    BREAKAGES[breakage](protocol)
    assert FastPath.find(protocol.send) is None
    assert FastPath.find(protocol.send) is None  # the next connection: no new line
    (message,) = fallback_messages(fallback_log)
    attribute = breakage.split()[0]
    assert f"WebSocketsSansIOProtocol.{attribute}" in message, message
    assert "plain ASGI path is used" in message


@pytest.mark.anyio
async def test_every_breakage_is_logged_once_per_process(
    protocol: WebSocketsSansIOProtocol, fallback_log: pytest.LogCaptureFixture
) -> None:
    """After the first fallback line, other broken connections fall back silently."""
    del protocol.writable
    assert FastPath.find(protocol.send) is None
    protocol.writable = asyncio.Event()
    protocol.close_sent = None  # type: ignore[assignment]
    assert FastPath.find(protocol.send) is None
    assert len(fallback_messages(fallback_log)) == 1


class RenamingProtocol(WebSocketsSansIOProtocol):
    """A uvicorn release that renamed ``disconnected`` (set when the connection is lost)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lost = self.__dict__.pop("disconnected")


@pytest.mark.anyio
async def test_a_subclass_that_renames_an_attribute_gives_plain_asgi(
    fallback_log: pytest.LogCaptureFixture,
) -> None:
    """An instance of a (renaming) subclass of the real class is refused, with the reason."""
    async with connected(RenamingProtocol) as renamed:
        assert FastPath.find(renamed.send) is None
    (message,) = fallback_messages(fallback_log)
    assert "RenamingProtocol.disconnected is missing" in message, message


@pytest.mark.anyio
async def test_a_moved_uvicorn_class_gives_plain_asgi_logged_once(
    protocol: WebSocketsSansIOProtocol,
    fallback_log: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """uvicorn without ``websockets_sansio_impl.WebSocketsSansIOProtocol``: no fast path."""
    transport_module._known_class.cache_clear()
    monkeypatch.setitem(sys.modules, "uvicorn.protocols.websockets.websockets_sansio_impl", None)
    assert FastPath.find(protocol.send) is None
    assert FastPath.find(protocol.send) is None
    (message,) = fallback_messages(fallback_log)
    assert "WebSocketsSansIOProtocol is not found" in message, message
