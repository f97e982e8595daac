"""Deliveries per second to one channel: Redis with two workers against memory on one process.

Each run starts a fresh server, connects the subscribers (spread over client processes),
then has one protocol client publish to the channel as fast as a bounded window allows:
it never has more than ``--window`` publications it has not itself received yet, so the
hub's queues stay short and nobody is dropped as a slow consumer. Deliveries are the
``message`` frames counted at the subscribers during a fixed window after a warm-up.

    .venv/bin/python bench/scaleout.py                       # 500 subscribers, 3 runs each
    .venv/bin/python bench/scaleout.py --subscribers 200 --runs 5 --seconds 5

Scenarios, alternated run by run on the same machine:

- ``memory``: ``wshub serve`` (one process, the in-memory broker);
- ``redis``: ``wshub serve --workers 2 --broker redis://...`` on one port, a throwaway
  ``redis-server`` on a free port; the publisher's frames reach the other worker's
  subscribers through Redis (both workers must hold subscribers, checked with NUMSUB).

Needs ``redis-server`` on PATH and the ``redis`` extra.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path

import orjson
import redis
import websockets

WSHUB = Path(sys.executable).with_name("wshub")
CHANNEL = "bench"
MARK = '"op":"message"'


def free_port() -> int:
    """A port of 127.0.0.1 that nothing listens on right now (never Redis's 6379)."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port != 6379:
            return port


@contextlib.contextmanager
def redis_server() -> Iterator[int]:
    """Run a throwaway ``redis-server`` (no persistence) on a free port; yield the port."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server not found: apt-get install redis-server")
    port = free_port()
    with tempfile.TemporaryDirectory() as workdir:
        command = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
        command += ["--appendonly", "no", "--dir", workdir]
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
        try:
            client = redis.Redis(port=port)
            for _ in range(500):
                with contextlib.suppress(redis.ConnectionError):
                    if client.ping():
                        break
                time.sleep(0.01)
            client.close()
            yield port
        finally:
            process.kill()
            process.wait()


@contextlib.contextmanager
def hub(env: dict[str, str], *args: str) -> Iterator[int]:
    """Run ``wshub serve ARGS`` on a free port until it answers; stop it afterwards."""
    port = free_port()
    command = [str(WSHUB), "serve", "--port", str(port), "--log-level", "warning", *args]
    process = subprocess.Popen(command, env=env, start_new_session=True)
    try:
        for _ in range(600):
            assert process.poll() is None, f"wshub serve exited with {process.returncode}"
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port)):
                break
            time.sleep(0.05)
        yield port
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def server_env(broker: str, prefix: str) -> dict[str, str]:
    """Hub settings for the benchmark: no rate limit; queues big enough never to drop."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WSHUB_")}
    env.update(
        WSHUB_BROKER=broker,
        WSHUB_REDIS_PREFIX=prefix,
        WSHUB_RATE_LIMIT="1000000000",
        WSHUB_RATE_BURST="1000000000",
        WSHUB_QUEUE_MAX_MESSAGES="1000000",
        WSHUB_QUEUE_MAX_BYTES=str(256 * 1024 * 1024),
        WSHUB_MAX_CONNECTIONS="100000",
    )
    return env


async def subscribe(url: str) -> websockets.ClientConnection:
    """Connect to the protocol endpoint and subscribe to the channel (reply awaited)."""
    ws = await websockets.connect(url, proxy=None, compression=None, max_queue=None)
    await ws.recv()  # welcome
    await ws.send(orjson.dumps({"op": "subscribe", "id": 1, "channel": CHANNEL}).decode())
    while '"id":1' not in str(await ws.recv()):
        pass
    return ws


def client_process(url: str, count: int, pipe: Connection) -> None:
    """Child process: ``count`` subscribers; report deliveries counted in the window sent."""
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()
    asyncio.run(_clients(url, count, pipe))


async def _clients(url: str, count: int, pipe: Connection) -> None:
    clients = []
    for start in range(0, count, 50):
        batch = min(50, count - start)
        clients += await asyncio.gather(*(subscribe(url) for _ in range(batch)))
    total = [0]
    closed = [0]

    async def read(ws: websockets.ClientConnection) -> None:
        try:
            async for message in ws:
                total[0] += str(message).count(MARK)
        except websockets.ConnectionClosed:
            pass
        closed[0] += 1

    readers = [asyncio.create_task(read(ws)) for ws in clients]
    pipe.send("ready")
    start_at, end_at = await asyncio.get_running_loop().run_in_executor(None, pipe.recv)
    await asyncio.sleep(max(0.0, start_at - time.time()))
    first = total[0]
    await asyncio.sleep(max(0.0, end_at - time.time()))
    pipe.send((total[0] - first, closed[0]))
    for ws in clients:
        await ws.close()
    await asyncio.gather(*readers, return_exceptions=True)


async def publish(url: str, args: argparse.Namespace, stop_at: float) -> tuple[int, int]:
    """Publish round-robin over ``args.publishers`` connections until ``stop_at``.

    The first connection is subscribed too: no more than ``args.window`` publications
    may be on their way to it. Returns (published, error replies).
    """
    monitor = await subscribe(url)
    others = [
        await websockets.connect(url, proxy=None, compression=None, max_queue=None)
        for _ in range(args.publishers - 1)
    ]
    connections = [monitor, *others]
    published = received = errors = 0
    room = asyncio.Event()
    room.set()

    async def read(ws: websockets.ClientConnection) -> None:
        nonlocal received, errors
        with contextlib.suppress(websockets.ConnectionClosed):
            async for message in ws:
                text = str(message)
                errors += text.count('"error"')
                if ws is monitor:
                    received += text.count(MARK)
                    if published - received < args.window:
                        room.set()

    readers = [asyncio.create_task(read(ws)) for ws in connections]
    frame = '{"op":"publish","channel":"%s","data":{"n":%d,"text":"a typical chat line"}}'
    while time.time() < stop_at:
        if published - received >= args.window:
            room.clear()
            await room.wait()
        ws = connections[published % len(connections)]
        await ws.send(frame % (CHANNEL, published))
        published += 1
    for ws in connections:
        await ws.close()
    await asyncio.gather(*readers, return_exceptions=True)
    return published, errors


@dataclass
class Result:
    """One run: deliveries and publications per second in the window, and losses."""

    deliveries: float
    publishes: float
    closed: int
    errors: int
    packing: float = 0.0  # frames per WebSocket message sent, from /metrics


def packing(port: int) -> float:
    """Mean frames per WebSocket message the server sent (``wshub_send_queue_depth``)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    values = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in ("wshub_send_queue_depth_sum", "wshub_send_queue_depth_count"):
            values[name] = float(value)
    count = values.get("wshub_send_queue_depth_count", 0.0)
    return values.get("wshub_send_queue_depth_sum", 0.0) / count if count else 0.0


def measure(port: int, args: argparse.Namespace, check: redis.Redis | None, prefix: str) -> Result:
    """Connect the subscribers, publish for warm-up + window, count deliveries in the window."""
    url = f"ws://127.0.0.1:{port}/ws"
    context = multiprocessing.get_context("spawn")
    shares = [args.subscribers // args.client_processes] * args.client_processes
    shares[0] += args.subscribers - sum(shares)
    pipes, processes = [], []
    for share in shares:
        parent, child = context.Pipe()
        process = context.Process(target=client_process, args=(url, share, child))
        process.start()
        pipes.append(parent)
        processes.append(process)
    try:
        for pipe in pipes:
            if not pipe.poll(120):
                raise RuntimeError("the subscribers did not connect in time")
            assert pipe.recv() == "ready"
        if check is not None:  # both workers hold subscribers: the publisher reaches through Redis
            [(_, workers)] = check.pubsub_numsub(prefix + CHANNEL)
            if workers != args.redis_workers:
                raise RuntimeError(f"subscribers on {workers} of {args.redis_workers} workers")
        start_at = time.time() + args.warmup
        end_at = start_at + args.seconds
        for pipe in pipes:
            pipe.send((start_at, end_at))
        published, errors = asyncio.run(publish(url, args, end_at + 0.2))
        counted = [pipe.recv() for pipe in pipes]
    finally:
        for process in processes:
            process.join(30)
            if process.is_alive():
                process.kill()
    deliveries = sum(c[0] for c in counted)
    duration = args.warmup + args.seconds + 0.2
    return Result(
        deliveries / args.seconds, published / duration, sum(c[1] for c in counted), errors
    )


def run_memory(args: argparse.Namespace) -> Result:
    """One run on ``wshub serve`` with the memory broker (one process)."""
    with hub(server_env("memory://", "wshub:")) as port:
        result = measure(port, args, None, "")
        result.packing = packing(port)
        return result


def run_redis(args: argparse.Namespace, redis_port: int) -> Result:
    """One run on ``wshub serve --workers 2 --broker redis://...``."""
    url = f"redis://127.0.0.1:{redis_port}/0"
    prefix = f"bench-{uuid.uuid4().hex[:8]}:"
    check = redis.Redis(port=redis_port)
    try:
        workers = str(args.redis_workers)
        with hub(server_env(url, prefix), "--workers", workers) as port:
            for _ in range(400):  # /ws answers once one worker is up; wait for the others
                if len(check.client_list(_type="pubsub")) == args.redis_workers:
                    break
                time.sleep(0.05)
            result = measure(port, args, check, prefix)
            result.packing = packing(port)
            return result
    finally:
        check.close()


def main() -> None:
    """Parse options, run both scenarios alternately, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--subscribers", type=int, default=500)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=4.0, help="counting window")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--window", type=int, default=200, help="publications in flight")
    parser.add_argument("--redis-workers", type=int, default=2)
    parser.add_argument("--only", choices=["memory", "redis"], help="run one scenario")
    parser.add_argument("--publishers", type=int, default=8, help="publishing connections")
    parser.add_argument("--client-processes", type=int, default=2)
    args = parser.parse_args()

    names = [args.only] if args.only else ["memory", "redis"]
    results: dict[str, list[Result]] = {name: [] for name in names}
    with redis_server() as redis_port:
        for run in range(args.runs):
            for name in results:
                result = run_memory(args) if name == "memory" else run_redis(args, redis_port)
                results[name].append(result)
                print(
                    f"run {run + 1} {name:6}: {result.deliveries:12,.0f} deliveries/s "
                    f"{result.publishes:9,.0f} publishes/s  closed={result.closed} "
                    f"errors={result.errors} frames/message={result.packing:.1f}",
                    flush=True,
                )
    print()
    print(
        f"{args.subscribers} subscribers on one channel, {os.cpu_count()} CPUs, "
        f"window {args.seconds:g} s, median of {args.runs} runs"
    )
    print(f"| {'setup':34} | {'deliveries/s':>12} | {'publishes/s':>11} | runs (deliveries/s) |")
    print(f"|{'-' * 36}|{'-' * 14}|{'-' * 13}|{'-' * 21}|")
    labels = {
        "memory": "memory broker, 1 process",
        "redis": f"redis broker, --workers {args.redis_workers}",
    }
    for name, runs in results.items():
        deliveries = statistics.median(r.deliveries for r in runs)
        publishes = statistics.median(r.publishes for r in runs)
        each = " / ".join(f"{r.deliveries / 1000:,.0f}k" for r in runs)
        print(f"| {labels[name]:34} | {deliveries:12,.0f} | {publishes:11,.0f} | {each} |")


if __name__ == "__main__":
    main()
