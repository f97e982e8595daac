"""Epochs from the first read, idempotency keys, and publish outcomes, on every engine."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

from tests.brokers.engines import MakeBroker, poll_until, sleep_scaled
from tests.redis_support import Recorder, RedisServer
from wshub.brokers.base import HistoryOptions, Idempotency
from wshub.brokers.redis import RedisBroker
from wshub.core.errors import BrokerUnavailable, PublishTimeout
from wshub.testing import TIME_SCALE

pytestmark = pytest.mark.anyio

KEEP = HistoryOptions(size=10, ttl=60)


async def test_a_read_with_options_starts_the_epoch_and_the_publish_continues_it(
    make_broker: MakeBroker, unique: str
) -> None:
    """The epoch exists from the first read (subscribe): offset 0, then 1 in the same epoch."""
    broker, _ = await make_broker()
    first = await broker.history(unique, limit=0, options=KEEP)
    assert first.position.offset == 0 and len(first.position.epoch) == 8
    again = await broker.history(unique, since=0, options=KEEP)
    assert again.position == first.position and again.complete
    result = await broker.publish(unique, b"1", history=KEEP)
    assert (result.offset, result.epoch) == (1, first.position.epoch)
    # Without options a read still creates nothing (see test_history_conformance).
    assert (await broker.history(unique + "x")).position.epoch == ""


async def test_an_idempotency_key_publishes_once_and_answers_the_first_result(
    make_broker: MakeBroker, unique: str
) -> None:
    """Same key, same channel: one publication, delivered and kept once, one result."""
    broker, recorder = await make_broker()
    await broker.subscribe([unique, unique + "-plain"])
    once = Idempotency("k1", 60)
    results = [await broker.publish(unique, b"1", history=KEEP, idempotency=once) for _ in range(3)]
    assert len({(r.offset, r.epoch) for r in results}) == 1 and results[0].offset == 1
    other = await broker.publish(unique, b"2", history=KEEP, idempotency=Idempotency("k2", 60))
    assert other.offset == 2
    for _ in range(3):
        await broker.publish(unique + "-plain", b"3", idempotency=once)  # another channel
    page = await broker.history(unique)
    assert [p.data for p in page.publications] == [b"1", b"2"]

    async def delivered() -> bool:
        return len(recorder.data(unique)) == 2 and len(recorder.data(unique + "-plain")) == 1

    await poll_until(delivered)
    await asyncio.sleep(0.1)
    assert recorder.data(unique) == [b"1", b"2"] and recorder.data(unique + "-plain") == [b"3"]


async def test_an_idempotency_key_is_forgotten_after_its_window(
    make_broker: MakeBroker, unique: str
) -> None:
    broker, _ = await make_broker()
    once = Idempotency("k", 0.3 * TIME_SCALE)
    assert (await broker.publish(unique, b"1", history=KEEP, idempotency=once)).offset == 1
    assert (await broker.publish(unique, b"1", history=KEEP, idempotency=once)).offset == 1
    await sleep_scaled(0.5)
    assert (await broker.publish(unique, b"1", history=KEEP, idempotency=once)).offset == 2


async def test_concurrent_retries_from_two_processes_publish_once(
    redis_url: str, prefix: str, unique: str
) -> None:
    """Two brokers (two processes' worth) racing the same key: one publication."""
    brokers = [RedisBroker(redis_url, prefix=prefix) for _ in range(2)]
    for broker in brokers:
        await broker.start(Recorder())
    try:
        once = Idempotency("race", 60)
        results = await asyncio.gather(
            *(b.publish(unique, b"1", history=KEEP, idempotency=once) for b in brokers * 10)
        )
        assert {r.offset for r in results} == {1}
        assert len((await brokers[0].history(unique)).publications) == 1
    finally:
        for broker in brokers:
            await broker.close()


async def test_a_publish_to_a_stopped_redis_is_a_timeout_and_lands_on_resume(
    redis_server: RedisServer, prefix: str, unique: str
) -> None:
    """SIGSTOP: the publish is written, unanswered: PublishTimeout (not plain unavailable).

    Redis runs it when it resumes, so a retry with the same key publishes nothing more.
    """
    broker = RedisBroker(redis_server.url, prefix=prefix, timeout=0.5, probe_interval=60)
    await broker.start(Recorder())
    pid = redis_server._proc.pid  # type: ignore[union-attr]
    try:
        once = Idempotency("stop", 60)
        # A pooled connection that is open already: the publish is written at once.
        # (A new connection would time out in its handshake, before anything was
        # written: that is `unavailable`, rightly.)
        await broker.publish(unique + "-warm", b"0")
        os.kill(pid, signal.SIGSTOP)
        try:
            with pytest.raises(PublishTimeout):
                await broker.publish(unique, b"1", history=KEEP, idempotency=once)
        finally:
            os.kill(pid, signal.SIGCONT)

        async def connected() -> bool:
            return await broker.ready()

        await poll_until(connected, 10)

        async def retried() -> bool:
            try:
                result = await broker.publish(unique, b"1", history=KEEP, idempotency=once)
            except BrokerUnavailable:
                return False
            return result.offset == 1

        await poll_until(retried, 10)
        assert [p.data for p in (await broker.history(unique)).publications] == [b"1"]
    finally:
        await broker.close()


async def test_a_publish_to_a_dead_redis_is_unavailable_not_timeout(
    redis_server: RedisServer, prefix: str, unique: str
) -> None:
    """Connection refused: certainly not published: BrokerUnavailable, not PublishTimeout."""
    broker = RedisBroker(redis_server.url, prefix=prefix, timeout=0.5, probe_interval=60)
    await broker.start(Recorder())
    try:
        redis_server.stop()
        for _ in range(3):
            with pytest.raises(BrokerUnavailable) as raised:
                await broker.publish(unique, b"1", history=KEEP)
            assert not isinstance(raised.value, PublishTimeout), raised.value
    finally:
        await broker.close()
