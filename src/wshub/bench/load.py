"""The load generator: many picows clients in one process, counting without decoding.

picows parses frames in C, so one generator core receives several times what one
Python server core can send. Each subscriber counts deliveries with
``bytes.count(marker)``; a sample of subscribers (every ``sample_every``-th)
also extracts each message's sequence number and send time, for latencies and
an exact check of lost and duplicated messages.

The publisher keeps at most ``window`` messages in flight (a message is done
when, on average, every subscriber has it), or publishes at a fixed ``rate``.
Every run is bounded by ``duration`` and ``count``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable

from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

from wshub.bench.targets import BENCH_CHANNEL, Target


@dataclasses.dataclass
class Tally:
    """What the subscribers saw, shared by all of them (one event loop, no locks)."""

    deliveries: int = 0
    latencies: list[int] = dataclasses.field(default_factory=list)
    changed: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    measuring: bool = False
    # Wake the publisher only once deliveries reach this: waking it on every frame
    # would make the generator, not the server, the bottleneck.
    wake_at: int = 0


class Subscriber(WSListener):
    """One client: joins, counts deliveries, and (when sampled) records seqs and latencies."""

    def __init__(self, target: Target, tally: Tally, channel: str, sampled: bool) -> None:
        self.target, self.tally, self.channel, self.sampled = target, tally, channel, sampled
        self.ready = asyncio.get_running_loop().create_future()
        self.count = 0
        self.seqs: list[int] = []
        self.transport: WSTransport | None = None

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport
        if self.target.subscribe is not None:
            transport.send(
                WSMsgType.TEXT, self.target.subscribe.format(channel=self.channel).encode()
            )
        if self.target.ready is None and not self.target.socketio:
            self._set_ready()

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type is not WSMsgType.TEXT:
            return
        data = frame.get_payload_as_bytes()
        found = data.count(self.target.marker)
        if found:
            self._delivered(data, found)
        elif self.target.socketio:
            self._engineio(transport, data)
        elif self.target.ready is not None and self.target.ready in data:
            self._set_ready()

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        if not self.ready.done():
            self.ready.set_exception(ConnectionError("disconnected before ready"))

    def _delivered(self, data: bytes, found: int) -> None:
        self.count += found
        tally = self.tally
        tally.deliveries += found
        if tally.deliveries >= tally.wake_at:
            tally.changed.set()
        if self.sampled and tally.measuring:
            now = time.monotonic_ns()
            for seq, sent in self.target.sample.findall(data):
                self.seqs.append(int(seq))
                tally.latencies.append(now - int(sent))

    def _engineio(self, transport: WSTransport, data: bytes) -> None:
        if data.startswith(b"0{"):  # Engine.IO open: join the default namespace
            transport.send(WSMsgType.TEXT, b"40")
        elif data.startswith(b"40"):
            self._set_ready()
        elif data == b"2":  # Engine.IO ping
            transport.send(WSMsgType.TEXT, b"3")

    def _set_ready(self) -> None:
        if not self.ready.done():
            self.ready.set_result(None)

    def pause(self) -> None:
        """Stop reading the socket: a client that never reads."""
        if self.transport is not None:
            self.transport.underlying_transport.pause_reading()

    def close(self) -> None:
        """Close the connection without waiting."""
        if self.transport is not None:
            self.transport.disconnect()


async def connect_all(
    target: Target,
    url: str,
    count: int,
    tally: Tally,
    *,
    channels: int = 1,
    sample_every: int = 50,
    batch: int = 100,
) -> list[Subscriber]:
    """Connect and subscribe ``count`` clients, ``batch`` at a time; wait until all are ready."""
    clients: list[Subscriber] = []
    for start in range(0, count, batch):
        batch_clients = await asyncio.gather(
            *(
                _connect(
                    target,
                    url,
                    tally,
                    f"{BENCH_CHANNEL}-{i % channels}" if channels > 1 else BENCH_CHANNEL,
                    i % sample_every == 0,
                )
                for i in range(start, min(count, start + batch))
            )
        )
        clients += batch_clients
    await asyncio.wait_for(asyncio.gather(*(c.ready for c in clients)), 30)
    return clients


async def _connect(
    target: Target, url: str, tally: Tally, channel: str, sampled: bool
) -> Subscriber:
    def factory() -> Subscriber:
        return Subscriber(target, tally, channel, sampled)

    _, listener = await ws_connect(factory, url, websocket_handshake_timeout=20)
    assert isinstance(listener, Subscriber)
    return listener


class Publisher:
    """Sends publications through one of the subscribers' connections (or its own)."""

    def __init__(self, target: Target, client: Subscriber, payload: int) -> None:
        self.target, self.client = target, client
        self.pad = "x" * max(0, payload - 40)  # the rest of the ~100-byte payload
        self.seq = 0

    def send(self, channel: str = BENCH_CHANNEL) -> None:
        """Publish the next message."""
        self.seq += 1
        text = self.target.publish.format(
            channel=channel, seq=self.seq, t=time.monotonic_ns(), pad=self.pad
        )
        assert self.client.transport is not None
        self.client.transport.send(WSMsgType.TEXT, text.encode())


async def warm_up(publisher: Publisher, clients: list[Subscriber], tally: Tally) -> None:
    """Publish until every client has every warm-up message, then zero the counts.

    Confirms that every subscription is live before measuring, and that nothing
    from the warm-up is still in flight.
    """
    deadline = time.monotonic() + 30
    tally.wake_at = 0
    while time.monotonic() < deadline:
        publisher.send()
        target = publisher.seq
        settle = time.monotonic() + 0.5
        while time.monotonic() < settle:
            if all(c.count >= target for c in clients):
                break
            await _changed(tally, 0.05)
        if all(c.count == target for c in clients):
            for client in clients:
                client.count = 0
            tally.deliveries = 0
            publisher.seq = 0
            return
    raise TimeoutError("subscribers did not all receive the warm-up messages")


async def _changed(tally: Tally, within: float) -> None:
    tally.changed.clear()
    try:
        await asyncio.wait_for(tally.changed.wait(), within)
    except TimeoutError:
        pass


async def publish_window(
    publisher: Publisher,
    tally: Tally,
    per_message: int,
    *,
    window: int,
    duration: float,
    count: int,
    channel_of: Callable[[int], str] | None = None,
) -> None:
    """Publish as fast as the server delivers, with at most ``window`` messages in flight."""
    deadline = time.monotonic() + duration
    while publisher.seq < count and time.monotonic() < deadline:
        done = tally.deliveries // per_message
        allowed = min(count, done + window) - publisher.seq
        for _ in range(max(0, allowed)):
            publisher.send(channel_of(publisher.seq) if channel_of else BENCH_CHANNEL)
        # Next wake-up when half the window has been delivered: publishes go in batches.
        tally.wake_at = (publisher.seq - window // 2) * per_message
        await _changed(tally, 0.2)


async def publish_rate(publisher: Publisher, rate: float, *, duration: float, count: int) -> None:
    """Publish at ``rate`` messages per second (sent in small bursts every millisecond)."""
    start = time.monotonic()
    while publisher.seq < count:
        elapsed = time.monotonic() - start
        if elapsed >= duration:
            return
        due = min(count, int(elapsed * rate) + 1)
        while publisher.seq < due:
            publisher.send()
        await asyncio.sleep(0.001)


async def drain(tally: Tally, expected: int, idle: float = 2.0) -> float:
    """Wait until ``expected`` deliveries arrived or nothing arrived for ``idle`` s.

    Returns:
        The time of the last delivery (``time.monotonic()``).
    """
    last, seen = time.monotonic(), tally.deliveries
    tally.wake_at = expected
    while tally.deliveries < expected:
        await _changed(tally, 0.1)
        if tally.deliveries != seen:
            last, seen = time.monotonic(), tally.deliveries
        elif time.monotonic() - last > idle:
            break
    return last
