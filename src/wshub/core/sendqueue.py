"""The per-connection send queue: bounded by messages and bytes, with an overflow policy.

No event loop here: the connection wakes its writer; this module only keeps the
frames and the counts. A `Frame` is built once per publication and shared by
every recipient's queue, so queueing a delivery allocates nothing.
"""

from __future__ import annotations

import collections
import enum


class OverflowPolicy(enum.StrEnum):
    """What a full queue does with one more frame.

    - ``DISCONNECT``: refuse it; the connection closes with 4008 and the client
      reconnects (and recovers from history, where the channel keeps one).
    - ``DROP_OLDEST``: drop the oldest queued frames until the new one fits.
    - ``DROP_NEWEST``: drop the new frame.
    """

    DISCONNECT = "disconnect"
    DROP_OLDEST = "drop_oldest"
    DROP_NEWEST = "drop_newest"


class Frame:
    """One encoded WebSocket message, shared by every queue it is put in.

    Attributes:
        data: text (``str``) for text frames, ``bytes`` for binary frames.
        size: the encoded size in bytes, counted against the queue's byte limit.
        raw: the UTF-8 bytes of a text frame (the payload itself for binary), when
            known: the transport fast path writes these without encoding again.
        wire: the whole WebSocket frame (header and payload), built on first use by
            the fast path and then shared by every recipient.
    """

    __slots__ = ("data", "size", "raw", "wire")

    def __init__(self, data: str | bytes, size: int, raw: bytes | None = None) -> None:
        self.data = data
        self.size = size
        self.raw = raw if raw is not None else data if isinstance(data, bytes) else None
        self.wire: bytes | None = None

    @classmethod
    def text(cls, encoded: bytes) -> Frame:
        """Build a text frame from UTF-8 bytes (decoded once, here)."""
        return cls(encoded.decode(), len(encoded), encoded)

    @classmethod
    def binary(cls, encoded: bytes) -> Frame:
        """Build a binary frame."""
        return cls(encoded, len(encoded), encoded)

    @property
    def payload(self) -> bytes:
        """The frame's payload bytes (encoded now, once, if only the text was known)."""
        if self.raw is None:
            assert isinstance(self.data, str)
            self.raw = self.data.encode()
        return self.raw

    def __repr__(self) -> str:
        return f"Frame({self.data!r:.40}, size={self.size})"


class SendQueue:
    """A FIFO of frames bounded by count and bytes.

    Args:
        max_messages: most frames held at once (at least 1).
        max_bytes: most bytes held at once (at least 1).
        policy: what `put` does when a frame does not fit.

    Attributes:
        dropped: frames dropped by the DROP_* policies since creation.
    """

    __slots__ = ("_frames", "_bytes", "max_messages", "max_bytes", "policy", "dropped")

    def __init__(
        self,
        max_messages: int = 1000,
        max_bytes: int = 1 << 20,
        policy: OverflowPolicy = OverflowPolicy.DISCONNECT,
    ) -> None:
        if max_messages < 1 or max_bytes < 1:
            raise ValueError("send queue limits must be at least 1")
        self._frames: collections.deque[Frame] = collections.deque()
        self._bytes = 0
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.policy = policy
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._frames)

    @property
    def bytes(self) -> int:
        """The bytes currently queued."""
        return self._bytes

    def put(self, frame: Frame) -> bool:
        """Queue a frame, applying the overflow policy when it does not fit.

        Returns:
            False only when the frame overflowed under ``DISCONNECT``: the caller
            must close the connection. Drops under the other policies return True
            and are counted in `dropped`.
        """
        if len(self._frames) < self.max_messages and self._bytes + frame.size <= self.max_bytes:
            self._frames.append(frame)
            self._bytes += frame.size
            return True
        return self._overflow(frame)

    def _overflow(self, frame: Frame) -> bool:
        if self.policy is OverflowPolicy.DISCONNECT:
            return False
        if self.policy is OverflowPolicy.DROP_NEWEST or frame.size > self.max_bytes:
            self.dropped += 1
            return True
        frames = self._frames
        while frames and (
            len(frames) >= self.max_messages or self._bytes + frame.size > self.max_bytes
        ):
            self._bytes -= frames.popleft().size
            self.dropped += 1
        frames.append(frame)
        self._bytes += frame.size
        return True

    def push(self, frame: Frame) -> None:
        """Queue a small control frame (a ping) whatever the limits and the policy.

        A dropped ping would read as a dead client (4009) rather than a slow one; pings
        come one per interval, so this cannot grow the queue by more than one frame.
        """
        self._frames.append(frame)
        self._bytes += frame.size

    def pop(self) -> Frame:
        """Remove and return the oldest frame.

        Raises:
            IndexError: the queue is empty.
        """
        frame = self._frames.popleft()
        self._bytes -= frame.size
        return frame

    def pop_batch(self, max_bytes: int) -> list[Frame]:
        """Remove the oldest frames whose sizes, plus one separator byte each, fit ``max_bytes``.

        Always returns at least one frame (a frame larger than ``max_bytes`` goes alone).

        Raises:
            IndexError: the queue is empty.
        """
        frames = self._frames
        first = frames.popleft()
        batch = [first]
        total = first.size
        while frames and total + 1 + frames[0].size <= max_bytes:
            frame = frames.popleft()
            total += 1 + frame.size
            batch.append(frame)
        self._bytes -= total - (len(batch) - 1)
        return batch

    def clear(self) -> int:
        """Drop every queued frame (not counted as drops); returns how many there were."""
        count = len(self._frames)
        self._frames.clear()
        self._bytes = 0
        return count
