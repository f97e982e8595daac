"""PublishLane: one connection's publishes in flight together, started in frame order.

Answering publishes one by one costs a broker round trip each before the next
frame is even read: on Redis, a client with a burst to send then publishes at one
message per round trip, and each publication reaches every subscriber on its own.
The lane lets the endpoint read on while publishes are on their way, so that they
meet in the broker's pipeline (`wshub.brokers.redis_pipeline`).

Order is kept: a publish runs in a task started in frame order, and the hub and
brokers submit a publish to the broker before their first suspension, so the
broker sees one connection's publishes in the order the client sent them. Any
other op waits for the lane to drain first, so its reply comes after the replies
of the publishes sent before it, as when every frame was answered in turn.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Coroutine
from typing import Any


class PublishLane:
    """The publishes of one connection that are in flight.

    Args:
        depth: publishes in flight at most; the reader waits for the oldest beyond it.
    """

    def __init__(self, depth: int) -> None:
        self._depth = max(1, depth)
        self._tasks: collections.deque[asyncio.Task[Any]] = collections.deque()

    def __len__(self) -> int:
        return len(self._tasks)

    async def start(self, publish: Coroutine[Any, Any, Any]) -> None:
        """Run ``publish`` in the lane, after waiting for room when the lane is full."""
        tasks = self._tasks
        while tasks and tasks[0].done():
            tasks.popleft()
        if len(tasks) >= self._depth:
            try:
                # asyncio.wait: neither raises what the task raised nor cancels it
                # when this wait is cancelled (close() then cancels it).
                await asyncio.wait((tasks[0],))
            except BaseException:
                publish.close()
                raise
            tasks.popleft()
        tasks.append(asyncio.get_running_loop().create_task(publish))

    async def drain(self) -> None:
        """Wait until every publish in the lane has been answered."""
        tasks = self._tasks
        while tasks:
            await asyncio.wait((tasks[0],))
            tasks.popleft()

    async def close(self) -> None:
        """Let the publishes in flight finish (their answers may still go out); cancel
        them if this wait is itself cancelled (a shutdown that gave up on the handler)."""
        try:
            await self.drain()
        finally:
            for task in self._tasks:
                task.cancel()
            for task in self._tasks:
                with contextlib.suppress(BaseException):
                    await task
            self._tasks.clear()
