"""The presence contract of `wshub.presence.Presence`, checked on every engine (memory, redis)."""

from __future__ import annotations

import pytest

from tests.brokers.engines import MakeBroker, poll_until, sleep_scaled
from wshub.brokers.presence import ClientInfo

pytestmark = pytest.mark.anyio

ANN = ClientInfo("c1", "ann", {"color": "red", "n": [1, 2]})
BOB = ClientInfo("c2", "bob")
ANONYMOUS = ClientInfo("c3", None)


async def test_added_entries_are_read_back(make_broker: MakeBroker, unique: str) -> None:
    """Entries added in one call are all read back, keyed by client, user and info intact."""
    broker, _ = await make_broker()
    await broker.presence_add(unique, [ANN, BOB, ANONYMOUS], ttl=30)
    assert await broker.presence(unique) == {"c1": ANN, "c2": BOB, "c3": ANONYMOUS}


async def test_unknown_channel_has_nobody(make_broker: MakeBroker, unique: str) -> None:
    """A channel nobody was added to reads as empty."""
    broker, _ = await make_broker()
    assert await broker.presence(unique) == {}


async def test_remove_takes_entries_out(make_broker: MakeBroker, unique: str) -> None:
    """Removed clients are gone; unknown clients and empty lists are ignored."""
    broker, _ = await make_broker()
    await broker.presence_add(unique, [ANN, BOB], ttl=30)
    await broker.presence_remove(unique, ["c1", "nobody"])
    await broker.presence_remove(unique, [])
    await broker.presence_remove(f"{unique}-other", ["c2"])
    assert await broker.presence(unique) == {"c2": BOB}
    await broker.presence_remove(unique, ["c2"])
    assert await broker.presence(unique) == {}


async def test_adding_again_replaces_the_entry(make_broker: MakeBroker, unique: str) -> None:
    """Adding a client already present replaces its user and info."""
    broker, _ = await make_broker()
    await broker.presence_add(unique, [ANN], ttl=30)
    renamed = ClientInfo("c1", "ann", {"color": "blue"})
    await broker.presence_add(unique, [renamed], ttl=30)
    assert await broker.presence(unique) == {"c1": renamed}


async def test_channels_are_separate(make_broker: MakeBroker, unique: str) -> None:
    """An entry belongs to the channel it was added to only."""
    broker, _ = await make_broker()
    await broker.presence_add(f"{unique}-a", [ANN], ttl=30)
    await broker.presence_add(f"{unique}-b", [BOB], ttl=30)
    assert await broker.presence(f"{unique}-a") == {"c1": ANN}
    assert await broker.presence(f"{unique}-b") == {"c2": BOB}


async def test_entries_expire_after_ttl_without_refresh(
    make_broker: MakeBroker, unique: str
) -> None:
    """An entry not added again within ttl disappears; a refreshed one stays."""
    broker, _ = await make_broker()
    await broker.presence_add(unique, [ANN, BOB], ttl=0.6)
    for _ in range(4):
        await sleep_scaled(0.2)
        await broker.presence_add(unique, [BOB], ttl=0.6)  # only bob's process is alive
    assert await broker.presence(unique) == {"c2": BOB}

    async def empty() -> bool:
        return await broker.presence(unique) == {}

    await poll_until(empty)


async def test_many_entries_in_one_call(make_broker: MakeBroker, unique: str) -> None:
    """Thousands of entries (a big process's refresh of one channel) go in one call."""
    broker, _ = await make_broker()
    entries = [ClientInfo(f"c{n}", f"u{n % 7}") for n in range(12_000)]
    await broker.presence_add(unique, entries, ttl=30)
    found = await broker.presence(unique)
    assert len(found) == 12_000 and found["c11999"] == entries[-1]
    await broker.presence_remove(unique, [e.client for e in entries[:11_000]])
    assert len(await broker.presence(unique)) == 1_000
