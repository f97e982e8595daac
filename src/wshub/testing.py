"""Helpers for testing apps built on wshub against a real server.

`run_server` starts a real uvicorn server (the same configuration `wshub serve`
uses) on an ephemeral port of 127.0.0.1, in a thread with its own event loop,
and stops it on exit. Talk to it with any WebSocket client::

    with run_server(app) as server:
        async with websockets.connect(server.ws_url("/ws")) as ws:
            ...
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from wshub.server.serve import HubServer, uvicorn_config
from wshub.settings import Settings

#: Multiplies every test timeout; set WSHUB_TEST_TIME_SCALE=3 on a slow machine.
TIME_SCALE = float(os.environ.get("WSHUB_TEST_TIME_SCALE", "1"))


@dataclasses.dataclass
class RunningServer:
    """A server started by `run_server`.

    Attributes:
        host, port: where it listens.
        server: the uvicorn server object.
    """

    host: str
    port: int
    server: HubServer

    def ws_url(self, path: str = "/ws") -> str:
        """The ``ws://`` URL of ``path``."""
        return f"ws://{self.host}:{self.port}{path}"

    def http_url(self, path: str = "/") -> str:
        """The ``http://`` URL of ``path``."""
        return f"http://{self.host}:{self.port}{path}"


@contextlib.contextmanager
def run_server(
    app: Any,
    settings: Settings | None = None,
    *,
    startup_timeout: float = 10.0,
    **uvicorn_options: Any,
) -> Iterator[RunningServer]:
    """Run ``app`` on a real uvicorn server in a thread; stop it when the block ends.

    Args:
        app: the ASGI app.
        settings: wshub settings for the server (message size, pings, ...).
        startup_timeout: seconds to wait for the server to start.
        **uvicorn_options: uvicorn.Config arguments.

    Raises:
        RuntimeError: the server did not start in time.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    host, port = sock.getsockname()
    options = {"log_level": "warning", **uvicorn_options}
    server = HubServer(uvicorn_config(app, settings or Settings(), port=port, **options))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + startup_timeout * TIME_SCALE
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the test server did not start")
            time.sleep(0.01)
        yield RunningServer(host, port, server)
    finally:
        server.should_exit = True
        thread.join(30 * TIME_SCALE)
        sock.close()


async def wait_until(
    predicate: Callable[[], object], within: float = 5.0, interval: float = 0.01
) -> None:
    """Wait until ``predicate()`` is true, polling; fail after ``within`` seconds (scaled).

    Raises:
        TimeoutError: the condition did not become true in time.
    """
    deadline = time.monotonic() + within * TIME_SCALE
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met within {within * TIME_SCALE:.1f} s")
        await asyncio.sleep(interval)
