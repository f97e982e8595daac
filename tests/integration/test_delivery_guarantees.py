"""Delivery guarantees under real Redis faults (docs/guarantees.md).

Two ``wshub serve`` processes share one redis-server: subscriber A (a real
`wshub.client.Client`) is on process 1, publisher B on process 2 and publishes with
``retry=True`` (idempotency keys). Each test checks that the history holds each
message once, and that A received each once, in offset order, on the connection it
opened first (no state change after ``connected``), or, where Redis lost its data,
the documented outcome: a ``gap`` frame naming the new epoch.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import redis.asyncio

from tests.redis_support import RedisServer
from wshub.client import Client, ClientState
from wshub.client.models import Message, Recovery, StateChange
from wshub.testing import TIME_SCALE

from .processes import NO_RATE_LIMIT, HubProcess, eventually, hub_env, hub_processes

pytestmark = [pytest.mark.anyio, pytest.mark.redis]

CHANNEL = "chat:room"  # the demo's chat namespace: history 100 for 300 s
PROBE = "0.5"


class Subscriber:
    """Client A: records every message, recovery outcome and state change."""

    def __init__(self, url: str) -> None:
        self.messages: list[Message] = []
        self.recoveries: list[Recovery] = []
        self.states: list[ClientState] = []
        self.client = Client(url, on_state=self._state, backoff_cap=1.0)
        self.hub: HubProcess | None = None

    def _state(self, change: StateChange) -> None:
        self.states.append(change.state)

    async def start(self) -> None:
        await self.client.connect()
        self.welcome = self.client.welcome
        await self.client.subscribe(
            CHANNEL, on_message=self.messages.append, on_recover=self.recoveries.append
        )

    async def metric(self, name: str) -> float:
        """A counter of process 1's ``/metrics`` (0 when absent)."""
        assert self.hub is not None
        async with httpx.AsyncClient(trust_env=False, timeout=5) as http:
            text = (await http.get(self.hub.http_url("/metrics"))).text
        for line in text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        return 0.0

    def texts(self) -> list[str]:
        return [m.data["text"] for m in self.messages]

    def offsets(self) -> list[int | None]:
        return [m.offset for m in self.messages]

    def assert_original_connection(self) -> None:
        assert self.states == [ClientState.CONNECTING, ClientState.CONNECTED], self.states
        assert self.client.welcome is self.welcome  # never welcomed again


@contextlib.asynccontextmanager
async def setup(redis_server: RedisServer, prefix: str) -> AsyncIterator[tuple[Subscriber, Client]]:
    env = hub_env(
        redis_server.url,
        prefix,
        WSHUB_REDIS_PROBE_INTERVAL=PROBE,
        WSHUB_POSITION_CHECK_INTERVAL="1",
        **NO_RATE_LIMIT,
    )
    async with hub_processes(2, env) as hubs:
        a = Subscriber(hubs[0].ws_url())
        b = Client(hubs[1].ws_url(), backoff_base=0.1, backoff_cap=0.5)
        a.hub = hubs[0]
        try:
            await a.start()
            await b.connect()
            yield a, b
        finally:
            await a.client.close()
            await b.close()


async def history_texts(client: Client) -> tuple[list[int], list[str], str]:
    page = await client.history(CHANNEL)
    return (
        [m.offset or 0 for m in page.messages],
        [m.data["text"] for m in page.messages],
        page.epoch,
    )


async def publish(b: Client, text: str) -> int | None:
    return await b.publish(CHANNEL, {"text": text}, retry=True, retry_for=30)


def assert_exactly_once_in_order(
    a: Subscriber, offsets: list[int], texts: list[str], sent: list[str]
) -> None:
    """History: every sent text once, offsets 1..n; A: the same, in the same order."""
    assert sorted(texts) == sorted(sent), "history lost or duplicated a publication"
    assert len(set(texts)) == len(texts)
    assert offsets == list(range(1, len(offsets) + 1)), "history offsets not contiguous"
    assert a.offsets() == offsets, "the subscriber's offsets differ from the history's"
    assert a.texts() == texts, "the subscriber got other messages than the history holds"


async def test_redis_sigstop_with_retried_idempotent_publishes_is_exactly_once(
    redis_server: RedisServer, prefix: str
) -> None:
    """Headline: Redis SIGSTOPped 3 s mid-publishing; B retries with idempotency keys.

    Within 10 s of SIGCONT, A holds every message of the history once, offsets
    contiguous, without reconnecting.
    """
    async with asyncio.timeout(90 * TIME_SCALE), setup(redis_server, prefix) as (a, b):
        sent = [f"m{n}" for n in range(60)]
        pid = redis_server._proc.pid  # type: ignore[union-attr]
        resumed = 0.0

        async def fault() -> None:
            nonlocal resumed
            await eventually(lambda: _async(len(a.messages) >= 15), 20, "15 delivered")
            os.kill(pid, signal.SIGSTOP)
            try:
                await asyncio.sleep(3)
            finally:
                os.kill(pid, signal.SIGCONT)
                resumed = time.monotonic()

        async def publishing() -> None:
            # Four publishers in flight at once, so that some are on the wire at SIGSTOP.
            queue = list(sent)

            async def worker() -> None:
                while queue:
                    await publish(b, queue.pop(0))
                    await asyncio.sleep(0.02)

            await asyncio.gather(*(worker() for _ in range(4)))

        await asyncio.gather(fault(), publishing())
        assert resumed
        await eventually(lambda: _async(len(a.messages) >= len(sent)), 10, "all delivered")
        delivered_after = time.monotonic() - resumed
        print(f"all delivered {delivered_after:.2f} s after SIGCONT")
        assert delivered_after < 10 * TIME_SCALE
        await asyncio.sleep(1.5)  # no late duplicates (a position check runs every 1 s)
        offsets, texts, _ = await history_texts(a.client)
        assert_exactly_once_in_order(a, offsets, texts, sent)
        a.assert_original_connection()
        assert not a.recoveries  # nothing was lost: no gap
        refilled = await a.metric("wshub_gap_refilled_messages_total")
        print(f"SIGSTOP: {refilled:.0f} refilled from history")


async def test_client_kill_pubsub_during_a_burst_is_refilled(
    redis_server: RedisServer, admin: redis.asyncio.Redis, prefix: str
) -> None:
    """CLIENT KILL TYPE pubsub mid-burst: the missed range is refilled from history."""
    async with asyncio.timeout(60 * TIME_SCALE), setup(redis_server, prefix) as (a, b):
        sent = [f"k{n}" for n in range(80)]

        async def burst() -> None:
            await asyncio.gather(*(publish(b, text) for text in sent[:40]))
            await admin.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
            await asyncio.gather(*(publish(b, text) for text in sent[40:]))

        await burst()
        await eventually(lambda: _async(len(a.messages) >= len(sent)), 10, "all delivered")
        await asyncio.sleep(1.5)
        offsets, texts, _ = await history_texts(a.client)
        assert_exactly_once_in_order(a, offsets, texts, sent)
        a.assert_original_connection()
        refilled = await a.metric("wshub_gap_refilled_messages_total")
        print(f"CLIENT KILL: {refilled:.0f} refilled from history")


async def test_subscriber_over_its_output_buffer_limit_is_refilled(
    redis_server: RedisServer, admin: redis.asyncio.Redis, prefix: str
) -> None:
    """A tiny ``client-output-buffer-limit pubsub`` drops process 1's subscriber mid-burst."""
    async with asyncio.timeout(60 * TIME_SCALE), setup(redis_server, prefix) as (a, b):
        await a.client.subscribe("blob")  # so that the blobs go to process 1's subscriber
        await admin.config_set("client-output-buffer-limit", "pubsub 32kb 16kb 1")
        sent = [f"o{n}" for n in range(60)]
        blob = f'{{"blob":"{"x" * 48 * 1024}"}}'  # one overflows the limit

        async def blobs() -> None:
            await asyncio.sleep(0.05)
            async with admin.pipeline(transaction=False) as pipe:
                for _ in range(10):
                    pipe.publish(f"{prefix}blob", blob)
                await pipe.execute()

        await asyncio.gather(blobs(), *(publish(b, text) for text in sent))
        await eventually(lambda: _async(len(a.messages) >= len(sent)), 10, "all delivered")
        await asyncio.sleep(1.5)
        offsets, texts, _ = await history_texts(a.client)
        assert_exactly_once_in_order(a, offsets, texts, sent)
        a.assert_original_connection()
        assert "output buffer limits" in redis_server.log()
        refilled = await a.metric("wshub_gap_refilled_messages_total")
        print(f"output buffer: {refilled:.0f} refilled from history")


async def test_redis_killed_and_restarted_empty_sends_a_gap_frame_with_the_new_epoch(
    redis_server: RedisServer, prefix: str
) -> None:
    """Redis restarted without persistence: history and epoch are gone.

    A gets a ``gap`` (its recovery fails, naming the new epoch, offset 0) on its
    original connection, then every later message once, in order, from offset 1.
    """
    async with asyncio.timeout(90 * TIME_SCALE), setup(redis_server, prefix) as (a, b):
        before = [f"a{n}" for n in range(10)]
        for text in before:
            await publish(b, text)
        await eventually(lambda: _async(len(a.messages) == 10), 5, "10 delivered")
        _, _, old_epoch = await history_texts(a.client)
        redis_server.restart()
        await eventually(lambda: _async(bool(a.recoveries)), 15, "a gap frame")
        after = [f"b{n}" for n in range(10)]
        for text in after:
            await publish(b, text)
        await eventually(lambda: _async(len(a.messages) == 20), 10, "10 more delivered")
        await asyncio.sleep(1.5)
        [gap] = a.recoveries
        assert gap.recovered is False and gap.epoch not in (None, "", old_epoch)
        assert gap.offset == 0
        offsets, texts, epoch = await history_texts(a.client)
        assert epoch == gap.epoch
        assert texts == after and offsets == list(range(1, 11))
        assert a.texts() == before + after
        assert a.offsets() == list(range(1, 11)) * 2
        a.assert_original_connection()
        assert await a.metric("wshub_gaps_unrecoverable_total") == 1


async def _async(value: Any) -> Any:
    return value
