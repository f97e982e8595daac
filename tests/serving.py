"""A real server that can be stopped and started again on the same port.

`wshub.testing.run_server` picks a new ephemeral port every time; reconnect tests
need the clients' URL to stay valid across a restart, so `RestartableServer` keeps
its port. The app object (and so its `Hub` and broker) lives on between runs: with
the memory broker, history survives a restart of the uvicorn server, as it would
with Redis across a restart of the process.

    with RestartableServer(app) as server:
        ...
        server.stop()   # clients see 1001, then connection refused
        server.start()  # same port; clients reconnect by themselves
"""

from __future__ import annotations

import socket
import threading
import time
from types import TracebackType
from typing import Any

from wshub.server.serve import HubServer, uvicorn_config
from wshub.settings import Settings
from wshub.testing import TIME_SCALE


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port of ``host`` nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a listening socket could be bound to ``host:port`` now."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


class RestartableServer:
    """uvicorn (`HubServer`, as `wshub serve` runs it) in a thread, on a fixed port.

    Args:
        app: the ASGI app; the same object serves every run.
        settings: wshub settings for uvicorn (message size, pings, ...).
        port: the port; 0 picks a free one once, kept across restarts.
        **uvicorn_options: uvicorn.Config arguments.
    """

    def __init__(
        self,
        app: Any,
        settings: Settings | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        **uvicorn_options: Any,
    ) -> None:
        self.app = app
        self.settings = settings or Settings()
        self.host = host
        self.port = port or free_port(host)
        self.options = {"log_level": "warning", **uvicorn_options}
        self.server: HubServer | None = None
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None

    def start(self, timeout: float = 10.0) -> None:
        """Listen again on the same port and wait until the app has started.

        Raises:
            RuntimeError: the server did not start in time.
        """
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        config = uvicorn_config(self.app, self.settings, port=self.port, **self.options)
        server = HubServer(config)
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.server, self._thread, self._sock = server, thread, sock
        thread.start()
        deadline = time.monotonic() + timeout * TIME_SCALE
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the server on port {self.port} did not start")
            time.sleep(0.01)

    def stop(self) -> None:
        """Shut down gracefully (clients get 1001) and free the port. Idempotent."""
        if self.server is not None:
            self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(30 * TIME_SCALE)
        if self._sock is not None:
            self._sock.close()
        self.server = self._thread = self._sock = None

    @property
    def running(self) -> bool:
        """Whether the server is started."""
        return self.server is not None and self.server.started

    def ws_url(self, path: str = "/ws") -> str:
        """The ``ws://`` URL of ``path``."""
        return f"ws://{self.host}:{self.port}{path}"

    def http_url(self, path: str = "/") -> str:
        """The ``http://`` URL of ``path``."""
        return f"http://{self.host}:{self.port}{path}"

    def __enter__(self) -> RestartableServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
