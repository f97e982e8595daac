"""The ``wshub`` command line: ``wshub serve``, ``publish``, ``types`` and ``bench``."""

from __future__ import annotations

import enum
import os
import sys
from typing import TYPE_CHECKING, Annotated, Any

import orjson
import pydantic
import typer

from wshub.core.channels import MAX_CHANNEL_LENGTH, is_valid_channel
from wshub.core.errors import WshubError
from wshub.server.serve import DEFAULT_APP, PortInUse, run
from wshub.settings import Settings

if TYPE_CHECKING:
    from wshub.bench.runner import Result

app = typer.Typer(no_args_is_help=True, help="wshub: a real-time WebSocket hub for FastAPI.")


@app.callback()
def main() -> None:
    """wshub: a real-time WebSocket hub for FastAPI."""


class LogLevel(enum.StrEnum):
    """The levels `wshub serve --log-level` takes (``trace`` is uvicorn's, below debug)."""

    CRITICAL = "critical"
    ERROR = "error"
    WARNING = "warning"
    INFO = "info"
    DEBUG = "debug"
    TRACE = "trace"


class LogFormat(enum.StrEnum):
    """``text``, or ``json``: one object per line."""

    TEXT = "text"
    JSON = "json"


class Scenario(enum.StrEnum):
    """The scenarios of `wshub bench run`."""

    FANOUT = "fanout"
    SLOW = "slow"
    ROOMS = "rooms"
    IDLE = "idle"
    REDIS = "redis"


_DEFAULTS = Settings.model_fields


def _default(name: str) -> Any:
    return _DEFAULTS[name].default


_DEFAULT_LOG_LEVEL = LogLevel(_default("log_level"))
_DEFAULT_LOG_FORMAT = LogFormat(_default("log_format"))


@app.command()
def serve(
    target: Annotated[str, typer.Argument(help="the ASGI app, as module:attribute")] = DEFAULT_APP,
    host: Annotated[str, typer.Option(help="interface to bind", envvar="WSHUB_HOST")] = _default(
        "host"
    ),
    port: Annotated[
        int, typer.Option(help="port to bind", envvar="WSHUB_PORT", min=0, max=65535)
    ] = _default("port"),
    workers: Annotated[
        int,
        typer.Option(
            help="worker processes (more than 1 needs Redis)", envvar="WSHUB_WORKERS", min=1
        ),
    ] = _default("workers"),
    broker: Annotated[
        str, typer.Option(help="broker URL: memory:// or redis://...", envvar="WSHUB_BROKER")
    ] = _default("broker"),
    log_level: Annotated[
        LogLevel,
        typer.Option(
            help="log level of uvicorn and wshub",
            envvar="WSHUB_LOG_LEVEL",
            case_sensitive=False,
        ),
    ] = _DEFAULT_LOG_LEVEL,
    log_format: Annotated[
        LogFormat,
        typer.Option(help="text, or json: one object per line", envvar="WSHUB_LOG_FORMAT"),
    ] = _DEFAULT_LOG_FORMAT,
) -> None:
    """Serve a hub app (the demo by default) on uvicorn, tuned for WebSockets.

    Each option falls back to its WSHUB_* variable, then to the default shown.
    """
    given = {
        "host": host,
        "port": port,
        "workers": workers,
        "broker": broker,
        "log_level": log_level.value,
        "log_format": log_format.value,
    }
    for name, value in given.items():
        # The app builds its Hub at import, from the environment: hand options on that way.
        os.environ[f"WSHUB_{name.upper()}"] = str(value)
    # Like uvicorn, import the app from the current directory (`wshub serve myapp:app`).
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    settings = _settings()
    _check_app(target)
    try:
        run(target, settings)
    except PortInUse as exc:
        hint = os.environ.get("WSHUB_PORT_HINT") or "--port"
        _fail(f"{exc.strerror}: pick another with {hint}")
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


def _fail(message: str) -> None:
    """Say what went wrong in one line on stderr and exit with status 1."""
    typer.echo(f"wshub: {message}", err=True)
    raise typer.Exit(1)


def _settings() -> Settings:
    """`Settings` from the environment; a bad ``WSHUB_*`` value is one line, not a dump."""
    try:
        return Settings()
    except pydantic.ValidationError as exc:
        problems = []
        for error in exc.errors():
            name = "WSHUB_" + "_".join(str(part) for part in error["loc"]).upper()
            value = os.environ.get(name, error.get("input"))
            problems.append(f"{name}={value!s}: {error['msg']}")
        _fail("invalid setting " + "; ".join(problems))
        raise  # pragma: no cover  (_fail exits)


def _check_app(target: str) -> None:
    """Import ``module:attribute`` as uvicorn will, and refuse what is not an ASGI app."""
    from uvicorn.importer import ImportFromStringError, import_from_string

    from wshub.hub.facade import Hub

    try:
        found = import_from_string(target)
    except ImportFromStringError as exc:
        raise typer.BadParameter(str(exc), param_hint="'APP'") from None
    if isinstance(found, Hub):
        raise typer.BadParameter(
            f"{target} is a Hub, not an ASGI app: serve the app it runs in "
            "(FastAPI(lifespan=hub.lifespan)), e.g. module:app",
            param_hint="'APP'",
        )
    if not callable(found):
        raise typer.BadParameter(
            f"{target} is a {type(found).__name__!r} object, not an ASGI app: name the FastAPI or "
            "Starlette app (module:attribute)",
            param_hint="'APP'",
        )


@app.command()
def publish(
    channel: Annotated[str, typer.Argument(help="the channel to publish to")],
    data: Annotated[str, typer.Argument(help="the data, as JSON")],
    broker: Annotated[str | None, typer.Option(help="Redis URL [WSHUB_BROKER]")] = None,
    prefix: Annotated[str | None, typer.Option(help="Redis prefix [WSHUB_REDIS_PREFIX]")] = None,
) -> None:
    """Publish JSON data to a channel on every hub process sharing a Redis broker."""
    from wshub.publisher import Publisher  # needs the redis extra; serve does not

    if not is_valid_channel(channel):
        raise typer.BadParameter(
            f"{channel!r} is not a channel name: 1 to {MAX_CHANNEL_LENGTH} characters "
            "among ASCII letters, digits and _-:.@/=+ ('#' names are the hub's own)",
            param_hint="'CHANNEL'",
        )
    settings = _settings()
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


@app.command()
def types(
    target: Annotated[
        str, typer.Argument(help="the app (module:attribute), as for serve, or its hub")
    ] = DEFAULT_APP,
    ts: Annotated[bool, typer.Option("--ts", help="print TypeScript declarations")] = False,
) -> None:
    """Print the app's types: namespace models, RPC params and results, the client API.

    The app is imported as `wshub serve` imports it; its hub is the `Hub` the target
    names, or the one `Hub` of the app's module.
    """
    from wshub.ops.typescript import declarations

    if not ts:
        raise typer.BadParameter("choose an output format: --ts (TypeScript)")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    typer.echo(declarations(_find_hub(target)))


def _find_hub(target: str) -> Any:
    """The hub of ``module:attribute``: the attribute itself, or its module's one Hub."""
    import importlib

    from uvicorn.importer import ImportFromStringError, import_from_string

    from wshub.hub.facade import Hub

    try:
        found = import_from_string(target)
    except ImportFromStringError as exc:
        raise typer.BadParameter(str(exc)) from None
    if isinstance(found, Hub):
        return found
    module = importlib.import_module(target.partition(":")[0])
    hubs = list({id(v): v for v in vars(module).values() if isinstance(v, Hub)}.values())
    if len(hubs) != 1:
        where = "no Hub" if not hubs else f"{len(hubs)} hubs"
        raise typer.BadParameter(f"{where} in module {module.__name__}: name it (module:hub)")
    return hubs[0]


bench_app = typer.Typer(help="Measure wshub and its baselines (see the README, Benchmarks).")
app.add_typer(bench_app, name="bench")

_BENCH_OPTIONS = {
    "subscribers": "subscribers (connections for idle)",
    "payload": "payload size in bytes",
    "window": "messages in flight (as-fast-as-possible mode)",
    "rate": "messages per second instead of as fast as possible",
    "duration": "seconds of publishing, at most",
    "count": "messages, at most",
    "runs": "runs per target; the median is reported",
}


@bench_app.command("run")
def bench_run(
    scenario: Annotated[Scenario, typer.Argument(help="the scenario")] = Scenario.FANOUT,
    target: Annotated[
        str,
        typer.Option(
            help="wshub, wshub-redis, wshub-chat, seed, seed-once, socketio, socketio-redis, "
            "websockets, bare"
        ),
    ] = "wshub",
    subscribers: Annotated[int, typer.Option(help=_BENCH_OPTIONS["subscribers"])] = 1000,
    payload: Annotated[int, typer.Option(help=_BENCH_OPTIONS["payload"])] = 100,
    window: Annotated[int, typer.Option(help=_BENCH_OPTIONS["window"])] = 50,
    rate: Annotated[float | None, typer.Option(help=_BENCH_OPTIONS["rate"])] = None,
    duration: Annotated[float, typer.Option(help=_BENCH_OPTIONS["duration"])] = 5.0,
    count: Annotated[int, typer.Option(help=_BENCH_OPTIONS["count"])] = 100_000,
    rooms: Annotated[int, typer.Option(help="channels, for rooms")] = 100,
    workers: Annotated[int, typer.Option(help="server worker processes (redis only)")] = 1,
    runs: Annotated[int, typer.Option(help=_BENCH_OPTIONS["runs"])] = 1,
    json_output: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Run one scenario against one target."""
    from wshub.bench.report import median_result, print_results
    from wshub.bench.runner import Options, run
    from wshub.bench.targets import TARGETS

    if target not in TARGETS:
        raise typer.BadParameter(f"unknown target {target!r}; known: {', '.join(TARGETS)}")
    options = Options(subscribers, payload, window, rate, duration, count, rooms, workers)
    try:
        results = [
            median_result([run(scenario.value, TARGETS[target], options) for _ in range(runs)])
        ]
    except ValueError as exc:  # e.g. the redis scenario with a target that has no Redis side
        raise typer.BadParameter(str(exc)) from None
    print_results(results, as_json=json_output, title=f"wshub bench {scenario}")


@bench_app.command("compare")
def bench_compare(
    targets: Annotated[str, typer.Option(help="comma-separated targets")] = (
        "wshub,wshub-redis,wshub-chat,seed,seed-once,socketio,socketio-redis,websockets"
    ),
    subscribers: Annotated[int, typer.Option(help=_BENCH_OPTIONS["subscribers"])] = 1000,
    payload: Annotated[int, typer.Option(help=_BENCH_OPTIONS["payload"])] = 100,
    rate: Annotated[float | None, typer.Option(help=_BENCH_OPTIONS["rate"])] = None,
    duration: Annotated[float, typer.Option(help=_BENCH_OPTIONS["duration"])] = 5.0,
    count: Annotated[int, typer.Option(help=_BENCH_OPTIONS["count"])] = 100_000,
    runs: Annotated[int, typer.Option(help=_BENCH_OPTIONS["runs"])] = 3,
    json_output: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Run fanout against several targets side by side; print medians and ratios."""
    from wshub.bench.report import median_result, print_results, ratios
    from wshub.bench.runner import Options, run
    from wshub.bench.targets import TARGETS

    names = [name.strip() for name in targets.split(",") if name.strip()]
    unknown = [name for name in names if name not in TARGETS]
    if unknown:
        raise typer.BadParameter(f"unknown targets {unknown}; known: {', '.join(TARGETS)}")
    options = Options(subscribers, payload, 50, rate, duration, count)
    runs_by_target: dict[str, list[Result]] = {name: [] for name in names}
    for _ in range(runs):  # interleaved, so that machine noise spreads over every target
        for name in names:
            runs_by_target[name].append(run("fanout", TARGETS[name], options))
    results = [median_result(runs_by_target[name]) for name in names]
    extra: dict[str, object] = {}
    for baseline in ("websockets", "socketio", "socketio-redis", "wshub", "seed-once", "seed"):
        if baseline in names:
            extra[f"ratio to {baseline}"] = {
                k: round(v, 2) for k, v in ratios(results, baseline).items()
            }
    print_results(results, as_json=json_output, title="wshub bench compare (medians)", extra=extra)
