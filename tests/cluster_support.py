"""Test support: a throwaway 3-master Redis Cluster, started once per test session.

`RedisClusterNodes` runs three ``redis-server --cluster-enabled yes`` on free ports of
127.0.0.1 (each with its cluster bus port, +10000, free too), joins them with
``redis-cli --cluster create ... --cluster-replicas 0`` and waits for
``cluster_state:ok`` on every node. A node can be killed (SIGKILL) and started again
with the same port and ``nodes.conf``: it keeps its id and slots but comes back with an
empty dataset (persistence is off). The ``redis_cluster`` fixture (session scope,
registered in tests/conftest.py) starts it once; tests keep to their own prefixes.

Without the binaries the tests skip, or fail under ``CI=true`` (`require_binary`).
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from typing import IO

import pytest
import redis

from tests.redis_support import ping, require_binary
from wshub.testing import TIME_SCALE


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def cluster_ports(count: int = 3) -> list[int]:
    """``count`` free ports whose cluster bus ports (+10000) are free too."""
    ports: list[int] = []
    while len(ports) < count:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port: int = sock.getsockname()[1]
        if port + 10000 < 65536 and port != 6379 and port not in ports and _free(port + 10000):
            ports.append(port)
    return ports


class RedisClusterNodes:
    """Three cluster-enabled redis-servers joined into one cluster of three masters.

    Attributes:
        ports: each node's port.
        url: ``redis+cluster://127.0.0.1:<p1>,127.0.0.1:<p2>,127.0.0.1:<p3>``.
    """

    def __init__(self) -> None:
        self._server = require_binary("redis-server")
        self._cli = require_binary("redis-cli")
        self._dir = tempfile.TemporaryDirectory(prefix="wshub-cluster-")
        self.ports = cluster_ports()
        self._procs: dict[int, subprocess.Popen[bytes]] = {}
        self._logs: dict[int, IO[bytes]] = {}
        self.url = "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in self.ports)

    def start_node(self, port: int, timeout: float = 10.0) -> None:
        """Start (or restart) the node on ``port`` with its nodes.conf; wait for PING."""
        if port not in self._logs:
            self._logs[port] = tempfile.TemporaryFile(mode="a+b", dir=self._dir.name)
        log = self._logs[port]
        command = [
            self._server,
            "--port", str(port),
            "--cluster-enabled", "yes",
            "--cluster-config-file", f"{self._dir.name}/nodes-{port}.conf",
            "--save", "",
            "--appendonly", "no",
            "--bind", "127.0.0.1",
            "--cluster-node-timeout", "2000",
            "--dir", self._dir.name,
        ]  # fmt: skip
        proc = self._procs[port] = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout * TIME_SCALE
        while not ping(port):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"cluster node {port} did not start:\n{self.log(port)}")
            time.sleep(0.01)

    def kill_node(self, port: int) -> None:
        """SIGKILL the node on ``port`` (a crash) and reap it."""
        proc = self._procs.pop(port, None)
        if proc is not None and proc.poll() is None:
            proc.kill()
        if proc is not None:
            proc.wait(timeout=10)

    def start(self) -> None:
        """Start the three nodes, create the cluster, wait until it is ok everywhere."""
        for port in self.ports:
            self.start_node(port)
        nodes = [f"127.0.0.1:{p}" for p in self.ports]
        subprocess.run(
            [self._cli, "--cluster", "create", *nodes, "--cluster-replicas", "0", "--cluster-yes"],
            capture_output=True,
            check=True,
            timeout=30 * TIME_SCALE,
        )
        self.wait_ok()

    def cli(self, port: int, *args: str) -> str:
        """``redis-cli -p <port> args...``; its output."""
        done = subprocess.run(
            [self._cli, "-h", "127.0.0.1", "-p", str(port), *args],
            capture_output=True,
            check=True,
            timeout=10 * TIME_SCALE,
        )
        return done.stdout.decode()

    def wait_ok(self, within: float = 20.0) -> None:
        """Wait until every node reports ``cluster_state:ok`` and knows all the slots."""
        deadline = time.monotonic() + within * TIME_SCALE
        while True:
            states = []
            for port in self.ports:
                try:
                    states.append(self.cli(port, "CLUSTER", "INFO"))
                except subprocess.CalledProcessError:
                    states.append("")
            if all("cluster_state:ok" in s and "cluster_slots_ok:16384" in s for s in states):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"cluster not ok: {states}")
            time.sleep(0.05)

    def is_failing(self, port: int) -> bool:
        """Whether the node on ``port`` reports ``cluster_state:fail``."""
        return "cluster_state:fail" in self.cli(port, "CLUSTER", "INFO")

    def node_id(self, port: int) -> str:
        """The cluster node id of the node on ``port``."""
        return self.cli(port, "CLUSTER", "MYID").strip()

    def move_slot(self, slot: int, to_port: int, within: float = 20.0) -> None:
        """Give an EMPTY ``slot`` to the node on ``to_port`` (CLUSTER SETSLOT ... NODE), and
        wait until every node names that owner: without a config epoch bump, gossip can
        briefly turn a node's view back, so nodes that disagree are told again."""
        target = self.node_id(to_port)
        deadline = time.monotonic() + within * TIME_SCALE
        pending = [to_port, *(p for p in self.ports if p != to_port)]
        while pending:
            for port in pending:
                self.cli(port, "CLUSTER", "SETSLOT", str(slot), "NODE", target)
            time.sleep(0.1)
            pending = [p for p in self.ports if self.owner_port(p, slot) != to_port]
            if pending and time.monotonic() > deadline:
                raise TimeoutError(f"nodes {pending} still disagree on slot {slot}'s owner")

    def owner_port(self, port: int, slot: int) -> int | None:
        """The port of the master that the node on ``port`` says owns ``slot``."""
        client = redis.Redis(port=port, socket_timeout=5)
        try:
            for first, last, master, *_ in client.execute_command("CLUSTER", "SLOTS"):
                if int(first) <= slot <= int(last):
                    return int(master[1])
            return None
        finally:
            client.close()

    def log(self, port: int) -> str:
        """What the node on ``port`` logged so far."""
        log = self._logs.get(port)
        if log is None:
            return ""
        log.seek(0)
        return log.read().decode(errors="replace")

    def close(self) -> None:
        """Kill every node, remove the files."""
        for port in list(self._procs):
            self.kill_node(port)
        for log in self._logs.values():
            log.close()
        self._dir.cleanup()


@contextlib.contextmanager
def running_cluster() -> Iterator[RedisClusterNodes]:
    """A started `RedisClusterNodes` for the ``with`` block; killed afterwards."""
    nodes = RedisClusterNodes()
    try:
        nodes.start()
        yield nodes
    finally:
        nodes.close()


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisClusterNodes]:
    """A 3-master Redis Cluster shared by the whole test session (skips without redis)."""
    with running_cluster() as nodes:
        yield nodes
