"""Running a hub app on uvicorn with settings tuned for WebSockets, and a graceful shutdown.

uvicorn answers SIGTERM by closing every WebSocket with 1012 about 0.1 s after the
signal and only then runs the lifespan shutdown, so a hub's lifespan alone comes
too late to drain queues and send 1001. `HubServer` stops accepting, then has
every running hub close its connections with 1001 after their queues drained
(bounded by ``shutdown_timeout``), and only then lets uvicorn shut down.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import logging.config
import multiprocessing
import os
import signal
import socket
import time
from collections.abc import Iterator
from multiprocessing.process import BaseProcess
from types import FrameType
from typing import Any

import uvicorn

from wshub.hub.facade import running_hubs
from wshub.ops.logs import logging_config
from wshub.ops.metrics import multiprocess_directory, worker_exited
from wshub.server.handshake_guard import HubConfig, guarded_protocol
from wshub.settings import Settings

DEFAULT_APP = "wshub.demo:app"

logger = logging.getLogger("wshub.server")


class PortInUse(OSError):
    """The address `run` should listen on is taken by another process."""


def check_port_free(host: str, port: int) -> None:
    """Bind ``host:port`` the way uvicorn will (SO_REUSEADDR), then let it go.

    Raises:
        PortInUse: another socket listens there; the message says which port and host.
    """
    if port == 0:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise PortInUse(exc.errno, f"port {port} is in use on {host}") from None
            raise


class HubServer(uvicorn.Server):
    """A uvicorn server whose shutdown closes hub connections with 1001 before uvicorn's 1012."""

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        started = time.monotonic()
        for server in self.servers:
            server.close()
        hubs = running_hubs()
        if hubs:
            await asyncio.gather(*(hub.shutdown_connections() for hub in hubs))
        # uvicorn's graceful timeout bounds the whole shutdown, the hubs' drain included:
        # what the drain used is not granted again to handlers that never return.
        budget = self.config.timeout_graceful_shutdown
        if budget is not None:
            spent = time.monotonic() - started
            remaining = max(0.5, budget - spent)  # typed int by uvicorn, used as a float
            self.config.timeout_graceful_shutdown = remaining  # type: ignore[assignment]
        await super().shutdown(sockets)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """uvicorn's signal handling, without re-raising the signal after shutdown.

        uvicorn raises a captured SIGINT/SIGTERM again once it has shut down, so the
        process would end with status 130 or "killed by SIGTERM". By then every hub
        connection has drained and closed: a stop that went as planned exits with 0.
        """
        with super().capture_signals():
            yield
            self._captured_signals.clear()


def uvicorn_config(app: Any, settings: Settings, **overrides: Any) -> uvicorn.Config:
    """Build a uvicorn config for a hub app.

    uvloop and httptools for speed; the sans-I/O websockets implementation (wshub
    reads every connection continuously, so its pause-until-receive is harmless);
    the message size limit enforced by the WebSocket layer; compression off unless
    asked for; protocol pings for library-mode liveness; a graceful-shutdown
    timeout so a handler that never returns cannot keep the process alive; and
    ``handshake_timeout``: a connection whose request headers are not complete in
    time is closed (uvicorn's ``httptools``/``h11`` protocols are swapped for those
    of `wshub.server.handshake_guard`, which add that deadline; pass
    ``handshake_timeout=None`` to turn it off).

    Args:
        app: the ASGI app or its import string (``"module:attribute"``).
        settings: wshub settings.
        **overrides: uvicorn.Config arguments that win over the above (and
            ``handshake_timeout``).

    Returns:
        A `HubConfig` (a ``uvicorn.Config`` with ``handshake_timeout``).
    """
    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "loop": "uvloop",
        "http": "httptools",
        "ws": "websockets-sansio",
        "ws_max_size": settings.max_message_size,
        "ws_per_message_deflate": settings.per_message_deflate,
        "ws_ping_interval": settings.ws_ping_interval,
        "ws_ping_timeout": settings.ws_ping_timeout,
        "timeout_graceful_shutdown": settings.shutdown_timeout + 5,
        "log_level": settings.log_level,
        "lifespan": "on",
        "handshake_timeout": settings.handshake_timeout,
    }
    options.update(overrides)
    options["http"] = guarded_protocol(options["http"])
    return HubConfig(app, **options)


def run(app: Any = DEFAULT_APP, settings: Settings | None = None, **overrides: Any) -> None:
    """Serve ``app`` until SIGINT/SIGTERM, then shut down gracefully.

    With ``settings.workers > 1``, runs that many worker processes on one socket
    (see `serve_workers`); they need a shared broker such as Redis.

    Args:
        app: the ASGI app, or its import string (required for several workers).
        settings: wshub settings; by default from ``WSHUB_*`` variables.
        **overrides: uvicorn.Config arguments.

    Raises:
        ValueError: several workers with the in-memory broker, or with an app object.
        PortInUse: the port is taken (checked before the app starts; not with ``fd``,
            ``uds`` or ``sockets`` given in ``overrides``).
    """
    settings = settings or Settings()
    overrides.setdefault("log_config", logging_config(settings.log_format, settings.log_level))
    if not {"fd", "uds"} & overrides.keys():
        check_port_free(overrides.get("host", settings.host), overrides.get("port", settings.port))
    if settings.workers > 1:
        if settings.broker.startswith("memory"):
            raise ValueError("several workers need a shared broker, e.g. --broker redis://")
        if not isinstance(app, str):
            raise ValueError("several workers need the app as an import string")
        # Prometheus's multiprocess mode: the workers' metrics add up in one directory.
        with multiprocess_directory():
            code = serve_workers(app, settings, **overrides)
        raise SystemExit(code)
    HubServer(uvicorn_config(app, settings, **overrides)).run()


def serve_workers(app: str, settings: Settings, **overrides: Any) -> int:
    """Run ``settings.workers`` processes serving ``app`` on one port.

    The parent binds one listening socket per worker, all on the same port with
    SO_REUSEPORT, so that the kernel spreads new connections over the workers (with
    one shared socket, whichever worker's loop wakes first takes them all). It starts
    the workers (spawned: each has its own event loop and hub), forwards SIGINT and
    SIGTERM so each drains and sends 1001, and replaces a worker that dies, on the
    same socket, while the others keep serving.

    Returns:
        The exit code: 0 when every worker stopped cleanly.
    """
    sockets = _reuseport_sockets(settings.host, settings.port, settings.workers)
    log_config = overrides.get("log_config")
    if isinstance(log_config, dict):
        logging.config.dictConfig(log_config)  # the parent's own lines, as the workers log
    host, port = sockets[0].getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    logger.info(
        "serving %s on http://%s:%d with %d workers (parent pid %d)",
        app,
        shown,
        port,
        settings.workers,
        os.getpid(),
    )
    context = multiprocessing.get_context("spawn")

    def start(index: int) -> BaseProcess:
        args = (app, settings, overrides, sockets[index])
        process = context.Process(target=_worker, args=args)
        process.start()
        return process

    workers = [start(index) for index in range(settings.workers)]
    stopping = False

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for process in workers:
            if process.is_alive() and process.pid is not None:
                os.kill(process.pid, signal.SIGTERM)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        while not stopping:
            time.sleep(0.2)
            for index, process in enumerate(workers):
                if not process.is_alive() and not stopping:
                    logger.warning(
                        "worker %s died (exit %s); starting another", process.pid, process.exitcode
                    )
                    worker_exited(process.pid)
                    workers[index] = start(index)
        for process in workers:
            process.join(settings.shutdown_timeout + 10)
            worker_exited(process.pid)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for sock in sockets:
            sock.close()
    return 0 if all(p.exitcode == 0 for p in workers) else 1


def _reuseport_sockets(host: str, port: int, count: int) -> list[socket.socket]:
    """``count`` listening sockets on one address, with SO_REUSEPORT (port 0: one is picked)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sockets: list[socket.socket] = []
    for _ in range(count):
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        port = sock.getsockname()[1]
        sock.listen(2048)
        sock.set_inheritable(True)
        sockets.append(sock)
    return sockets


def _worker(app: str, settings: Settings, overrides: dict[str, Any], sock: socket.socket) -> None:
    HubServer(uvicorn_config(app, settings, **overrides)).run(sockets=[sock])
