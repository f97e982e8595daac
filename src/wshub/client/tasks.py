"""The client's background tasks, named so that one kind can be cancelled on its own."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any


class BackgroundTasks:
    """Tasks the client starts (resubscribes, epoch reads, token refreshes), held until done.

    A task without a reference may be garbage-collected while it runs, hence the set.
    """

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Awaitable[Any], name: str) -> None:
        """Run ``coro`` as the task ``wshub-client-<name>``."""
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        task.set_name(f"wshub-client-{name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def cancel(self, name: str) -> None:
        """Cancel the tasks started under ``name``."""
        for task in list(self._tasks):
            if task.get_name() == f"wshub-client-{name}":
                task.cancel()

    def cancel_all(self) -> None:
        """Cancel every task."""
        for task in list(self._tasks):
            task.cancel()
