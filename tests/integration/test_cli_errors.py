"""The first hour with the command line: every mistake is one line naming what is valid.

Each case runs the console script in a subprocess, as a user does, and checks that
the error names the valid values, that the exit status is non-zero, and that no
traceback is printed.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .support import scaled
from .test_cli import WSHUB, clean_env, free_port, run_cli


def assert_one_error(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "Traceback" not in output and "pydantic" not in output, output
    flat = " ".join(output.replace("│", " ").split())
    for needle in needles:
        assert needle in flat, output


def test_unknown_log_level_names_the_levels() -> None:
    result = run_cli("serve", "--log-level", "loud", "--port", str(free_port()))
    assert_one_error(result, "'loud' is not one of", "'debug'", "'trace'")


def test_unknown_log_format_names_the_formats() -> None:
    result = run_cli("serve", "--log-format", "yaml", "--port", str(free_port()))
    assert_one_error(result, "'yaml' is not one of 'text', 'json'")


def test_bad_log_format_in_the_environment_is_one_line() -> None:
    result = run_cli("serve", "--port", str(free_port()), WSHUB_LOG_FORMAT="yaml")
    assert_one_error(result, "WSHUB_LOG_FORMAT", "'text', 'json'")


def test_bad_setting_in_the_environment_is_one_line() -> None:
    result = run_cli("serve", "--port", str(free_port()), WSHUB_QUEUE_MAX_MESSAGES="many")
    assert_one_error(result, "invalid setting WSHUB_QUEUE_MAX_MESSAGES=many")
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_unknown_bench_scenario_names_the_scenarios() -> None:
    result = run_cli("bench", "run", "nosuch")
    assert_one_error(result, "'nosuch' is not one of", "'fanout'", "'redis'")


def test_serving_a_hub_instead_of_an_app_says_so(tmp_path: Path) -> None:
    (tmp_path / "libchat.py").write_text("from wshub import Hub\nhub = Hub()\nnumber = 3\n")
    result = subprocess.run(
        [str(WSHUB), "serve", "libchat:hub", "--port", str(free_port())],
        capture_output=True,
        text=True,
        timeout=scaled(30),
        env=clean_env(),
        cwd=tmp_path,
    )
    assert_one_error(result, "libchat:hub is a Hub, not an ASGI app")
    result = subprocess.run(
        [str(WSHUB), "serve", "libchat:number"],
        capture_output=True,
        text=True,
        timeout=scaled(30),
        env=clean_env(),
        cwd=tmp_path,
    )
    assert_one_error(result, "libchat:number is a 'int' object, not an ASGI app")


def test_serving_a_missing_module_is_one_line() -> None:
    assert_one_error(run_cli("serve", "nosuchmodule:app"), 'Could not import module "nosuchmodule"')


def test_publish_to_a_bad_channel_names_the_rules() -> None:
    result = run_cli("publish", "bad#chan", "{}")
    assert_one_error(result, "'bad#chan' is not a channel name", "letters, digits and _-:.@/=+")


def test_serve_help_shows_the_defaults() -> None:
    result = run_cli("serve", "--help")
    assert result.returncode == 0, result.stderr
    flat = " ".join(result.stdout.replace("│", " ").split())
    for default in ("[default: 127.0.0.1]", "[default: 8000]", "[default: memory://]"):
        assert default in flat, result.stdout
    assert "[default: info]" in flat and "WSHUB_PORT" in flat


@pytest.mark.parametrize("how", ["option", "env"])
def test_a_busy_port_is_one_line_and_exit_1(how: str) -> None:
    """A port another process listens on: one line naming it, status 1, the app never starts."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = str(holder.getsockname()[1])
        if how == "option":
            result = run_cli("serve", "--port", port)
        else:
            result = run_cli("serve", WSHUB_PORT=port)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert output.strip() == (
        f"wshub: port {port} is in use on 127.0.0.1: pick another with --port"
    ), output


def test_make_run_on_a_busy_port_names_the_make_variable() -> None:
    """``make run PORT=N`` on a busy port: the hint is ``make run PORT=...``, exit non-zero."""
    root = Path(__file__).resolve().parents[2]
    venv_bin = Path(sys.executable).parent
    if not (root / "Makefile").exists() or venv_bin != root / ".venv" / "bin":
        pytest.skip("needs the checkout's own .venv")
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = str(holder.getsockname()[1])
        started = time.monotonic()
        result = subprocess.run(
            ["make", "--no-print-directory", "-s", "run", f"PORT={port}"],
            capture_output=True,
            text=True,
            timeout=scaled(60),
            env=clean_env(),
            cwd=root,
        )
    assert result.returncode != 0
    assert f"wshub: port {port} is in use on 127.0.0.1: pick another with make run PORT=..." in (
        result.stderr
    ), result.stderr
    assert "Traceback" not in result.stderr
    assert time.monotonic() - started < scaled(30)


def test_make_run_takes_wshub_port_from_the_environment() -> None:
    """``WSHUB_PORT=N make run`` binds N (here: refused as busy, which proves it tried N)."""
    root = Path(__file__).resolve().parents[2]
    if Path(sys.executable).parent != root / ".venv" / "bin":
        pytest.skip("needs the checkout's own .venv")
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = str(holder.getsockname()[1])
        result = subprocess.run(
            ["make", "--no-print-directory", "-s", "run"],
            capture_output=True,
            text=True,
            timeout=scaled(60),
            env=clean_env(WSHUB_PORT=port),
            cwd=root,
        )
    assert f"port {port} is in use" in result.stderr, result.stderr


def test_workers_log_the_address_and_an_unreachable_redis_says_so() -> None:
    """``--workers 2``: the parent logs the address; Redis down at startup is "cannot reach"."""
    port, dead = free_port(), free_port()  # nothing listens on `dead`
    process = subprocess.Popen(
        [str(WSHUB), "serve", "--port", str(port), "--workers", "2"]
        + ["--broker", f"redis://127.0.0.1:{dead}/0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        env=clean_env(),
    )
    lines: list[str] = []
    try:
        assert process.stdout is not None
        deadline = time.monotonic() + scaled(30)
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "cannot reach Redis at" in line:
                break
    finally:
        process.terminate()
        rest, _ = process.communicate(timeout=scaled(30))
    log = "".join(lines) + rest
    assert f"serving wshub.demo:app on http://127.0.0.1:{port} with 2 workers" in log, log
    assert f"cannot reach Redis at 127.0.0.1:{dead}" in log, log
    assert "lost its connection" not in log, log
