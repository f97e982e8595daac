"""The broker contract of `wshub.brokers.base`, checked on every engine (memory and redis)."""

from __future__ import annotations

import pytest

from tests.brokers.engines import MakeBroker
from tests.redis_support import Recorder
from wshub.brokers import BrokerState
from wshub.brokers.redis import RedisBroker
from wshub.testing import wait_until

pytestmark = pytest.mark.anyio


async def test_start_reports_connected(make_broker: MakeBroker) -> None:
    """start() leaves the broker CONNECTED and ready, and reports it through on_state."""
    broker, recorder = await make_broker()
    assert broker.state is BrokerState.CONNECTED
    assert recorder.states == [BrokerState.CONNECTED]
    assert await broker.ready()


async def test_publish_reaches_subscriber_with_exact_bytes(
    make_broker: MakeBroker, unique: str
) -> None:
    """A publication reaches on_publication with the very bytes published, not re-encoded."""
    broker, recorder = await make_broker()
    await broker.subscribe([unique])
    data = b'{ "text" : "h\\u00e9llo",  "n": [1, 2.50] }'
    await broker.publish(unique, data)
    await wait_until(lambda: recorder.data(unique))
    assert recorder.data(unique) == [data]
    assert recorder.publications[0][1].origin is None


async def test_order_of_1000_publishes_is_kept(make_broker: MakeBroker, unique: str) -> None:
    """1,000 publishes on one channel arrive complete and in publish order."""
    broker, recorder = await make_broker()
    await broker.subscribe([unique])
    for n in range(1000):
        await broker.publish(unique, b"%d" % n)
    await wait_until(lambda: len(recorder.data(unique)) >= 1000)
    assert recorder.data(unique) == [b"%d" % n for n in range(1000)]


async def test_unsubscribe_stops_delivery(make_broker: MakeBroker, unique: str) -> None:
    """After unsubscribe returns, publications on that channel are no longer delivered."""
    broker, recorder = await make_broker()
    gone, kept = f"{unique}-gone", f"{unique}-kept"
    await broker.subscribe([gone, kept])
    await broker.unsubscribe([gone])
    await broker.publish(gone, b"1")
    await broker.publish(kept, b"2")
    # `kept` was published after `gone`: once it is here, `gone` would have been too.
    await wait_until(lambda: recorder.data(kept))
    assert recorder.data(gone) == []


async def test_unsubscribed_channels_are_not_delivered(
    make_broker: MakeBroker, unique: str
) -> None:
    """Publications on a channel the broker never subscribed to are not delivered."""
    broker, recorder = await make_broker()
    await broker.subscribe([unique])
    await broker.publish(f"{unique}-other", b"1")
    await broker.publish(unique, b"2")
    await wait_until(lambda: recorder.data(unique))
    assert [channel for channel, _ in recorder.publications] == [unique]


async def test_origin_is_carried(make_broker: MakeBroker, unique: str) -> None:
    """The origin given to publish arrives with the publication, the data unchanged."""
    broker, recorder = await make_broker()
    await broker.subscribe([unique])
    await broker.publish(unique, b'{"a":1}', origin="client-42")
    await wait_until(lambda: recorder.publications)
    publication = recorder.publications[0][1]
    assert (publication.data, publication.origin, publication.offset) == (
        b'{"a":1}',
        "client-42",
        None,
    )


async def test_close_is_idempotent(make_broker: MakeBroker, unique: str) -> None:
    """close() twice is fine; afterwards the broker is CLOSED and not ready."""
    broker, _ = await make_broker()
    await broker.subscribe([unique])
    await broker.close()
    await broker.close()
    assert broker.state is BrokerState.CLOSED
    assert not await broker.ready()


async def test_two_brokers_on_one_redis_both_receive(redis_url: str, prefix: str) -> None:
    """Two brokers on one Redis (two processes) both receive what either publishes, in order."""
    first, second = RedisBroker(redis_url, prefix=prefix), RedisBroker(redis_url, prefix=prefix)
    seen_first, seen_second = Recorder(), Recorder()
    await first.start(seen_first)
    await second.start(seen_second)
    try:
        await first.subscribe(["room"])
        await second.subscribe(["room"])
        for n in range(50):
            await (first if n % 2 else second).publish("room", b"%d" % n, origin=f"c{n}")
        expected = [b"%d" % n for n in range(50)]
        await wait_until(lambda: len(seen_first.data("room")) == 50)
        await wait_until(lambda: len(seen_second.data("room")) == 50)
        assert seen_first.data("room") == seen_second.data("room") == expected
        assert seen_second.publications[7][1].origin == "c7"
    finally:
        await first.close()
        await second.close()
