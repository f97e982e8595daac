"""The publish pipeline: commands waiting at the same moment go to Redis in one write.

Each publish used to be its own round trip on a pooled connection. A publisher
that has several publishes in flight (one client sending a burst, or many clients
at once) then paid one round trip each, and, worse for fan-out, Redis sent each
publication to the subscribers on its own, so every process wrote to each of its
sockets once per publication instead of once per burst.

`PublishPipeline.submit` queues a command and returns a future, synchronously:
the order of `submit` calls is the order Redis runs the commands in. Commands
queued during one loop iteration, and those queued while a batch is on the wire,
go out as the next batch: one pipelined write on one connection, replies matched
to requests by position. Batches run one after another, never side by side, so
order holds across batches too: the per-channel order of a publisher's publishes
is the order of its `submit` calls.

Outcomes: a batch that failed before anything was written (no connection could be
had: refused, not reachable) fails with the `RedisError` itself: nothing ran. Once
the write has started, a failure (timeout waiting for the replies, connection lost)
fails the batch with `OutcomeUnknown`: Redis may have run some or all of it (a
SIGSTOPped Redis runs what it received when it resumes). The broker answers the
first ``unavailable`` and the second ``timeout``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import NoScriptError, RedisError, ResponseError

#: Commands in one pipelined write, at most: a batch bounds its own memory and latency.
MAX_BATCH = 512

Command = tuple[Any, ...]


class OutcomeUnknown(RedisError):
    """The batch was (partly) written to Redis, but its replies did not all come back."""


class PublishPipeline:
    """Ordered, batched execution of publish commands on a connection pool.

    Args:
        client: the pool the batches run on.
        scripts: Lua sources by SHA1, for EVALSHA commands that meet a Redis that
            lost its script cache (restart, SCRIPT FLUSH): those are run again with
            EVAL, in their order (NOSCRIPT means they did not run).
    """

    def __init__(self, client: Redis, scripts: dict[str, str] | None = None) -> None:
        self._client = client
        self._scripts = scripts or {}
        self._pending: list[tuple[Command, asyncio.Future[Any]]] = []
        self._task: asyncio.Task[None] | None = None

    def submit(self, *command: Any) -> asyncio.Future[Any]:
        """Queue ``command`` (e.g. ``"PUBLISH", channel, payload``) for the next batch.

        Returns:
            A future resolved with the command's reply, or with the `RedisError` that
            failed it (the whole batch fails together when its connection does).
        """
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.append((command, future))
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._drain(), name="wshub-redis-publish"
            )
        return future

    async def close(self) -> None:
        """Stop sending; fail the commands still waiting."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._fail(self._pending, RedisError("the Redis broker is closed"))
        self._pending = []

    async def _drain(self) -> None:
        try:
            while self._pending:
                batch = self._pending[:MAX_BATCH]
                del self._pending[:MAX_BATCH]
                await self._run(batch)
        finally:
            self._task = None

    async def _run(self, batch: list[tuple[Command, asyncio.Future[Any]]]) -> None:
        try:
            replies = await self._execute([command for command, _ in batch])
        except asyncio.CancelledError:
            self._fail(batch, RedisError("the Redis broker is closed"))
            raise
        except RedisError as exc:
            self._fail(batch, exc)
            return
        missing = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        if missing:
            await self._rerun_with_source(batch, replies, missing)
        for (_, future), reply in zip(batch, replies, strict=True):
            if future.done():
                continue
            if isinstance(reply, Exception):
                future.set_exception(reply)
            else:
                future.set_result(reply)

    async def _execute(self, commands: Sequence[Command]) -> list[Any]:
        """Write ``commands`` on one connection and read their replies, in order.

        Raises:
            RedisError: no connection could be had; nothing was written.
            OutcomeUnknown: the write started, but the replies did not all come back.
        """
        pool = self._client.connection_pool
        # Connecting (and redis-py's check that a pooled connection is still good)
        # happens here: a failure means nothing was written.
        conn = await pool.get_connection()  # type: ignore[no-untyped-call]
        try:
            try:
                await conn.send_packed_command(conn.pack_commands(commands), check_health=False)
                replies: list[Any] = []
                for _ in commands:
                    try:
                        replies.append(await conn.read_response())
                    except ResponseError as exc:  # an error reply; the connection is fine
                        replies.append(exc)
            except (RedisError, OSError) as exc:
                await conn.disconnect(nowait=True)
                raise OutcomeUnknown(f"no reply from Redis (outcome unknown): {exc}") from exc
            except BaseException:
                await conn.disconnect(nowait=True)  # replies may still be on their way
                raise
            return replies
        finally:
            await pool.release(conn)

    async def _rerun_with_source(
        self,
        batch: list[tuple[Command, asyncio.Future[Any]]],
        replies: list[Any],
        missing: list[int],
    ) -> None:
        # Only EVALSHA commands fail with NOSCRIPT, and for one script all of them do,
        # so re-running those in order keeps each history channel's order.
        rerun: list[Command] = []
        for i in missing:
            command = batch[i][0]
            source = self._scripts.get(str(command[1]))
            if source is None:
                rerun.append(command)  # unknown script: its NOSCRIPT error stands
            else:
                rerun.append(("EVAL", source, *command[2:]))
        try:
            again = await self._execute(rerun)
        except RedisError as exc:
            again = [exc] * len(rerun)
        for i, reply in zip(missing, again, strict=True):
            replies[i] = reply

    @staticmethod
    def _fail(batch: list[tuple[Command, asyncio.Future[Any]]], exc: Exception) -> None:
        for _, future in batch:
            if not future.done():
                future.set_exception(exc)
