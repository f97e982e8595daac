"""Benchmark scenarios: start a server, drive it with the load generator, measure.

Scenarios (every one bounded in time and count):

- ``fanout``: N subscribers on one channel, one publisher, as fast as the server
  delivers (bounded in-flight window) or at a fixed rate;
- ``slow``: ``fanout`` plus one client that never reads;
- ``rooms``: N subscribers over many channels, the publisher going round them;
- ``idle``: N idle connections, for the server's memory per connection;
- ``redis``: ``fanout`` against ``wshub serve --workers W`` sharing a Redis that
  the run starts itself (``redis-server`` on a free port, nothing kept on disk).

The server runs in its own process pinned to core 0, the generator on core 1
(when the machine has two), and both processes' CPU use is reported: a server
near 100% and a generator well below it means the server was the bottleneck.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
import socket
import statistics
import subprocess
import time
from collections.abc import Iterator

import psutil

from wshub.bench import load
from wshub.bench.targets import BENCH_CHANNEL, Target


@dataclasses.dataclass
class Result:
    """One scenario run against one target."""

    target: str
    scenario: str
    subscribers: int
    payload: int
    messages: int = 0
    deliveries: int = 0
    seconds: float = 0.0
    deliveries_per_s: float = 0.0
    p50_ms: float = 0.0
    p95_ms: float = 0.0
    p99_ms: float = 0.0
    max_ms: float = 0.0
    lost: int = 0
    duplicated: int = 0
    server_cpu: float = 0.0
    generator_cpu: float = 0.0
    server_rss_mb: float = 0.0
    rss_per_connection_kb: float = 0.0


@dataclasses.dataclass
class Options:
    """What to run: sizes, bounds and mode."""

    subscribers: int = 1000
    payload: int = 100
    window: int = 50
    rate: float | None = None
    duration: float = 5.0
    count: int = 100_000
    rooms: int = 100
    workers: int = 1
    broker: str | None = None


def free_port() -> int:
    """An unused TCP port on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def server(target: Target, options: Options) -> Iterator[tuple[int, psutil.Process]]:
    """Start ``target`` in a process of its own; yield its port and process; stop it."""
    port = free_port()
    argv = [part.format(port=port) for part in target.command]
    if options.workers > 1:
        argv += ["--workers", str(options.workers)]
    env = dict(os.environ)
    if options.broker:
        env["WSHUB_BROKER"] = options.broker
    process = subprocess.Popen(argv, env=env, start_new_session=True)
    try:
        if os.cpu_count() and os.cpu_count() >= 2 and options.workers == 1:  # type: ignore[operator]
            os.sched_setaffinity(process.pid, {0})
        _wait_listening(port, process)
        yield port, psutil.Process(process.pid)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _wait_listening(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError("server did not start listening")


def _cpu(process: psutil.Process) -> float:
    total = 0.0
    for proc in [process, *process.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            times = proc.cpu_times()
            total += times.user + times.system
    return total


def _rss(process: psutil.Process) -> int:
    total = 0
    for proc in [process, *process.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            total += proc.memory_info().rss
    return total


def _pin_generator() -> None:
    if (os.cpu_count() or 1) >= 2:
        os.sched_setaffinity(0, {1})


async def fanout(target: Target, options: Options, *, slow: bool = False) -> Result:
    """Run ``fanout`` (or ``slow``, with one client that never reads) against ``target``."""
    scenario = "slow" if slow else "fanout"
    result = Result(target.name, scenario, options.subscribers, options.payload)
    with server(target, options) as (port, process):
        url = f"ws://127.0.0.1:{port}{target.path}"
        tally = load.Tally()
        clients = await load.connect_all(target, url, options.subscribers, tally)
        stalled = (await load.connect_all(target, url, 1, tally))[0] if slow else None
        publisher = load.Publisher(target, clients[0], options.payload)
        watched = clients + ([stalled] if stalled else [])
        await load.warm_up(publisher, watched, tally)
        if stalled is not None:
            stalled.pause()
        await _measure(publisher, clients, tally, options, process, result, extra=int(slow))
        for client in watched:
            client.close()
    return result


async def rooms(target: Target, options: Options) -> Result:
    """Run ``rooms``: subscribers spread over ``options.rooms`` channels."""
    if not target.rooms:
        raise ValueError(f"{target.name} has no channels of the client's choice")
    result = Result(target.name, "rooms", options.subscribers, options.payload)
    with server(target, options) as (port, process):
        url = f"ws://127.0.0.1:{port}{target.path}"
        tally = load.Tally()
        clients = await load.connect_all(
            target, url, options.subscribers, tally, channels=options.rooms
        )
        publisher = load.Publisher(target, clients[0], options.payload)
        for room in range(options.rooms):  # warm every room up once
            publisher.send(f"{BENCH_CHANNEL}-{room}")
        await load.drain(tally, options.subscribers, idle=1.0)
        for client in clients:
            client.count = 0
        tally.deliveries, publisher.seq = 0, 0
        per_message = max(1, options.subscribers // options.rooms)
        await _measure(
            publisher,
            clients,
            tally,
            options,
            process,
            result,
            per_message=per_message,
            rooms=options.rooms,
        )
        for client in clients:
            client.close()
    return result


async def _measure(
    publisher: load.Publisher,
    clients: list[load.Subscriber],
    tally: load.Tally,
    options: Options,
    process: psutil.Process,
    result: Result,
    *,
    extra: int = 0,
    per_message: int | None = None,
    rooms: int = 0,
) -> None:
    per_message = per_message or len(clients)
    tally.measuring = True
    server_cpu, own_cpu = _cpu(process), time.process_time()
    start = time.monotonic()
    peak = [_rss(process)]
    sampler = asyncio.get_running_loop().create_task(_sample_rss(process, peak))
    if options.rate:
        await load.publish_rate(
            publisher, options.rate, duration=options.duration, count=options.count
        )
    else:
        channel_of = (lambda seq: f"{BENCH_CHANNEL}-{seq % rooms}") if rooms else None
        await load.publish_window(
            publisher,
            tally,
            per_message,
            window=options.window,
            duration=options.duration,
            count=options.count,
            channel_of=channel_of,
        )
    expected = publisher.seq * per_message
    last = await load.drain(tally, expected)
    sampler.cancel()
    elapsed = max(last - start, 1e-9)
    result.messages, result.deliveries, result.seconds = publisher.seq, tally.deliveries, elapsed
    result.deliveries_per_s = tally.deliveries / elapsed
    result.server_cpu = (_cpu(process) - server_cpu) / elapsed * 100
    result.generator_cpu = (time.process_time() - own_cpu) / elapsed * 100
    result.server_rss_mb = max(peak) / 2**20
    _latencies(result, tally.latencies)
    _losses(result, clients, publisher.seq, expected, rooms)
    del extra


async def _sample_rss(process: psutil.Process, peak: list[int]) -> None:
    while True:
        await asyncio.sleep(0.25)
        peak.append(_rss(process))


def _latencies(result: Result, samples: list[int]) -> None:
    if len(samples) < 2:
        return
    cuts = statistics.quantiles(samples, n=100, method="inclusive")
    result.p50_ms, result.p95_ms, result.p99_ms = (cuts[49] / 1e6, cuts[94] / 1e6, cuts[98] / 1e6)
    result.max_ms = max(samples) / 1e6


def _losses(
    result: Result, clients: list[load.Subscriber], published: int, expected: int, rooms: int
) -> None:
    sampled = [c for c in clients if c.sampled]
    if rooms:  # each sampled client only sees its own room's messages
        result.lost = max(0, expected - result.deliveries)
        result.duplicated = max(0, result.deliveries - expected)
        return
    everything = set(range(1, published + 1))
    lost = sum(len(everything - set(c.seqs)) for c in sampled)
    dups = sum(len(c.seqs) - len(set(c.seqs)) for c in sampled)
    result.lost = max(lost, expected - result.deliveries)
    result.duplicated = max(dups, result.deliveries - expected)


async def idle(target: Target, options: Options) -> Result:
    """Run ``idle``: the server's memory per open (subscribed) connection."""
    result = Result(target.name, "idle", options.subscribers, 0)
    with server(target, options) as (port, process):
        url = f"ws://127.0.0.1:{port}{target.path}"
        tally = load.Tally()
        warm = await load.connect_all(target, url, 10, tally)  # imports, caches, first tasks
        await asyncio.sleep(0.5)
        before = _rss(process)
        clients = await load.connect_all(target, url, options.subscribers, tally)
        await asyncio.sleep(1.0)
        after = _rss(process)
        result.server_rss_mb = after / 2**20
        result.rss_per_connection_kb = (after - before) / options.subscribers / 1024
        for client in warm + clients:
            client.close()
    return result


@contextlib.contextmanager
def redis_server() -> Iterator[str]:
    """Run a throwaway ``redis-server`` on a free port; yield its URL."""
    port = free_port()
    argv = [
        "redis-server",
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
    ]
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_listening(port, process)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(10)


async def redis_fanout(target: Target, options: Options) -> Result:
    """Run ``fanout`` over ``options.workers`` processes sharing a fresh Redis.

    Also what ``fanout`` does for targets that need a Redis (``wshub-redis``,
    ``socketio-redis``), so that ``compare`` puts them beside the in-process rows.
    """
    if target.name not in ("wshub", "wshub-redis", "socketio-redis"):
        raise ValueError(f"the redis scenario runs wshub or socketio-redis, not {target.name}")
    with redis_server() as url:
        result = await fanout(target, dataclasses.replace(options, broker=url))
    result.scenario = f"redis x{options.workers}"
    return result


def run(scenario: str, target: Target, options: Options) -> Result:
    """Run one scenario in a fresh event loop (uvloop), the generator pinned to core 1."""
    import uvloop

    _pin_generator()
    runners = {
        "fanout": lambda: (
            redis_fanout(target, options) if target.redis else fanout(target, options)
        ),
        "slow": lambda: fanout(target, options, slow=True),
        "rooms": lambda: rooms(target, options),
        "idle": lambda: idle(target, options),
        "redis": lambda: redis_fanout(target, options),
    }
    if scenario not in runners:
        raise ValueError(f"unknown scenario {scenario!r}; known: {', '.join(runners)}")
    return uvloop.run(runners[scenario]())
