"""The hub's periodic position checks: the task running `GapFiller.run`.

Started with the hub and cancelled as it closes, before the gap filler itself.
"""

from __future__ import annotations

import asyncio
import contextlib

from wshub.hub.gaps import GapFiller

__all__ = ["PositionChecks"]


class PositionChecks:
    """The task checking the positions of channels with history (`wshub.hub.gaps`)."""

    def __init__(self, gaps: GapFiller) -> None:
        self.gaps = gaps
        self._task: asyncio.Task[None] | None = None

    def start(self, interval: float) -> None:
        """Start checking every ``interval`` seconds (in the running loop)."""
        self._task = asyncio.get_running_loop().create_task(
            self.gaps.run(interval), name="wshub-position-checks"
        )

    async def stop(self) -> None:
        """Cancel the checks and wait for them to end. Idempotent."""
        checks, self._task = self._task, None
        if checks is not None:
            checks.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await checks
