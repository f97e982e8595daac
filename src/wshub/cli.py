"""The ``wshub`` command line: ``wshub serve`` and ``wshub publish``."""

from __future__ import annotations

import os
import sys
from typing import Annotated

import orjson
import typer

from wshub.errors import WshubError
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
    # Like uvicorn, import the app from the current directory (`wshub serve myapp:app`).
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        run(target, Settings())
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


@app.command()
def publish(
    channel: Annotated[str, typer.Argument(help="the channel to publish to")],
    data: Annotated[str, typer.Argument(help="the data, as JSON")],
    broker: Annotated[str | None, typer.Option(help="Redis URL [WSHUB_BROKER]")] = None,
    prefix: Annotated[str | None, typer.Option(help="Redis prefix [WSHUB_REDIS_PREFIX]")] = None,
) -> None:
    """Publish JSON data to a channel on every hub process sharing a Redis broker."""
    from wshub.publisher import Publisher  # needs the redis extra; serve does not

    settings = Settings()
    try:
        payload = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise typer.BadParameter(f"DATA is not valid JSON: {exc}") from None
    try:
        with Publisher(broker or settings.broker, prefix=prefix or settings.redis_prefix) as pub:
            receivers = pub.publish_sync(channel, payload)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    except WshubError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"published to {channel} ({receivers} hub process(es) subscribed)")
