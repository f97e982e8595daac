"""The send queue: bounded by messages and bytes, with an overflow policy; no event loop."""

from __future__ import annotations

import random

import pytest

from wshub.core.sendqueue import Frame, OverflowPolicy, SendQueue


def frame(size: int, tag: str = "x") -> Frame:
    """A text frame of ``size`` bytes (its data starts with ``tag`` to tell frames apart)."""
    return Frame.text((tag + "." * size)[:size].encode())


def contents(queue: SendQueue) -> list[Frame]:
    """Pop everything, checking the byte count after each pop; the queue ends empty."""
    frames = []
    while queue:
        before = queue.bytes
        popped = queue.pop()
        assert queue.bytes == before - popped.size
        frames.append(popped)
    assert queue.bytes == 0
    return frames


def assert_accounting(queue: SendQueue) -> None:
    """The byte count is the sum of the queued sizes and both limits hold."""
    assert queue.bytes == sum(f.size for f in queue._frames)
    assert len(queue) <= queue.max_messages
    assert queue.bytes <= queue.max_bytes


# -- frames -----------------------------------------------------------------------------------


def test_text_frame_size_counts_utf8_bytes() -> None:
    """A text frame's size is its encoded size, not its length in characters."""
    f = Frame.text("é😀".encode())
    assert f.data == "é😀"
    assert f.size == 6


def test_binary_frame_keeps_bytes() -> None:
    """A binary frame holds the bytes as they are."""
    f = Frame.binary(b"\x00\x01")
    assert f.data == b"\x00\x01"
    assert f.size == 2


def test_frame_repr_is_short() -> None:
    """A frame's repr shows its size and a cut-down preview of its data."""
    text = repr(frame(1000))
    assert "size=1000" in text
    assert len(text) < 80


# -- construction -----------------------------------------------------------------------------


@pytest.mark.parametrize(("messages", "max_bytes"), [(0, 10), (10, 0), (-1, 10)])
def test_limits_below_one_are_refused(messages: int, max_bytes: int) -> None:
    """A queue that could hold nothing is a configuration error."""
    with pytest.raises(ValueError, match="at least 1"):
        SendQueue(messages, max_bytes)


def test_defaults() -> None:
    """1000 messages, 1 MiB, and disconnect on overflow."""
    queue = SendQueue()
    assert (queue.max_messages, queue.max_bytes) == (1000, 1 << 20)
    assert queue.policy is OverflowPolicy.DISCONNECT
    assert (len(queue), queue.bytes, queue.dropped) == (0, 0, 0)


# -- limits, for every policy -----------------------------------------------------------------


@pytest.mark.parametrize("policy", list(OverflowPolicy))
def test_count_limit_is_inclusive(policy: OverflowPolicy) -> None:
    """Exactly max_messages frames fit, whatever the policy."""
    queue = SendQueue(3, 1000, policy)
    for _ in range(3):
        assert queue.put(frame(10))
    assert (len(queue), queue.bytes, queue.dropped) == (3, 30, 0)


@pytest.mark.parametrize("policy", list(OverflowPolicy))
def test_byte_limit_is_inclusive(policy: OverflowPolicy) -> None:
    """Frames adding up to exactly max_bytes fit, whatever the policy."""
    queue = SendQueue(10, 100, policy)
    assert queue.put(frame(60))
    assert queue.put(frame(40))
    assert (len(queue), queue.bytes, queue.dropped) == (2, 100, 0)


def test_single_frame_of_exactly_max_bytes_fits() -> None:
    """One frame as large as the byte limit is accepted into an empty queue."""
    queue = SendQueue(10, 100)
    assert queue.put(frame(100))
    assert queue.bytes == 100


def test_disconnect_refuses_one_over_the_count_limit() -> None:
    """Under DISCONNECT the frame past the count limit is refused and nothing changes."""
    queue = SendQueue(2, 1000, OverflowPolicy.DISCONNECT)
    first, second = frame(10, "a"), frame(10, "b")
    assert queue.put(first) and queue.put(second)
    assert queue.put(frame(1)) is False
    assert queue.dropped == 0  # the connection closes; that is counted elsewhere
    assert contents(queue) == [first, second]


def test_disconnect_refuses_one_byte_over_the_byte_limit() -> None:
    """Under DISCONNECT a frame one byte too large for the room left is refused."""
    queue = SendQueue(10, 100, OverflowPolicy.DISCONNECT)
    assert queue.put(frame(60))
    assert queue.put(frame(41)) is False
    assert (len(queue), queue.bytes, queue.dropped) == (1, 60, 0)
    assert queue.put(frame(40))  # the exact remainder still fits


def test_drop_newest_drops_the_new_frame_and_counts_it() -> None:
    """Under DROP_NEWEST the queue keeps what it has; each refused frame is one drop."""
    queue = SendQueue(2, 1000, OverflowPolicy.DROP_NEWEST)
    kept = [frame(10, "a"), frame(10, "b")]
    for f in kept:
        assert queue.put(f)
    assert queue.put(frame(10, "c"))
    assert queue.put(frame(10, "d"))
    assert queue.dropped == 2
    assert contents(queue) == kept


def test_drop_newest_on_the_byte_limit() -> None:
    """DROP_NEWEST applies to bytes too: one byte over is dropped, the exact rest fits."""
    queue = SendQueue(10, 100, OverflowPolicy.DROP_NEWEST)
    assert queue.put(frame(60))
    assert queue.put(frame(41))
    assert (len(queue), queue.bytes, queue.dropped) == (1, 60, 1)
    assert queue.put(frame(40))
    assert (len(queue), queue.bytes, queue.dropped) == (2, 100, 1)


def test_drop_oldest_on_the_count_limit_evicts_one() -> None:
    """Under DROP_OLDEST a full queue gives up its oldest frame for the new one."""
    queue = SendQueue(3, 1000, OverflowPolicy.DROP_OLDEST)
    frames = [frame(10, tag) for tag in "abcd"]
    for f in frames:
        assert queue.put(f)
    assert queue.dropped == 1
    assert contents(queue) == frames[1:]


def test_drop_oldest_on_the_byte_limit_evicts_as_many_as_needed() -> None:
    """DROP_OLDEST evicts oldest frames until the new one fits, counting each."""
    queue = SendQueue(10, 100, OverflowPolicy.DROP_OLDEST)
    small = [frame(30, "a"), frame(30, "b"), frame(30, "c")]
    for f in small:
        assert queue.put(f)
    big = frame(70, "z")
    assert queue.put(big)
    assert queue.dropped == 2  # 30 + 70 = 100: exactly the limit once two are gone
    assert queue.bytes == 100
    assert contents(queue) == [small[2], big]


def test_drop_oldest_one_byte_over_evicts_one_more() -> None:
    """One byte more than the room two evictions make costs a third eviction."""
    queue = SendQueue(10, 100, OverflowPolicy.DROP_OLDEST)
    for tag in "abc":
        queue.put(frame(30, tag))
    assert queue.put(frame(71))
    assert queue.dropped == 3
    assert (len(queue), queue.bytes) == (1, 71)


@pytest.mark.parametrize("policy", [OverflowPolicy.DROP_OLDEST, OverflowPolicy.DROP_NEWEST])
def test_frame_larger_than_max_bytes_is_dropped_alone(policy: OverflowPolicy) -> None:
    """A frame that could never fit is dropped; the queued frames stay."""
    queue = SendQueue(10, 100, policy)
    kept = frame(50)
    queue.put(kept)
    assert queue.put(frame(101))
    assert queue.dropped == 1
    assert contents(queue) == [kept]


def test_frame_larger_than_max_bytes_overflows_under_disconnect() -> None:
    """Under DISCONNECT an oversize frame overflows even an empty queue."""
    queue = SendQueue(10, 100, OverflowPolicy.DISCONNECT)
    assert queue.put(frame(101)) is False
    assert (len(queue), queue.bytes) == (0, 0)


def test_the_same_frame_object_can_be_queued_many_times() -> None:
    """Fan-out shares one frame between queues (and may queue it twice in one)."""
    shared = frame(10)
    queues = [SendQueue(10, 100) for _ in range(3)]
    for queue in queues:
        assert queue.put(shared) and queue.put(shared)
    assert all(contents(queue) == [shared, shared] for queue in queues)


# -- pop, pop_batch, clear --------------------------------------------------------------------


def test_pop_is_fifo_and_raises_when_empty() -> None:
    """Frames come out in the order they went in; an empty queue raises IndexError."""
    queue = SendQueue()
    frames = [frame(5, tag) for tag in "abc"]
    for f in frames:
        queue.put(f)
    assert contents(queue) == frames
    with pytest.raises(IndexError):
        queue.pop()


def test_pop_batch_raises_when_empty() -> None:
    """pop_batch needs at least one frame."""
    with pytest.raises(IndexError):
        SendQueue().pop_batch(100)


def test_pop_batch_counts_one_separator_between_frames() -> None:
    """Three 10-byte frames joined by two newlines take 32 bytes: 32 fits, 31 does not."""
    queue = SendQueue()
    for tag in "abcd":
        queue.put(frame(10, tag))
    batch = queue.pop_batch(32)
    assert [f.data[0] for f in batch] == ["a", "b", "c"]
    assert len("\n".join(str(f.data) for f in batch).encode()) == 32
    assert (len(queue), queue.bytes) == (1, 10)

    queue = SendQueue()
    for tag in "abcd":
        queue.put(frame(10, tag))
    assert [f.data[0] for f in queue.pop_batch(31)] == ["a", "b"]
    assert (len(queue), queue.bytes) == (2, 20)


def test_pop_batch_takes_everything_that_fits() -> None:
    """With room to spare the whole queue comes out as one batch."""
    queue = SendQueue()
    frames = [frame(size) for size in (1, 2, 3)]
    for f in frames:
        queue.put(f)
    assert queue.pop_batch(1000) == frames
    assert (len(queue), queue.bytes) == (0, 0)


def test_pop_batch_sends_an_oversize_frame_alone() -> None:
    """A first frame larger than max_bytes goes out alone; the next batch goes on normally."""
    queue = SendQueue()
    big, a, b = frame(500, "B"), frame(10, "a"), frame(10, "b")
    for f in (big, a, b):
        queue.put(f)
    assert queue.pop_batch(100) == [big]
    assert queue.bytes == 20
    assert queue.pop_batch(100) == [a, b]
    assert queue.bytes == 0


def test_pop_batch_stops_before_an_oversize_frame() -> None:
    """A large frame after small ones waits for its own batch: order is kept."""
    queue = SendQueue()
    a, big = frame(10, "a"), frame(500, "B")
    queue.put(a)
    queue.put(big)
    assert queue.pop_batch(100) == [a]
    assert queue.pop_batch(100) == [big]


def test_pop_batch_stops_at_the_first_frame_that_does_not_fit() -> None:
    """A batch is a prefix of the queue: a small frame never jumps a big one."""
    queue = SendQueue()
    frames = [frame(10, "a"), frame(80, "b"), frame(1, "c")]
    for f in frames:
        queue.put(f)
    assert queue.pop_batch(50) == frames[:1]
    assert queue.pop_batch(100) == frames[1:]  # 80 + 1 + 1 = 82


def test_clear_empties_without_counting_drops() -> None:
    """clear returns how many frames it removed; dropped is left alone; bytes reset."""
    queue = SendQueue(2, 1000, OverflowPolicy.DROP_NEWEST)
    for _ in range(3):
        queue.put(frame(10))
    assert queue.clear() == 2
    assert (len(queue), queue.bytes, queue.dropped) == (0, 0, 1)
    assert queue.clear() == 0
    assert queue.put(frame(10))  # usable after clearing


@pytest.mark.parametrize("policy", list(OverflowPolicy))
def test_push_queues_a_control_frame_past_every_limit(policy: OverflowPolicy) -> None:
    """push (pings) ignores the limits and the policy, drops nothing, and counts its bytes."""
    queue = SendQueue(1, 10, policy)
    data = frame(10, "d")
    assert queue.put(data)
    ping = frame(13, "p")
    queue.push(ping)
    assert (len(queue), queue.bytes, queue.dropped) == (2, 23, 0)
    assert contents(queue) == [data, ping]


# -- against a model --------------------------------------------------------------------------


class ModelQueue:
    """The obvious, slow implementation of the send queue's contract."""

    def __init__(self, max_messages: int, max_bytes: int, policy: OverflowPolicy) -> None:
        self.frames: list[Frame] = []
        self.max_messages, self.max_bytes, self.policy = max_messages, max_bytes, policy
        self.dropped = 0

    def fits(self, extra: Frame) -> bool:
        frames = [*self.frames, extra]
        return len(frames) <= self.max_messages and sum(f.size for f in frames) <= self.max_bytes

    def put(self, f: Frame) -> bool:
        if self.fits(f):
            self.frames.append(f)
            return True
        if self.policy is OverflowPolicy.DISCONNECT:
            return False
        if self.policy is OverflowPolicy.DROP_NEWEST or f.size > self.max_bytes:
            self.dropped += 1
            return True
        while not self.fits(f):
            self.frames.pop(0)
            self.dropped += 1
        self.frames.append(f)
        return True

    def pop_batch(self, max_bytes: int) -> list[Frame]:
        count = 1
        while count < len(self.frames):
            joined = sum(f.size for f in self.frames[: count + 1]) + count
            if joined > max_bytes:
                break
            count += 1
        batch, self.frames = self.frames[:count], self.frames[count:]
        return batch


@pytest.mark.parametrize("seed", range(30))
def test_random_operations_match_the_model(seed: int) -> None:
    """Random puts, pops, batches and clears agree with a straightforward model."""
    rng = random.Random(seed)
    policy = rng.choice(list(OverflowPolicy))
    max_messages, max_bytes = rng.randint(1, 8), rng.randint(1, 120)
    queue = SendQueue(max_messages, max_bytes, policy)
    model = ModelQueue(max_messages, max_bytes, policy)
    for step in range(400):
        action = rng.random()
        if action < 0.6:
            f = frame(rng.randint(1, max_bytes + 10), str(step % 10))
            assert queue.put(f) == model.put(f)
        elif action < 0.75 and model.frames:
            assert queue.pop() is model.frames.pop(0)
        elif action < 0.95 and model.frames:
            limit = rng.randint(1, max_bytes * 2)
            assert queue.pop_batch(limit) == model.pop_batch(limit)
        elif action >= 0.95:
            assert queue.clear() == len(model.frames)
            model.frames.clear()
        assert list(queue._frames) == model.frames
        assert queue.dropped == model.dropped
        assert len(queue) == len(model.frames)
        assert_accounting(queue)
