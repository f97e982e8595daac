"""Test support: a throwaway Redis Sentinel setup (master, replica, sentinels) per test.

`sentinel_setup` starts, on free ports of 127.0.0.1 (never 6379):

- a master and a replica (``--replicaof``), both `RedisServer` objects, and waits
  until the master reports the replica online;
- one or more sentinels (``redis-server <conf> --sentinel``, or ``redis-sentinel``)
  monitoring the master as ``mymaster`` with quorum 1 and fast timeouts, each with a
  generated config in a temporary directory (sentinels rewrite their config);

and waits until every sentinel lists the replica, so that a failover can promote it.
Everything is killed on exit. Without the binaries the test skips, or fails under
``CI=true`` (`tests.redis_support.require_binary`). Deadlines are multiplied by
``WSHUB_TEST_TIME_SCALE``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import redis

from tests.redis_support import RedisServer, free_port, ping, redis_server, require_binary
from wshub.testing import TIME_SCALE

SERVICE = "mymaster"


class SentinelProcess:
    """One sentinel on a free port, with its own generated config file.

    Attributes:
        port: its TCP port.
    """

    def __init__(self, master_port: int, directory: Path) -> None:
        """Write the config; nothing runs before `start`."""
        self.port = free_port()
        self._conf = directory / f"sentinel-{self.port}.conf"
        self._conf.write_text(
            f"port {self.port}\n"
            "bind 127.0.0.1\n"
            f'dir "{directory}"\n'
            "sentinel resolve-hostnames no\n"
            f"sentinel monitor {SERVICE} 127.0.0.1 {master_port} 1\n"
            f"sentinel down-after-milliseconds {SERVICE} 500\n"
            f"sentinel failover-timeout {SERVICE} 2000\n"
            f"sentinel parallel-syncs {SERVICE} 1\n"
        )
        self._log: IO[bytes] = tempfile.TemporaryFile(mode="a+b", dir=directory)
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10.0) -> None:
        """Spawn the sentinel and wait until it answers PING.

        Raises:
            RuntimeError: it exited or did not answer in time (its log in the message).
        """
        if shutil.which("redis-sentinel"):
            command = [require_binary("redis-sentinel"), str(self._conf)]
        else:
            command = [require_binary("redis-server"), str(self._conf), "--sentinel"]
        self._proc = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout * TIME_SCALE
        while not ping(self.port):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"sentinel on port {self.port} did not start:\n{self.log()}")
            time.sleep(0.01)

    def client(self) -> redis.Redis:
        """A sync client of this sentinel (close it)."""
        return redis.Redis(port=self.port, socket_timeout=2 * TIME_SCALE)

    def master_port(self) -> int | None:
        """The master's port as this sentinel names it now, or None when it names none."""
        with self.client() as client:
            address = client.sentinel_get_master_addr_by_name(SERVICE)
        return int(address[1]) if address else None

    def replica_ports(self) -> set[int]:
        """The ports of the replicas this sentinel sees, and deems up."""
        with self.client() as client:
            replicas = client.sentinel_slaves(SERVICE)
        return {int(r["port"]) for r in replicas if not r["is_sdown"] and not r["is_disconnected"]}

    def log(self) -> str:
        """What the sentinel logged so far."""
        self._log.seek(0)
        return self._log.read().decode(errors="replace")

    def stop(self) -> None:
        """Kill the sentinel and reap it. Idempotent."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
        if proc is not None:
            proc.wait(timeout=10)

    def close(self) -> None:
        """Stop the sentinel and close its log."""
        self.stop()
        self._log.close()


@dataclasses.dataclass
class SentinelSetup:
    """A master, its replica and the sentinels watching them.

    Attributes:
        master: the master at start (it stays the master until a failover).
        replica: the replica at start, promoted by a failover.
        sentinels: the sentinels.
        url: ``redis+sentinel://127.0.0.1:<p1>[,...]/mymaster``.
    """

    master: RedisServer
    replica: RedisServer
    sentinels: list[SentinelProcess]
    url: str

    def logs(self) -> str:
        """Every process's log, for failure messages."""
        parts = [f"--- master\n{self.master.log()}", f"--- replica\n{self.replica.log()}"]
        parts += [f"--- sentinel {s.port}\n{s.log()}" for s in self.sentinels]
        return "\n".join(parts)

    def wait(self, what: str, check: Callable[[], bool], within: float = 15.0) -> None:
        """Wait (sync, polling) until ``check()`` is true; fail with every log."""
        deadline = time.monotonic() + within * TIME_SCALE
        while not check():
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{what} not within {within * TIME_SCALE:.1f} s\n{self.logs()}"
                )
            time.sleep(0.02)

    def failed_over(self) -> bool:
        """Whether every sentinel names the replica as the master now."""
        return all(s.master_port() == self.replica.port for s in self.sentinels)


def _replica_online(master: RedisServer) -> bool:
    with redis.Redis(port=master.port, socket_timeout=2) as client:
        info = client.info("replication")
    return any(
        isinstance(v, dict) and v.get("state") == "online"
        for k, v in info.items()
        if k.startswith("slave")
    )


@contextlib.contextmanager
def sentinel_setup(sentinels: int = 1) -> Iterator[SentinelSetup]:
    """Run a master, a replica and ``sentinels`` sentinels for the ``with`` block.

    Yields:
        The setup, the replica replicating and known to every sentinel.
    """
    require_binary("redis-server")
    # No diskless-sync delay (5 s by default): the replica syncs at once.
    fast_sync = ("--repl-diskless-sync-delay", "0")
    with (
        redis_server(*fast_sync) as master,
        redis_server(*fast_sync, "--replicaof", "127.0.0.1", str(master.port)) as replica,
        tempfile.TemporaryDirectory(prefix="wshub-sentinel-") as directory,
    ):
        processes: list[SentinelProcess] = []
        try:
            setup = SentinelSetup(master, replica, processes, "")
            setup.wait("the replica online", lambda: _replica_online(master))
            for _ in range(sentinels):
                process = SentinelProcess(master.port, Path(directory))
                processes.append(process)
                process.start()
            hosts = ",".join(f"127.0.0.1:{s.port}" for s in processes)
            setup.url = f"redis+sentinel://{hosts}/{SERVICE}"
            setup.wait(
                "every sentinel sees the replica",
                lambda: all(replica.port in s.replica_ports() for s in processes),
            )
            if sentinels > 1:
                # A failover needs a majority of sentinels that know each other.
                setup.wait(
                    "the sentinels know each other",
                    lambda: all(_peers(s) == sentinels - 1 for s in processes),
                )
            yield setup
        finally:
            for process in processes:
                process.close()


def _peers(sentinel: SentinelProcess) -> int:
    with sentinel.client() as client:
        return len(client.sentinel_sentinels(SERVICE))
