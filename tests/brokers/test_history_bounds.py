"""History bounds: read limits, per-channel byte caps (both engines), the memory budget, sweeps."""

from __future__ import annotations

import time

import pytest
import redis.asyncio

from tests.brokers.engines import MakeBroker, sleep_scaled
from tests.redis_support import Recorder
from wshub.brokers.base import HistoryOptions
from wshub.brokers.history import ENTRY_OVERHEAD, STREAM_OVERHEAD, MemoryHistory
from wshub.brokers.memory import MemoryBroker
from wshub.brokers.redis import RedisBroker
from wshub.brokers.redis_history import META_INFIX
from wshub.hub.permissions import Namespace
from wshub.testing import wait_until

pytestmark = pytest.mark.anyio

KEEP_THREE = HistoryOptions(size=3, ttl=60)


@pytest.mark.parametrize("since", [None, 0, 1, 2, 3, 4, 5, 6])
async def test_every_limit_reads_the_right_page(
    make_broker: MakeBroker, unique: str, since: int | None
) -> None:
    """3 kept of 5: every limit from 0 to 2·3+1 reads the newest (or first after since) ones."""
    broker, _ = await make_broker()
    for n in range(1, 6):
        await broker.publish(unique, b"%d" % n, history=KEEP_THREE)
    kept = [3, 4, 5]
    for limit in range(0, 2 * len(kept) + 2):
        page = await broker.history(unique, since=since, limit=limit)
        got = [p.offset for p in page.publications]
        if since is None:
            assert got == (kept[max(len(kept) - limit, 0) :] if limit else []), (limit, got)
            assert page.complete
        else:
            assert got == [k for k in kept if k > since][:limit], (since, limit, got)
            assert page.complete == (since >= 2), (since, limit)
        assert page.position.offset == 5
    everything = await broker.history(unique, since=since)
    assert [p.offset for p in everything.publications] == [
        k for k in kept if since is None or k > since
    ]


async def test_a_channel_keeps_only_its_newest_entries_within_its_byte_cap(
    make_broker: MakeBroker, unique: str
) -> None:
    """Over max_bytes, the oldest go first; the rest count len(data) + ENTRY_OVERHEAD each."""
    broker, _ = await make_broker()
    data = b"x" * 1000
    options = HistoryOptions(size=100, ttl=60, max_bytes=3 * (len(data) + ENTRY_OVERHEAD))
    for _ in range(10):
        await broker.publish(unique, data, history=options)
    page = await broker.history(unique)
    assert [p.offset for p in page.publications] == [8, 9, 10]
    assert not (await broker.history(unique, since=0)).complete
    assert (await broker.history(unique, since=7)).complete
    # One byte less than three entries: two are kept.
    tighter = HistoryOptions(size=100, ttl=60, max_bytes=options.max_bytes - 1)
    await broker.publish(unique, data, history=tighter)
    assert [p.offset for p in (await broker.history(unique)).publications] == [10, 11]
    # An entry larger than the cap is not kept, but still takes its offset.
    result = await broker.publish(unique, b"y" * 5000, history=options)
    page = await broker.history(unique)
    assert (page.position.offset, page.publications) == (result.offset, [])
    # No cap: only size bounds the channel.
    for _ in range(5):
        await broker.publish(unique, data, history=HistoryOptions(size=100, ttl=60))
    assert [p.offset for p in (await broker.history(unique)).publications] == [13, 14, 15, 16, 17]
    if isinstance(broker, MemoryBroker):
        assert broker.history_evictions == 7 + 2 + 3
    else:
        assert broker._history_store.evictions == 7 + 2 + 3


async def test_redis_keeps_a_running_byte_total_in_the_meta_hash(
    redis_url: str, prefix: str, admin: redis.asyncio.Redis, unique: str
) -> None:
    """The meta hash's ``bytes`` follows trimming by size and by bytes."""
    broker = RedisBroker(redis_url, prefix=prefix)
    await broker.start(Recorder())
    try:
        meta = f"{prefix}{META_INFIX}{unique}"
        for n in range(6):
            await broker.publish(unique, b"z" * (100 * n + 1), history=KEEP_THREE)
        kept = [301, 401, 501]
        assert int(await admin.hget(meta, "bytes") or 0) == sum(k + ENTRY_OVERHEAD for k in kept)
        capped = HistoryOptions(size=3, ttl=60, max_bytes=1000 + 2 * ENTRY_OVERHEAD)
        await broker.publish(unique, b"z" * 600, history=capped)
        assert int(await admin.hget(meta, "bytes") or 0) == 600 + ENTRY_OVERHEAD
        page = await broker.history(unique)
        assert [len(p.data) for p in page.publications] == [600]
    finally:
        await broker.close()


def test_the_memory_budget_evicts_the_least_recently_published_channels_first() -> None:
    """Past max_memory, old channels lose their oldest entries, then are forgotten."""
    data = b"d" * 10_000
    budget = 12 * (len(data) + ENTRY_OVERHEAD) + 3 * (STREAM_OVERHEAD + 10)
    history = MemoryHistory(max_memory=budget)
    options = HistoryOptions(size=100, ttl=60)
    channels = [f"chat:{n}" for n in range(10)]
    epochs = {}
    for channel in channels:
        for _ in range(5):
            _, epochs[channel] = history.append(channel, data, None, options)
            assert history.total_bytes <= budget
    pages = [history.read(channel, None, None) for channel in channels]
    kept = [[p.offset for p in page.publications] for page in pages]
    assert kept[-1] == kept[-2] == [1, 2, 3, 4, 5]
    # Forgotten channels form a prefix, then at most one partial channel keeping its
    # newest entries, then whole ones.
    forgotten = sum(1 for page in pages if page.position.offset == 0)
    assert forgotten >= 6 and all(page.position.offset == 0 for page in pages[:forgotten])
    assert all(
        k in ([1, 2, 3, 4, 5], [3, 4, 5], [2, 3, 4, 5], [4, 5], [5]) for k in kept[forgotten:]
    )
    assert history.evictions == 50 - sum(len(k) for k in kept)
    # A forgotten channel's next publish starts a new epoch.
    publication, epoch = history.append("chat:0", data, None, options)
    assert (publication.offset, epoch != epochs["chat:0"]) == (1, True)
    # Everything accounted adds up.
    assert history.total_bytes == sum(
        STREAM_OVERHEAD + len(s.channel) + sum(len(p.data) + ENTRY_OVERHEAD for _, p in s.items)
        for s in history._streams.values()
    )


def test_the_memory_budget_keeps_the_newest_entries_of_the_channel_published_to() -> None:
    """A single channel over the budget keeps its newest entries and its epoch."""
    data = b"d" * 1000
    history = MemoryHistory(max_memory=STREAM_OVERHEAD + 10 + 3 * (len(data) + ENTRY_OVERHEAD))
    options = HistoryOptions(size=100, ttl=60)
    epochs = {history.append("chat:alone", data, None, options)[1] for _ in range(10)}
    page = history.read("chat:alone", None, None)
    assert [p.offset for p in page.publications] == [8, 9, 10]
    assert len(epochs) == 1 and history.evictions == 7


def test_unbounded_memory_and_no_byte_cap_keep_everything_by_size() -> None:
    """max_memory 0 and max_bytes 0 bound a history by size only."""
    history = MemoryHistory(max_memory=0)
    for n in range(20):
        history.append(f"c{n}", b"x" * 100_000, None, HistoryOptions(size=5, ttl=60))
    assert history.channels == 20 and history.evictions == 0


def test_expired_histories_are_dropped_by_publishes_to_other_channels() -> None:
    """Each publish drops a few expired histories, whatever channel it is to."""
    history = MemoryHistory()
    brief, long = HistoryOptions(size=5, ttl=0.05), HistoryOptions(size=5, ttl=60)
    for n in range(3):
        history.append(f"brief:{n}", b"x" * 1000, None, brief)
    history.append("long:0", b"x", None, long)
    time.sleep(0.1)
    history.append("long:1", b"x", None, long)
    assert history.channels == 2
    assert history.total_bytes == sum(
        STREAM_OVERHEAD + len(c) + 1 + ENTRY_OVERHEAD for c in ("long:0", "long:1")
    )


async def test_the_memory_broker_sweeps_expired_histories_while_idle() -> None:
    """After the ttl and a sweep interval the broker holds no history and 0 bytes."""
    broker = MemoryBroker(history_max_memory=8 * 1024 * 1024, sweep_interval=0.05)
    await broker.start(Recorder())
    try:
        options = HistoryOptions(size=100, ttl=0.2)
        for n in range(200):
            await broker.publish(f"chat:{n}", b"x" * 10_000, history=options)
        assert broker.history_channels == 200 and broker.history_bytes > 2_000_000
        await wait_until(lambda: broker.history_channels == 0, within=3)
        assert broker.history_bytes == 0
    finally:
        await broker.close()
    assert broker._sweeper is None


async def test_a_ttl_change_moves_a_channel_to_its_new_expiry_group() -> None:
    """A channel re-published with a shorter ttl expires by the new one."""
    broker = MemoryBroker(sweep_interval=0.05)
    await broker.start(Recorder())
    try:
        await broker.publish("a", b"1", history=HistoryOptions(size=5, ttl=60))
        await broker.publish("a", b"2", history=HistoryOptions(size=5, ttl=0.1))
        await sleep_scaled(0.15)
        await wait_until(lambda: broker.history_channels == 0, within=3)
    finally:
        await broker.close()


def test_the_memory_broker_takes_its_budget_from_the_hub_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A hub builds its memory broker with ``history_max_memory``, override or environment."""
    from wshub import Hub

    assert Hub(history_max_memory=12345).broker.history_max_memory == 12345  # type: ignore[attr-defined]
    monkeypatch.setenv("WSHUB_HISTORY_MAX_MEMORY", "4567")
    assert Hub().broker.history_max_memory == 4567  # type: ignore[attr-defined]
    assert MemoryBroker(history_max_memory=777).history_max_memory == 777
    assert MemoryBroker().history_max_memory == 64 * 1024 * 1024


def test_namespace_byte_cap_defaults_and_validation() -> None:
    """history_max_bytes defaults to 1 MiB; None and 0 mean no cap; negative is refused."""
    assert Namespace(history_size=5, history_ttl=1).history_max_bytes == 1024 * 1024
    Namespace(history_size=5, history_ttl=1, history_max_bytes=None)
    Namespace(history_size=5, history_ttl=1, history_max_bytes=0)
    with pytest.raises(ValueError, match="history_max_bytes"):
        Namespace(history_size=5, history_ttl=1, history_max_bytes=-1)


def test_hub_history_options_carry_the_byte_cap() -> None:
    """The namespace's cap reaches the brokers in HistoryOptions (None becomes 0)."""
    from wshub import Hub

    hub = Hub(
        namespaces={
            "capped": Namespace(history_size=5, history_ttl=1, history_max_bytes=5000),
            "free": Namespace(history_size=5, history_ttl=1, history_max_bytes=None),
        }
    )
    assert hub.history_options("capped:x") == HistoryOptions(5, 1, 5000)
    assert hub.history_options("free:x") == HistoryOptions(5, 1, 0)
