"""PublishLane: publishes start in order, at most ``depth`` in flight, drain and close."""

from __future__ import annotations

import asyncio

import pytest

from wshub.server.publish_lane import PublishLane

pytestmark = pytest.mark.anyio


async def test_publishes_start_in_order_and_stop_at_the_depth() -> None:
    """With depth 3, the 4th start waits for the oldest to finish; starts keep their order."""
    lane = PublishLane(3)
    gates = [asyncio.Event() for _ in range(5)]
    started: list[int] = []

    async def publish(i: int) -> None:
        started.append(i)
        await gates[i].wait()

    for i in range(3):
        await lane.start(publish(i))
    await asyncio.sleep(0)
    assert started == [0, 1, 2] and len(lane) == 3
    fourth = asyncio.create_task(lane.start(publish(3)))
    await asyncio.sleep(0.01)
    assert not fourth.done(), "a full lane must hold the reader back"
    gates[0].set()
    await asyncio.wait_for(fourth, 1)
    await asyncio.sleep(0)
    assert started == [0, 1, 2, 3]
    for gate in gates:
        gate.set()
    await lane.drain()
    assert len(lane) == 0


async def test_depth_one_answers_each_publish_in_turn() -> None:
    """Depth 1 is the old behaviour: one publish in flight at a time."""
    lane = PublishLane(1)
    running = 0
    peak = 0

    async def publish() -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.001)
        running -= 1

    for _ in range(10):
        await lane.start(publish())
    await lane.drain()
    assert peak == 1


async def test_close_cancels_what_is_left_when_its_wait_is_cancelled() -> None:
    """A shutdown that gives up on the handler does not leave publishes running."""
    lane = PublishLane(4)
    never = asyncio.Event()
    cancelled: list[int] = []

    async def publish(i: int) -> None:
        try:
            await never.wait()
        except asyncio.CancelledError:
            cancelled.append(i)
            raise

    for i in range(3):
        await lane.start(publish(i))
    closing = asyncio.create_task(lane.close())
    await asyncio.sleep(0.01)
    closing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await closing
    await asyncio.sleep(0.01)
    assert sorted(cancelled) == [0, 1, 2]
    assert len(lane) == 0
