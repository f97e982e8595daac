"""Test support: a throwaway redis-server per test, and waiting on conditions.

`RedisServer` runs ``redis-server`` on a free port of 127.0.0.1 (never 6379) with
persistence off, waits until it answers PING (no sleeps), and can be stopped and
started again on the same port to simulate outages. `redis_server` is the context
manager fixtures wrap::

    @pytest.fixture
    def redis_server() -> Iterator[RedisServer]:
        with redis_support.redis_server() as server:
            yield server

Without the binary, tests skip with a hint to ``apt-get install redis-server``;
with ``CI=true`` they fail instead, so CI never passes by skipping. Start-up deadlines
are multiplied by ``WSHUB_TEST_TIME_SCALE`` (`wshub.testing.TIME_SCALE`). `Recorder`
is a `BrokerEvents` that records what a broker pushes.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from typing import IO, NoReturn

import pytest

from wshub.brokers.base import BrokerState, Publication
from wshub.testing import TIME_SCALE

_NEVER = 6379  # a developer's own Redis: tests must never talk to it


def require_binary(name: str) -> str:
    """Find a Redis binary or end the test: fail under ``CI=true``, else skip.

    Returns:
        The binary's path.
    """
    path = shutil.which(name)
    if path is not None:
        return path
    missing_tool(f"{name} not found: apt-get install redis-server (or brew install redis)")


def missing_tool(message: str) -> NoReturn:
    """End a test that needs a tool this machine lacks: fail under ``CI=true``, else skip."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


def free_port() -> int:
    """Return a TCP port of 127.0.0.1 that nothing listens on right now (never 6379)."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port: int = sock.getsockname()[1]
        if port != _NEVER:
            return port


def ping(port: int, timeout: float = 0.5) -> bool:
    """Tell whether a Redis on ``port`` answers PING (NOAUTH counts: it is up, with a password)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith((b"+PONG", b"-NOAUTH"))
    except OSError:
        return False


class RedisServer:
    """A ``redis-server`` child process on a fixed free port; restartable on that port.

    Attributes:
        port: the TCP port, the same across restarts.
        url: ``redis://127.0.0.1:<port>/0``.
    """

    def __init__(self, *extra_args: str) -> None:
        """Prepare a server (not started); ``extra_args`` go on its command line."""
        self._binary = require_binary("redis-server")
        self._extra = extra_args
        self._dir = tempfile.TemporaryDirectory(prefix="wshub-redis-")
        # Append mode: the child shares the file offset; reading must not move its writes.
        self._log: IO[bytes] = tempfile.TemporaryFile(mode="a+b", dir=self._dir.name)
        self._proc: subprocess.Popen[bytes] | None = None
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        """Whether the process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 10.0) -> None:
        """Spawn the server and wait until it answers PING.

        Raises:
            RuntimeError: it exited or did not answer in time (its log is in the message).
        """
        assert not self.running, "already running"
        self._proc = subprocess.Popen(self._command(), stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout * TIME_SCALE
        while not ping(self.port):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server on port {self.port} did not start:\n{self.log()}")
            time.sleep(0.005)

    def _command(self) -> list[str]:
        return [
            self._binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", self._dir.name,
            *self._extra,
        ]  # fmt: skip

    def stop(self) -> None:
        """Kill the server (SIGKILL, like a crash) and reap it. Idempotent."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
        if proc is not None:
            proc.wait(timeout=10)

    def restart(self) -> None:
        """Kill the server if it runs, then start an empty one on the same port."""
        self.stop()
        self.start()

    def log(self) -> str:
        """Return what the server logged so far."""
        self._log.seek(0)
        return self._log.read().decode(errors="replace")

    def cli(self, *args: str) -> str:
        """Run ``redis-cli -p <port> args...`` synchronously and return its output."""
        binary = require_binary("redis-cli")
        command = [binary, "-h", "127.0.0.1", "-p", str(self.port), *args]
        done = subprocess.run(command, capture_output=True, check=True, timeout=10 * TIME_SCALE)
        return done.stdout.decode()

    def close(self) -> None:
        """Stop the server and remove its files."""
        self.stop()
        self._log.close()
        self._dir.cleanup()


@contextlib.contextmanager
def redis_server(*extra_args: str) -> Iterator[RedisServer]:
    """Run a fresh, started `RedisServer` for the ``with`` block; kill it afterwards.

    Args:
        extra_args: more ``redis-server`` arguments, e.g. ``"--maxclients", "50"``.
    """
    server = _started(extra_args)
    try:
        yield server
    finally:
        server.close()


def _started(extra_args: tuple[str, ...], attempts: int = 3) -> RedisServer:
    # The free port may be taken between free_port() and redis-server's bind: try another.
    for attempt in range(attempts):
        server = RedisServer(*extra_args)
        try:
            server.start()
            return server
        except RuntimeError as exc:
            server.close()
            if attempt == attempts - 1 or "Address already in use" not in str(exc):
                raise
    raise AssertionError("unreachable")


class Recorder:
    """A `BrokerEvents` that records what a broker pushes, for assertions.

    Attributes:
        publications: every ``(channel, publication)`` in arrival order.
        states: every reported state, in order.
    """

    def __init__(self) -> None:
        self.publications: list[tuple[str, Publication]] = []
        self.states: list[BrokerState] = []

    def on_publication(self, channel: str, publication: Publication) -> None:
        """Record a publication."""
        self.publications.append((channel, publication))

    def on_state(self, state: BrokerState) -> None:
        """Record a state change."""
        self.states.append(state)

    def data(self, channel: str) -> list[bytes]:
        """Return the data of every publication received on ``channel``, in order."""
        return [p.data for c, p in self.publications if c == channel]
