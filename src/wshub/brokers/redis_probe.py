"""The liveness probe: tokens sent round through the broker's own probe channel.

A subscriber connection can stay open and still hear nothing: Redis dropped it for
exceeding ``client-output-buffer-limit pubsub``, a ``CLIENT KILL`` is not seen yet, or
a failover left the old socket silent. The only proof that it still hears is a
publication coming back on it, so `LivenessProbe` publishes a token on a channel of
this process's own (``prefix + "__probe__:" + process id``) and waits for the
subscriber's reader to hand it back through `LivenessProbe.on_echo`. The same round
trip tells the history read when everything published before it has been delivered.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from typing import Final

from redis.asyncio import Redis
from redis.exceptions import RedisError

from wshub.brokers.redis_subscriptions import settle

__all__ = ["PROBE_INFIX", "LivenessProbe", "ProbeFailed"]

#: Between the prefix and the process id in the name of a broker's probe channel.
PROBE_INFIX: Final = "__probe__:"


class ProbeFailed(Exception):
    """The subscriber connection did not echo a probe in time: it is deaf or gone."""


class LivenessProbe:
    """Checks that the subscriber connection still hears what is published.

    Attributes:
        channel: the probe channel, as named in Redis.
        name: ``channel`` encoded, as the reader receives it.
        failures: probes that got no echo in time.
    """

    def __init__(self, prefix: str, *, interval: float, timeout: float) -> None:
        """Name this process's probe channel; nothing is sent before `watch`.

        Args:
            prefix: prepended to every channel name in Redis.
            interval: seconds between probes.
            timeout: seconds a probe may take to come back.
        """
        self.channel = f"{prefix}{PROBE_INFIX}{secrets.token_hex(8)}"
        self.name = self.channel.encode()
        self.interval = interval
        self.timeout = timeout
        self.failures = 0
        self._due = asyncio.Event()  # a publish failed: probe without waiting
        self._echoes: dict[bytes, asyncio.Future[None]] = {}  # tokens sent to the probe channel

    def request(self) -> None:
        """Probe at once instead of at the next interval (a command just failed)."""
        self._due.set()

    def on_echo(self, payload: bytes) -> None:
        """Take a message the reader received on the probe channel."""
        waiter = self._echoes.get(payload)
        if waiter is not None:
            settle(waiter)

    async def watch(self, client: Redis) -> None:
        """Probe every ``interval`` seconds, or at once when requested, until a probe fails.

        Raises:
            ProbeFailed: no echo within ``timeout``, or the publish failed.
        """
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.interval):
                    await self._due.wait()
            self._due.clear()
            await self.check(client)

    async def check(self, client: Redis) -> None:
        """Check once that the subscriber connection still hears what is published.

        Raises:
            ProbeFailed: no echo within ``timeout``, or the publish failed.
        """
        try:
            await self.echo(client, self.timeout)
        except (TimeoutError, RedisError) as exc:
            self.failures += 1
            reason = str(exc) or "no echo"
            raise ProbeFailed(f"liveness probe failed within {self.timeout:g}s: {reason}") from exc

    async def echo(self, client: Redis, within: float) -> None:
        """Publish a token on the probe channel and wait until the subscriber reads it back.

        Redis sends one connection's pub/sub messages in the order it executed the
        publishes, so once the token is back, everything published before it on this
        process's channels has been handed to ``on_publication``.

        Args:
            client: the connection pool to publish through.
            within: seconds the round trip may take.

        Raises:
            TimeoutError: no echo in time (the subscriber is deaf, slow, or gone).
            RedisError: the publish failed.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        token = secrets.token_hex(8).encode()
        waiter = self._echoes[token] = loop.create_future()
        try:
            async with asyncio.timeout_at(deadline):
                await self._publish(client, token)
            # On Python 3.11, asyncio.wait_for inside redis-py can swallow the
            # cancellation a timeout (or close()) sends: the publish then returns as if
            # nothing happened. So the wait for the echo keeps its own deadline.
            done, _ = await asyncio.wait((waiter,), timeout=max(0.0, deadline - loop.time()))
            if not done:
                raise TimeoutError("no echo")
        finally:
            del self._echoes[token]

    async def _publish(self, client: Redis, token: bytes) -> None:
        """Send ``token`` to the probe channel (a cluster's probe uses SPUBLISH)."""
        await client.publish(self.channel, token)
