"""Frames built by the transport fast path parse as the RFC 6455 frames they claim to be."""

from __future__ import annotations

import pytest
from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader

from wshub.hub.transport import OP_BINARY, OP_TEXT, FastPath, frame_bytes, frame_header


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
