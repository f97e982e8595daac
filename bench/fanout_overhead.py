"""Microbenchmark of the hub's fan-out and writer paths, to see what instrumentation costs.

One process, no network: N connections whose socket send is a no-op coroutine,
all subscribed to one channel. Two phases, each timed on its own:

- fan-out: M publications handed to `Hub.on_publication` back to back, as a broker
  delivers a burst (each one timed for the publish latency histogram, as a
  publication made in this process is), so that every queue holds M frames;
- drain: the writers send everything queued (packed JSON batches, or one MessagePack
  frame per send with ``--codec msgpack``).

Reports deliveries per CPU second (process time, so that other load on the machine
matters less) for each phase: the best of several runs (the least disturbed) and the
median::

    .venv/bin/python bench/fanout_overhead.py --subscribers 1000 --messages 500 --runs 9

Run it on two trees (before and after a change) with PYTHONPATH pointing at each
``src`` to compare.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

import orjson
from starlette.websockets import WebSocketState

from wshub import Hub, Publication
from wshub.core.codecs import JSON, MSGPACK


class NullSocket:
    """Stands in for a Starlette WebSocket: accepts, and sends into the void."""

    client_state = WebSocketState.CONNECTED
    client = None

    async def send(self, message: dict[str, Any]) -> None:
        """Discard one ASGI message."""

    async def accept(self, subprotocol: str | None = None) -> None:
        """Nothing to accept."""


async def one_run(subscribers: int, messages: int, codec: str) -> tuple[float, float]:
    """Fan ``messages`` out to ``subscribers`` connections, then drain.

    Returns:
        Deliveries per second of the fan-out phase and of the drain phase.
    """
    hub = Hub(queue_max_messages=messages + 10, queue_max_bytes=1 << 30)
    await hub.start()
    chosen = MSGPACK if codec == "msgpack" else JSON
    contexts = [hub.connect(NullSocket(), codec=chosen, reader=False) for _ in range(subscribers)]  # type: ignore[arg-type]
    conns = [await ctx.__aenter__() for ctx in contexts]
    for conn in conns:
        await conn.subscribe("room")
    await asyncio.sleep(0.05)
    payloads = [orjson.dumps({"n": i, "text": "x" * 100}) for i in range(messages)]
    timer = getattr(hub, "_time_publish", None)  # absent before instrumentation
    started = time.process_time()
    for payload in payloads:
        if timer is not None:
            timer("room", payload)
        hub.on_publication("room", Publication(payload))
    fanned = time.process_time()
    while any(len(conn.queue) for conn in conns):  # noqa: ASYNC110 (polling is the point)
        await asyncio.sleep(0.001)
    drained = time.process_time()
    for ctx in contexts:
        await ctx.__aexit__(None, None, None)
    await hub.close()
    total = subscribers * messages
    return total / (fanned - started), total / (drained - fanned)


def main() -> None:
    """Parse the options, run, print the medians."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--messages", type=int, default=500)
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--codec", choices=["json", "msgpack"], default="json")
    args = parser.parse_args()
    runs = [
        asyncio.run(one_run(args.subscribers, args.messages, args.codec)) for _ in range(args.runs)
    ]
    for name, rates in (("fan-out", [r[0] for r in runs]), ("drain", [r[1] for r in runs])):
        print(
            f"{name:8} best {max(rates) / 1e6:6.3f} M deliveries/s, "
            f"median {statistics.median(rates) / 1e6:.3f} ({args.runs} runs)"
        )


if __name__ == "__main__":
    main()
