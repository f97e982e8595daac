"""RedisBroker and Publisher on ``redis+sentinel://``: URL parsing, delivery, failovers.

The process tests run a master, a replica and a sentinel (`tests.sentinel_support`),
and kill the master (SIGKILL) or have the sentinel demote it (``SENTINEL FAILOVER``):
the brokers must report DISCONNECTED, find the promoted replica through the
sentinel, resubscribe there and report CONNECTED, without being restarted.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest
import redis

from tests.redis_support import Recorder, RedisServer
from tests.sentinel_support import SentinelSetup, sentinel_setup
from wshub.brokers import BrokerState, broker_from_url
from wshub.brokers.base import HistoryOptions
from wshub.brokers.redis import RedisBroker, check_url, redis_location
from wshub.brokers.redis_connections import SentinelTarget, parse_sentinel_url
from wshub.core.errors import BrokerUnavailable
from wshub.publisher import Publisher
from wshub.testing import TIME_SCALE, wait_until

FAILOVER_WITHIN = 15.0  # seconds (scaled) from losing the master to publishing again


# -- URLs -----------------------------------------------------------------------------


def test_sentinel_url_names_sentinels_service_db_and_credentials() -> None:
    """Hosts (default port 26379, IPv6), the service, ``db``; userinfo is the master's login."""
    target = parse_sentinel_url(
        "redis+sentinel://app:p%40ss@s1:26380,s2,[::1]:26381/mymaster"
        "?db=3&sentinel_password=sp&sentinel_username=watch"
    )
    assert target == SentinelTarget(
        sentinels=(("s1", 26380), ("s2", 26379), ("::1", 26381)),
        service="mymaster",
        db=3,
        username="app",
        password="p@ss",
        sentinel_username="watch",
        sentinel_password="sp",
    )
    assert target.master_options() == {"db": 3, "username": "app", "password": "p@ss"}
    assert target.sentinel_options() == {"username": "watch", "password": "sp"}
    assert "p@ss" not in repr(target) and "sp" not in repr(target).replace("sentinels", "")
    bare = parse_sentinel_url("redis+sentinel://:secret@h/svc")
    assert (bare.username, bare.password, bare.db) == (None, "secret", 0)


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("redis+sentinel://:s3cret@h:26379", "one service"),
        ("redis+sentinel://:s3cret@h:26379/a/b", "one service"),
        ("redis+sentinel://:s3cret@h:99999/m", "not a port"),
        ("redis+sentinel://:s3cret@h:x/m", "not a port"),
        ("redis+sentinel://:s3cret@h,/m", "no host"),
        ("redis+sentinel://:s3cret@h/m?password=s3cret", "unknown"),
        ("redis+sentinel://:s3cret@h/m?db=zero", "database number"),
    ],
)
def test_malformed_sentinel_urls_are_refused_without_leaking_passwords(
    url: str, match: str
) -> None:
    """check_url (so RedisBroker and Publisher) refuses them; no message quotes the password."""
    with pytest.raises(ValueError, match=match) as caught:
        check_url(url)
    assert "s3cret" not in str(caught.value)
    with pytest.raises(ValueError):
        RedisBroker(url)
    with pytest.raises(ValueError):
        Publisher(url)


def test_sentinel_location_names_sentinels_and_service_never_passwords() -> None:
    """Logs and errors show the sentinels and the service."""
    url = "redis+sentinel://u:s3cret@10.0.0.1:26379,[::1]/cache?sentinel_password=s3cret"
    assert redis_location(url) == "sentinel 10.0.0.1:26379,[::1]:26379/cache"
    assert "s3cret" not in redis_location("redis+sentinel://:s3cret@/")


def test_sentinel_scheme_maps_to_the_redis_broker() -> None:
    """``broker_from_url`` picks RedisBroker for redis+sentinel://."""
    broker = broker_from_url("redis+sentinel://127.0.0.1:1/mymaster", prefix="p:")
    assert isinstance(broker, RedisBroker)


# -- real sentinels -------------------------------------------------------------------


@pytest.fixture
def sentinels() -> Iterator[SentinelSetup]:
    """A master, a replica and one sentinel, ready to fail over."""
    with sentinel_setup(1) as setup:
        yield setup


def fast_broker(url: str, prefix: str) -> RedisBroker:
    """A RedisBroker with quick reconnects and probes."""
    return RedisBroker(
        url, prefix=prefix, reconnect_base=0.05, reconnect_cap=0.5, probe_interval=0.5, timeout=1.0
    )


def client_names(server: RedisServer) -> list[str]:
    """The names of the clients connected to ``server``, sorted."""
    with redis.Redis(port=server.port, socket_timeout=2) as client:
        return sorted(c["name"] for c in client.client_list() if c["name"])


async def publish_until_it_succeeds(broker: RedisBroker, channel: str, data: bytes) -> float:
    """Retry a publish until the broker takes it (within `FAILOVER_WITHIN`); return when."""
    deadline = time.monotonic() + FAILOVER_WITHIN * TIME_SCALE
    while True:
        try:
            await broker.publish(channel, data)
            return time.monotonic()
        except BrokerUnavailable:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)


@pytest.mark.anyio
@pytest.mark.redis
async def test_brokers_and_publishers_reach_each_other_through_the_master(
    sentinels: SentinelSetup, prefix: str
) -> None:
    """Both connections of a broker go to the master the sentinel names; delivery works."""
    receiver, sender = fast_broker(sentinels.url, prefix), fast_broker(sentinels.url, prefix)
    recorder = Recorder()
    await receiver.start(recorder)
    await sender.start(Recorder())
    try:
        assert receiver.state is sender.state is BrokerState.CONNECTED
        await receiver.subscribe(["room"])
        await sender.publish("room", b'{"n":1}')
        kept = await sender.publish("room", b'{"n":2}', history=HistoryOptions(size=10, ttl=60))
        assert kept.offset == 1
        async with Publisher(sentinels.url, prefix=prefix) as pub:
            assert await pub.publish("room", {"n": 3}) == 1
        with Publisher(sentinels.url, prefix=prefix) as pub:
            assert pub.publish_sync("room", {"n": 4}) == 1
        expected = [b'{"n":1}', b'{"n":2}', b'{"n":3}', b'{"n":4}']
        await wait_until(lambda: recorder.data("room") == expected)
        assert (await receiver.history("room")).publications[0].data == b'{"n":2}'
        names = client_names(sentinels.master)
        assert names.count("wshub-sub") == 2 and "wshub-pub" in names
        assert "wshub-sub" not in client_names(sentinels.replica)
    finally:
        await receiver.close()
        await sender.close()


@pytest.mark.anyio
@pytest.mark.redis
async def test_master_killed_brokers_follow_the_failover_and_resubscribe(
    sentinels: SentinelSetup, prefix: str
) -> None:
    """SIGKILL the master: DISCONNECTED, then CONNECTED on the promoted replica, subscribed."""
    receiver, sender = fast_broker(sentinels.url, prefix), fast_broker(sentinels.url, prefix)
    recorder = Recorder()
    await receiver.start(recorder)
    await sender.start(Recorder())
    try:
        await receiver.subscribe(["room"])
        await sender.publish("room", b'{"n":1}')
        await wait_until(lambda: recorder.data("room") == [b'{"n":1}'])

        killed = time.monotonic()
        sentinels.master.stop()
        await wait_until(lambda: receiver.state is BrokerState.DISCONNECTED, 5)
        with pytest.raises(BrokerUnavailable):
            await sender.publish("room", b'{"lost":true}')

        await publish_until_it_succeeds(sender, "probe-free", b"{}")
        await wait_until(lambda: receiver.state is BrokerState.CONNECTED, FAILOVER_WITHIN)
        assert time.monotonic() - killed < FAILOVER_WITHIN * TIME_SCALE
        assert sentinels.failed_over()
        assert recorder.states == [
            BrokerState.CONNECTED,
            BrokerState.DISCONNECTED,
            BrokerState.CONNECTED,
        ]

        # The receiver resubscribed on the new master: publications after the failover
        # reach it, from the broker and from other programs alike.
        await sender.publish("room", b'{"n":2}')
        with Publisher(sentinels.url, prefix=prefix) as pub:
            assert pub.publish_sync("room", {"n": 3}) == 1
        await wait_until(lambda: recorder.data("room") == [b'{"n":1}', b'{"n":2}', b'{"n":3}'])
        kept = await sender.publish("h", b'{"n":4}', history=HistoryOptions(size=10, ttl=60))
        assert kept.offset == 1  # the old master's history is gone with it (no persistence)
        assert receiver.reconnects == 1
        assert "wshub-sub" in client_names(sentinels.replica)
    finally:
        await receiver.close()
        await sender.close()


@pytest.mark.anyio
@pytest.mark.redis
async def test_demoted_master_is_left_for_the_promoted_replica(
    sentinels: SentinelSetup, prefix: str
) -> None:
    """``SENTINEL FAILOVER``: the old master lives on as a replica; the brokers leave it."""
    receiver, sender = fast_broker(sentinels.url, prefix), fast_broker(sentinels.url, prefix)
    recorder = Recorder()
    await receiver.start(recorder)
    await sender.start(Recorder())
    try:
        await receiver.subscribe(["room"])
        await sender.publish("room", b'{"n":1}')
        await wait_until(lambda: recorder.data("room") == [b'{"n":1}'])

        with sentinels.sentinels[0].client() as client:
            assert client.sentinel_failover("mymaster")
        await wait_until(sentinels.failed_over, FAILOVER_WITHIN)
        switched = time.monotonic()

        # Both subscribers move to the new master within a probe interval or so, even
        # while the old one is still up (and maybe still a master: split brain).
        def moved() -> bool:
            return (
                client_names(sentinels.replica).count("wshub-sub") == 2
                and "wshub-sub" not in client_names(sentinels.master)
                and receiver.state is sender.state is BrokerState.CONNECTED
            )

        await wait_until(moved, FAILOVER_WITHIN)
        assert time.monotonic() - switched < 5 * TIME_SCALE
        await publish_until_it_succeeds(sender, "room", b'{"n":2}')
        with Publisher(sentinels.url, prefix=prefix) as pub:
            assert pub.publish_sync("room", {"n": 3}) == 1
        await wait_until(lambda: recorder.data("room")[-2:] == [b'{"n":2}', b'{"n":3}'])
        assert "wshub-pub" not in client_names(sentinels.master)
    finally:
        await receiver.close()
        await sender.close()
