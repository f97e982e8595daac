"""The ``wshub`` command line, run as a user runs it: the console script in a subprocess."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import websockets

from .support import close_code, connect, scaled

pytestmark = pytest.mark.anyio

WSHUB = Path(sys.executable).with_name("wshub")


def clean_env(**extra: str) -> dict[str, str]:
    """The test's environment without WSHUB_* settings, plus ``extra``; wide, colourless output."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WSHUB_")}
    env.update(COLUMNS="200", NO_COLOR="1", TERM="dumb", **extra)
    return env


def free_port() -> int:
    """A TCP port of 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_cli(*args: str, timeout: float = 30, **env: str) -> subprocess.CompletedProcess[str]:
    """Run ``wshub ARGS`` to completion and capture its output."""
    return subprocess.run(
        [str(WSHUB), *args],
        capture_output=True,
        text=True,
        timeout=scaled(timeout),
        env=clean_env(**env),
        stdin=subprocess.DEVNULL,
    )


@contextlib.contextmanager
def serving(*args: str, **env: str) -> Iterator[tuple[subprocess.Popen[str], int]]:
    """Start ``wshub serve --port <free> ARGS``; kill it on exit if it is still running."""
    port = free_port()
    process = subprocess.Popen(
        [str(WSHUB), "serve", "--port", str(port), "--log-level", "warning", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        env=clean_env(**env),
    )
    try:
        yield process, port
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=scaled(10))


async def wait_for_server(process: subprocess.Popen[str], port: int, within: float = 30) -> None:
    """Wait until a WebSocket connect to /ws/chat succeeds; fail if the process exits first."""
    deadline = time.monotonic() + scaled(within)
    while True:
        assert process.poll() is None, f"wshub serve exited with {process.returncode}"
        try:
            ws = await connect(f"ws://127.0.0.1:{port}/ws/chat", open_timeout=scaled(2))
        except (OSError, websockets.InvalidHandshake, TimeoutError):
            if time.monotonic() > deadline:
                raise TimeoutError(f"wshub serve did not accept within {within} s") from None
            await asyncio.sleep(0.05)
        else:
            await ws.close()
            return


def test_help_lists_the_commands() -> None:
    """``wshub --help`` exits 0 and names the serve command."""
    result = run_cli("--help")
    assert result.returncode == 0, result.stderr
    assert "serve" in result.stdout
    serve_help = run_cli("serve", "--help")
    assert serve_help.returncode == 0, serve_help.stderr
    assert "--port" in serve_help.stdout and "--workers" in serve_help.stdout


def test_several_workers_with_the_memory_broker_is_refused() -> None:
    """``wshub serve --workers 2`` on the in-memory broker exits non-zero, saying why."""
    result = run_cli("serve", "--workers", "2", "--port", str(free_port()))
    assert result.returncode != 0
    assert "several workers need a shared broker" in result.stdout + result.stderr


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
async def test_serve_starts_and_stops_cleanly_on_a_signal(sig: signal.Signals) -> None:
    """``wshub serve`` accepts WebSockets, and SIGINT or SIGTERM stops it with exit code 0."""
    with serving() as (process, port):
        await wait_for_server(process, port)
        process.send_signal(sig)
        output, _ = process.communicate(timeout=scaled(20))
        assert process.returncode == 0, output


async def test_serve_closes_open_connections_with_1001_on_sigterm() -> None:
    """A connected client is closed with 1001 (going away) when the server is stopped."""
    with serving() as (process, port):
        await wait_for_server(process, port)
        ws = await connect(f"ws://127.0.0.1:{port}/ws/chat")
        try:
            process.send_signal(signal.SIGTERM)
            with pytest.raises(websockets.ConnectionClosed):
                await asyncio.wait_for(ws.recv(), scaled(15))
            assert close_code(ws) == 1001
        finally:
            await ws.close()
        process.communicate(timeout=scaled(20))
        assert process.returncode == 0


async def test_serve_honours_wshub_max_message_size() -> None:
    """With WSHUB_MAX_MESSAGE_SIZE=1000, a 900-byte message is echoed and 2,000 bytes close 1009."""
    with serving(WSHUB_MAX_MESSAGE_SIZE="1000") as (process, port):
        await wait_for_server(process, port)
        ws = await connect(f"ws://127.0.0.1:{port}/ws/chat")
        try:
            await ws.send('{"user":"u","text":"' + "x" * 870 + '"}')
            assert len(await asyncio.wait_for(ws.recv(), scaled(5))) > 870
            await ws.send('{"user":"u","text":"' + "x" * 1970 + '"}')
            with pytest.raises(websockets.ConnectionClosed):
                await asyncio.wait_for(ws.recv(), scaled(5))
            assert close_code(ws) == 1009
        finally:
            await ws.close()
