"""The ``wshub`` command line: ``wshub serve``."""

from __future__ import annotations

import os
from typing import Annotated

import typer

from wshub.server import DEFAULT_APP, run
from wshub.settings import Settings

app = typer.Typer(no_args_is_help=True, help="wshub: a real-time WebSocket hub for FastAPI.")


@app.callback()
def main() -> None:
    """wshub: a real-time WebSocket hub for FastAPI."""


@app.command()
def serve(
    target: Annotated[str, typer.Argument(help="the ASGI app, as module:attribute")] = DEFAULT_APP,
    host: Annotated[str | None, typer.Option(help="interface to bind [WSHUB_HOST]")] = None,
    port: Annotated[int | None, typer.Option(help="port to bind [WSHUB_PORT]")] = None,
    workers: Annotated[int | None, typer.Option(help="worker processes [WSHUB_WORKERS]")] = None,
    broker: Annotated[str | None, typer.Option(help="broker URL [WSHUB_BROKER]")] = None,
    log_level: Annotated[str | None, typer.Option(help="log level [WSHUB_LOG_LEVEL]")] = None,
) -> None:
    """Serve a hub app (the demo by default) on uvicorn, tuned for WebSockets."""
    given = {
        "host": host,
        "port": port,
        "workers": workers,
        "broker": broker,
        "log_level": log_level,
    }
    for name, value in given.items():
        if value is not None:
            # The app builds its Hub at import, from the environment: hand options on that way.
            os.environ[f"WSHUB_{name.upper()}"] = str(value)
    settings = Settings()
    if settings.workers > 1 and not settings.broker.startswith(("redis", "rediss", "unix")):
        raise typer.BadParameter("several workers need a shared broker, e.g. --broker redis://")
    try:
        run(target, settings)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
