"""Run ``wshub serve`` as real subprocesses for the multi-process tests.

`hub_processes` starts one or more ``wshub serve`` processes (the console script, as a
user runs it), each on a free port of 127.0.0.1 with its own environment, waits until
every one answers ``GET /healthz``, and on exit stops them with SIGTERM, killing
whatever is left (the whole process group, so ``--workers`` children go too). Each
process's output goes to a file, quoted in failures. Deadlines are multiplied by
``WSHUB_TEST_TIME_SCALE``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from pathlib import Path
from typing import IO, Any

import httpx

from tests.redis_support import free_port
from wshub.testing import TIME_SCALE

WSHUB = Path(sys.executable).with_name("wshub")

#: Settings for tests whose clients publish in bursts: no rate limit.
NO_RATE_LIMIT = {"WSHUB_RATE_LIMIT": "1000000000", "WSHUB_RATE_BURST": "1000000000"}


def hub_env(broker: str, prefix: str | None = None, **settings: str) -> dict[str, str]:
    """The environment of a ``wshub serve`` process: no inherited ``WSHUB_*``, then these.

    Args:
        broker: ``WSHUB_BROKER``.
        prefix: ``WSHUB_REDIS_PREFIX``, when given.
        **settings: more variables, e.g. ``WSHUB_REDIS_PROBE_INTERVAL="0.5"``.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("WSHUB_")}
    env.update(NO_COLOR="1", TERM="dumb", COLUMNS="200", WSHUB_BROKER=broker)
    if prefix is not None:
        env["WSHUB_REDIS_PREFIX"] = prefix
    env.update(settings)
    return env


@dataclasses.dataclass
class HubProcess:
    """One running ``wshub serve`` (with its workers, if any).

    Attributes:
        process: the ``wshub serve`` process (the parent, with ``--workers``).
        port: the TCP port it listens on.
        output: the file its stdout and stderr go to.
    """

    process: subprocess.Popen[bytes]
    port: int
    output: IO[bytes]

    def ws_url(self, path: str = "/ws") -> str:
        """The ``ws://`` URL of ``path``."""
        return f"ws://127.0.0.1:{self.port}{path}"

    def http_url(self, path: str = "/") -> str:
        """The ``http://`` URL of ``path``."""
        return f"http://127.0.0.1:{self.port}{path}"

    def log(self) -> str:
        """What the process printed so far."""
        self.output.seek(0)
        return self.output.read().decode(errors="replace")

    async def get(self, path: str) -> tuple[int, Any]:
        """``GET path``; return the status and the decoded JSON body."""
        async with httpx.AsyncClient(trust_env=False, timeout=2 * TIME_SCALE) as client:
            response = await client.get(self.http_url(path))
        return response.status_code, response.json()

    async def ready_status(self) -> int:
        """The status of ``GET /readyz``: 200 ready, 503 broker down."""
        status, _ = await self.get("/readyz")
        return status


def _spawn(args: Iterable[str], env: dict[str, str]) -> HubProcess:
    port = free_port()
    output = tempfile.TemporaryFile(mode="a+b")
    command = [str(WSHUB), "serve", "--port", str(port), "--log-level", "warning", *args]
    process = subprocess.Popen(
        command,
        stdout=output,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=env,
        start_new_session=True,  # its own process group: teardown reaches --workers children
    )
    return HubProcess(process, port, output)


async def _wait_healthy(hub: HubProcess, within: float = 30.0) -> None:
    deadline = time.monotonic() + within * TIME_SCALE
    async with httpx.AsyncClient(trust_env=False, timeout=1.0) as client:
        while True:
            exited = hub.process.poll()
            assert exited is None, f"wshub serve exited with {exited}:\n{hub.log()}"
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get(hub.http_url("/healthz"))).status_code == 200:
                    return
            if time.monotonic() > deadline:
                raise TimeoutError(f"wshub serve did not answer /healthz:\n{hub.log()}")
            await asyncio.sleep(0.05)


async def stop(hub: HubProcess, within: float = 15.0) -> int | None:
    """Stop ``hub`` with SIGTERM (waiting up to ``within`` s), then kill its process group.

    Returns:
        The exit code, or None when it had to be killed.
    """
    process = hub.process
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        for _ in range(int(within * TIME_SCALE / 0.05)):
            if process.poll() is not None:
                break
            await asyncio.sleep(0.05)
    code = process.poll()
    _kill_group(hub)
    return code


def _kill_group(hub: HubProcess) -> None:
    """SIGKILL whatever is left of the process group this test started, and reap the parent."""
    pgid = hub.process.pid  # start_new_session: the child leads a group of its own
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
    hub.process.wait(timeout=10)


@contextlib.asynccontextmanager
async def hub_processes(
    count: int, env: dict[str, str], *args: str
) -> AsyncIterator[list[HubProcess]]:
    """Run ``count`` ``wshub serve ARGS`` processes, each on a free port, healthy on entry.

    Args:
        count: how many processes.
        env: their environment (see `hub_env`).
        *args: more ``wshub serve`` arguments, e.g. ``"--workers", "2"``.

    Yields:
        The processes, in start order. All are stopped (and killed if need be) on exit.
    """
    hubs: list[HubProcess] = []
    try:
        for _ in range(count):
            hubs.append(_spawn(args, env))
        await asyncio.gather(*(_wait_healthy(hub) for hub in hubs))
        yield hubs
    finally:
        for hub in hubs:
            with contextlib.suppress(Exception):
                await stop(hub)
            _kill_group(hub)
            hub.output.close()


async def run_cli(*args: str, env: dict[str, str], within: float = 30.0) -> tuple[int, str]:
    """Run ``wshub ARGS`` to completion; return its exit code and its output (stderr too)."""
    process = await asyncio.create_subprocess_exec(
        str(WSHUB),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        stdin=asyncio.subprocess.DEVNULL,
        env=env,
    )
    try:
        output, _ = await asyncio.wait_for(process.communicate(), within * TIME_SCALE)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return process.returncode, output.decode(errors="replace")


async def channels_in_redis(admin: Any, prefix: str) -> set[str]:
    """The wshub channels Redis has subscribers for under ``prefix``, without the prefix.

    Leaves out wshub's internal channels: the probe channels (``__probe__:<id>``, one
    per broker) and ``#all`` (every hub subscribes it while running); see docs/redis.md.
    """
    names = {name.decode()[len(prefix) :] for name in await admin.pubsub_channels(f"{prefix}*")}
    return {name for name in names if not name.startswith("__probe__:") and name != "#all"}


async def numsub(admin: Any, name: str) -> int:
    """How many subscriber connections Redis holds on the channel ``name`` (prefix included)."""
    [(_, count)] = await admin.pubsub_numsub(name)
    return int(count)


async def eventually(
    check: Callable[[], Awaitable[object]], within: float = 5.0, what: str = "condition"
) -> None:
    """Wait until ``await check()`` is true, polling; fail after ``within`` s (scaled).

    Raises:
        TimeoutError: naming ``what``.
    """
    deadline = time.monotonic() + within * TIME_SCALE
    while not await check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not met within {within * TIME_SCALE:.1f} s")
        await asyncio.sleep(0.02)


async def wait_channels(admin: Any, prefix: str, expected: set[str], within: float = 5.0) -> None:
    """Wait until `channels_in_redis` is exactly ``expected``; fail showing what it was."""
    seen: set[str] = set()

    async def check() -> bool:
        nonlocal seen
        seen = await channels_in_redis(admin, prefix)
        return seen == expected

    try:
        await eventually(check, within)
    except TimeoutError:
        raise AssertionError(
            f"PUBSUB CHANNELS: {sorted(seen)}, wanted {sorted(expected)}"
        ) from None
