"""The history contract of `wshub.history.History`, checked on every engine (memory and redis)."""

from __future__ import annotations

import asyncio

import pytest

from tests.brokers.engines import Engine, MakeBroker, poll_until, sleep_scaled
from wshub.brokers.base import HistoryOptions, Publication
from wshub.brokers.history import NO_HISTORY, StreamPosition
from wshub.testing import wait_until

pytestmark = pytest.mark.anyio

KEEP_FIVE = HistoryOptions(size=5, ttl=60)


async def publish_numbers(broker: Engine, channel: str, count: int) -> list[int | None]:
    """Publish ``b"1"`` .. ``b"<count>"`` with `KEEP_FIVE`; return the offsets given."""
    offsets = []
    for n in range(1, count + 1):
        result = await broker.publish(channel, b"%d" % n, history=KEEP_FIVE)
        offsets.append(result.offset)
    return offsets


def offsets_of(publications: list[Publication]) -> list[int | None]:
    """The offsets of ``publications``, in order."""
    return [p.offset for p in publications]


async def test_offsets_count_from_one_under_one_epoch(make_broker: MakeBroker, unique: str) -> None:
    """Publishes get offsets 1..N; the epoch is the same for all, and is the position's."""
    broker, _ = await make_broker()
    results = [await broker.publish(unique, b"%d" % n, history=KEEP_FIVE) for n in range(7)]
    assert [r.offset for r in results] == list(range(1, 8))
    epochs = {r.epoch for r in results}
    assert len(epochs) == 1 and "" not in epochs and None not in epochs
    page = await broker.history(unique, limit=0)
    assert page.position == StreamPosition(7, results[0].epoch or "")


async def test_unknown_channel_reads_no_history_and_creates_none(
    make_broker: MakeBroker, unique: str
) -> None:
    """Reading a channel never published to gives (0, "") and leaves it so."""
    broker, _ = await make_broker()
    for since in (None, 0, 5):
        page = await broker.history(unique, since=since)
        assert (page.position, page.publications) == (NO_HISTORY, [])
    assert (await broker.history(unique, since=0)).complete
    assert not (await broker.history(unique, since=5)).complete
    assert (await broker.history(unique, limit=0)).position == NO_HISTORY


async def test_kept_publications_carry_data_origin_and_offset(
    make_broker: MakeBroker, unique: str
) -> None:
    """A history read gives back the data bytes, the origin and the offset of each publication."""
    broker, _ = await make_broker()
    await broker.publish(unique, b'{"a": 1}', origin="c-1", history=KEEP_FIVE)
    await broker.publish(unique, b"[2]", history=KEEP_FIVE)
    page = await broker.history(unique)
    assert page.publications == [Publication(b'{"a": 1}', 1, "c-1"), Publication(b"[2]", 2)]
    assert page.complete


async def test_live_publications_carry_their_offsets(make_broker: MakeBroker, unique: str) -> None:
    """Subscribers receive kept publications with the offsets publish returned, in order."""
    broker, recorder = await make_broker()
    await broker.subscribe([unique])
    offsets = await publish_numbers(broker, unique, 20)
    await wait_until(lambda: len(recorder.data(unique)) == 20)
    received = [p for _, p in recorder.publications]
    assert offsets_of(received) == offsets == list(range(1, 21))
    assert [p.data for p in received] == [b"%d" % n for n in range(1, 21)]


async def test_reads_after_since_and_newest(make_broker: MakeBroker, unique: str) -> None:
    """since returns what follows it, oldest first; without since, the newest ``limit``."""
    broker, _ = await make_broker()
    await publish_numbers(broker, unique, 4)
    assert offsets_of((await broker.history(unique, since=1)).publications) == [2, 3, 4]
    assert offsets_of((await broker.history(unique, since=1, limit=2)).publications) == [2, 3]
    assert offsets_of((await broker.history(unique, limit=2)).publications) == [3, 4]
    assert offsets_of((await broker.history(unique)).publications) == [1, 2, 3, 4]
    assert offsets_of((await broker.history(unique, since=0)).publications) == [1, 2, 3, 4]


@pytest.mark.parametrize(
    ("since", "limit", "offsets", "complete"),
    [
        (3, None, [4, 5, 6, 7, 8], True),  # the oldest kept follows since: nothing missing
        (2, None, [4, 5, 6, 7, 8], False),  # offset 3 was trimmed
        (0, None, [4, 5, 6, 7, 8], False),
        (3, 2, [4, 5], True),
        (2, 2, [4, 5], False),
        (3, 0, [], True),
        (2, 0, [], False),  # limit 0 still tells whether recovery is possible
        (8, None, [], True),  # up to date
        (12, None, [], True),  # ahead (another epoch): recovered() compares epochs
        (None, None, [4, 5, 6, 7, 8], True),
        (None, 3, [6, 7, 8], True),
        (None, 0, [], True),
    ],
)
async def test_completeness_at_the_size_boundary(
    make_broker: MakeBroker,
    unique: str,
    since: int | None,
    limit: int | None,
    offsets: list[int],
    complete: bool,
) -> None:
    """With size 5 after 8 publishes, 4..8 are kept; a read is complete iff since+1 is kept."""
    broker, _ = await make_broker()
    await publish_numbers(broker, unique, 8)
    page = await broker.history(unique, since=since, limit=limit)
    assert offsets_of(page.publications) == offsets
    assert page.complete is complete
    assert page.position.offset == 8


async def test_limit_zero_reads_the_position_only(make_broker: MakeBroker, unique: str) -> None:
    """limit=0 returns no publications, with the current position."""
    broker, _ = await make_broker()
    result = await broker.publish(unique, b"1", history=KEEP_FIVE)
    page = await broker.history(unique, limit=0)
    assert page.publications == []
    assert page.position == StreamPosition(1, result.epoch or "")


async def test_a_smaller_size_trims_at_the_next_publish(
    make_broker: MakeBroker, unique: str
) -> None:
    """A namespace reconfigured to keep fewer publications keeps only that many afterwards."""
    broker, _ = await make_broker()
    await publish_numbers(broker, unique, 5)
    await broker.publish(unique, b"6", history=HistoryOptions(size=2, ttl=60))
    page = await broker.history(unique)
    assert offsets_of(page.publications) == [5, 6]


async def test_history_expires_after_ttl_and_a_new_epoch_starts(
    make_broker: MakeBroker, unique: str
) -> None:
    """ttl after the last publish the position is (0, ""); the next publish starts anew."""
    broker, _ = await make_broker()
    short = HistoryOptions(size=10, ttl=0.3)
    first = [await broker.publish(unique, b"%d" % n, history=short) for n in range(3)]

    async def forgotten() -> bool:
        return (await broker.history(unique, limit=0)).position == NO_HISTORY

    await poll_until(forgotten)
    page = await broker.history(unique, since=1)
    assert (page.publications, page.complete) == ([], False)
    again = await broker.publish(unique, b"x", history=short)
    assert again.offset == 1
    assert again.epoch not in (None, "", first[0].epoch)


async def test_each_publish_pushes_expiry_back(make_broker: MakeBroker, unique: str) -> None:
    """A channel published to more often than its ttl keeps its epoch and offsets."""
    broker, _ = await make_broker()
    options = HistoryOptions(size=10, ttl=0.6)
    results = []
    for n in range(6):
        results.append(await broker.publish(unique, b"%d" % n, history=options))
        await sleep_scaled(0.2)
    assert [r.offset for r in results] == list(range(1, 7))
    assert len({r.epoch for r in results}) == 1


async def test_publications_older_than_ttl_are_not_read(
    make_broker: MakeBroker, unique: str
) -> None:
    """An entry older than ttl is gone from reads while newer ones stay."""
    broker, _ = await make_broker()
    options = HistoryOptions(size=10, ttl=1.0)
    await broker.publish(unique, b"old", history=options)
    await sleep_scaled(0.7)
    await broker.publish(unique, b"new", history=options)
    await sleep_scaled(0.5)
    assert [p.data for p in (await broker.history(unique)).publications] == [b"new"]
    page = await broker.history(unique, since=0)
    assert (offsets_of(page.publications), page.complete) == ([2], False)
    assert (await broker.history(unique, since=1)).complete


@pytest.mark.parametrize("event", ["join", "leave"])
async def test_events_are_delivered_but_never_kept(
    make_broker: MakeBroker, unique: str, event: str
) -> None:
    """A join/leave publication reaches subscribers with its event, no offset, and no history."""
    broker, recorder = await make_broker()
    await broker.subscribe([unique])
    await broker.publish(unique, b"1", history=KEEP_FIVE)
    data = b'{"client":"c1","user":"ann"}'
    result = await broker.publish(unique, data, origin="c1", history=KEEP_FIVE, event=event)
    assert (result.offset, result.epoch) == (None, None)
    await wait_until(lambda: len(recorder.publications) == 2)
    assert recorder.publications[1] == (unique, Publication(data, None, "c1", event))
    page = await broker.history(unique)
    assert (page.position.offset, offsets_of(page.publications)) == (1, [1])


async def test_publish_without_history_keeps_nothing(make_broker: MakeBroker, unique: str) -> None:
    """A publish without history options gets no offset and leaves the channel without history."""
    broker, recorder = await make_broker()
    await broker.subscribe([unique])
    result = await broker.publish(unique, b"1")
    assert (result.offset, result.epoch) == (None, None)
    await wait_until(lambda: recorder.publications)
    assert recorder.publications[0][1].offset is None
    assert (await broker.history(unique)).position == NO_HISTORY


async def test_reads_return_after_live_copies_of_the_page_arrived(
    make_broker: MakeBroker, unique: str
) -> None:
    """While subscribed, every publication up to the position read was delivered first."""
    broker, recorder = await make_broker()
    await broker.subscribe([unique])
    options = HistoryOptions(size=10, ttl=60)

    stop = asyncio.Event()

    async def publish_until_stopped() -> None:
        # A flag, not cancel(): on Python 3.11, asyncio.wait_for inside redis-py can
        # swallow a cancellation that lands as a command completes.
        while not stop.is_set():
            await broker.publish(unique, b"1", history=options)

    publisher = asyncio.create_task(publish_until_stopped())
    try:
        for _ in range(100):
            position = (await broker.history(unique, limit=0)).position.offset
            delivered = recorder.publications[-1][1].offset if recorder.publications else 0
            assert delivered is not None and delivered >= position
    finally:
        stop.set()
        await publisher
