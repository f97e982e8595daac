"""Publishers outside the hub: a plain ``redis-cli PUBLISH`` and ``wshub publish`` reach clients."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import orjson
import pytest
import redis.asyncio

from tests.redis_support import RedisServer
from wshub.testing import wait_until

from .processes import HubProcess, hub_env, hub_processes, numsub, run_cli
from .recorders import ProtocolClient, RawClient, closing, open_clients, wait_received

pytestmark = [pytest.mark.anyio, pytest.mark.redis]


async def open_chats(hubs: Sequence[HubProcess], per_hub: int) -> list[RawClient]:
    """Open seed-chat clients on every hub; return once each one is subscribed to ``chat``.

    The chat subscribes before it reads, so a client that got its own hello back is in.
    """
    chats = []
    for hub in hubs:
        for _ in range(per_hub):
            chat = await RawClient.open(hub.ws_url("/ws/chat"))
            hello = orjson.dumps({"user": "t", "text": f"hello {len(chats)}"}).decode()
            await chat.ws.send(hello)
            await wait_until(lambda chat=chat, hello=hello: hello in chat.messages)
            chats.append(chat)
    for chat in chats:
        chat.messages.clear()
    return chats


async def deliver(
    chats: Sequence[RawClient], protocol: Sequence[ProtocolClient], text: str
) -> None:
    """Wait until every chat client got ``text`` as its latest message, and protocol clients too."""
    await wait_until(lambda: all(chat.messages[-1:] == [text] for chat in chats))
    await wait_until(lambda: all(orjson.loads(text) in c.received["chat"] for c in protocol))


async def test_redis_cli_publish_reaches_seed_chat_byte_for_byte_and_protocol_subscribers(
    redis_server: RedisServer, admin: redis.asyncio.Redis, prefix: str
) -> None:
    """The seed tutorial's Redis example: ``redis-cli PUBLISH <prefix>chat JSON`` reaches chat."""
    async with hub_processes(2, hub_env(redis_server.url, prefix)) as hubs, closing([]) as clients:
        chats = await open_chats(hubs, per_hub=2)
        clients += chats
        protocol = await open_clients([hub.ws_url() for hub in hubs], "chat")
        clients += protocol
        assert await numsub(admin, f"{prefix}chat") == 2

        text = '{"user":"x","text":"y"}'
        out = await asyncio.to_thread(redis_server.cli, "PUBLISH", f"{prefix}chat", text)
        assert out.strip() == "2"  # one subscriber connection per hub process
        await deliver(chats, protocol, text)
        assert all(chat.messages == [text] for chat in chats)
        assert all(c.origins["chat"] == [None] for c in protocol)  # no client published it

        # Another program's formatting survives: spacing, key order, non-ASCII, escapes.
        text = '{ "text" : "caf\u00e9 \\"quoted\\" \\u00e9", "user":"z" }'
        await asyncio.to_thread(redis_server.cli, "PUBLISH", f"{prefix}chat", text)
        await deliver(chats, protocol, text)
        assert all(client.open_still for client in clients)


async def test_pretty_printed_json_from_redis_reaches_protocol_clients(
    redis_server: RedisServer, admin: redis.asyncio.Redis, prefix: str
) -> None:
    """JSON published with newlines (``json.dumps(indent=2)``) still splits cleanly on ``\\n``."""
    async with hub_processes(1, hub_env(redis_server.url, prefix)) as hubs, closing([]) as clients:
        chats = await open_chats(hubs, per_hub=1)
        clients += chats
        protocol = await open_clients([hubs[0].ws_url()] * 2, "chat")
        clients += protocol
        data = {"user": "ops", "text": "multi\nline"}
        text = orjson.dumps(data, option=orjson.OPT_INDENT_2).decode()
        assert "\n" in text
        assert await admin.publish(f"{prefix}chat", text) == 1
        await publish_burst(admin, f"{prefix}chat", 20)  # packed with others, too
        await wait_received(protocol, "chat", 21)
        for client in protocol:
            assert client.received["chat"][0] == data
            assert client.open_still
        await wait_until(lambda: len(chats[0].messages) == 21)
        assert orjson.loads(chats[0].messages[0]) == data


async def publish_burst(admin: redis.asyncio.Redis, name: str, count: int) -> None:
    """Publish ``count`` small JSON objects ``{"n": i}`` on ``name`` in one pipeline."""
    async with admin.pipeline(transaction=False) as pipe:
        for n in range(count):
            pipe.publish(name, b'{"n":%d}' % n)
        await pipe.execute()


async def test_wshub_publish_reaches_clients_and_refuses_the_memory_broker(
    redis_server: RedisServer, prefix: str
) -> None:
    """``wshub publish chat JSON --broker redis://`` delivers; ``--broker memory://`` exits 2."""
    env = hub_env(redis_server.url, prefix)
    async with hub_processes(2, env) as hubs, closing([]) as clients:
        chats = await open_chats(hubs, per_hub=1)
        clients += chats
        protocol = await open_clients([hub.ws_url() for hub in hubs], "chat")
        clients += protocol

        text = '{"user":"cli","text":"hi"}'
        cli_env = hub_env("memory://", prefix)  # --broker must win over WSHUB_BROKER
        code, out = await run_cli(
            "publish", "chat", text, "--broker", redis_server.url, env=cli_env
        )
        assert code == 0, out
        assert "published to chat (2 hub process(es) subscribed)" in out
        await deliver(chats, protocol, text)

        (refused, out), (bad, bad_out) = await asyncio.gather(
            run_cli("publish", "chat", text, "--broker", "memory://", env=cli_env),
            run_cli("publish", "chat", "{not json", "--broker", redis_server.url, env=env),
        )
        assert refused != 0
        assert "Publisher needs a Redis URL" in out, out
        assert "Traceback" not in out
        assert bad != 0 and "not valid JSON" in bad_out, bad_out
        sentinel = '{"user":"t","text":"last"}'
        await asyncio.to_thread(redis_server.cli, "PUBLISH", f"{prefix}chat", sentinel)
        await deliver(chats, protocol, sentinel)
        assert all(chat.messages == [text, sentinel] for chat in chats)  # nothing in between
