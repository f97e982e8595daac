"""The servers ``wshub bench`` can measure, and how a client talks to each.

A `Target` says how to start a server (a command line), where clients connect,
what a subscriber sends to join, how a publication is sent, and how to count
and time deliveries in a received frame without decoding it (a marker counted
with ``bytes.count``; a regular expression for the sampled clients' latencies).
"""

from __future__ import annotations

import dataclasses
import re
import sys

BENCH_CHANNEL = "bench"


@dataclasses.dataclass(frozen=True)
class Target:
    """A server under test.

    Attributes:
        name: its name on the command line.
        command: the argv that serves it on ``{port}`` (formatted at start).
        path: the WebSocket path clients connect to.
        subscribe: what a subscriber sends once connected (``{channel}`` formatted), if anything.
        publish: the publisher's frame, with ``{channel}``, ``{seq}``, ``{t}``, ``{pad}``.
        marker: bytes that occur once per delivered message in a received frame.
        sample: extracts ``(seq, t)`` pairs from a received frame.
        ready: bytes in a frame that confirm the subscription (None: ready at connect).
        socketio: speaks Engine.IO/Socket.IO framing.
        rooms: supports subscribing to a channel of its choice.
        redis: runs on a throwaway Redis that the run starts (its URL in ``WSHUB_BROKER``).
    """

    name: str
    command: tuple[str, ...]
    path: str
    subscribe: str | None
    publish: str
    marker: bytes
    sample: re.Pattern[bytes]
    ready: bytes | None = None
    socketio: bool = False
    rooms: bool = False
    redis: bool = False


def _uvicorn(app: str) -> tuple[str, ...]:
    return (sys.executable, "-m", "wshub.bench.serve", app, "--port", "{port}")


_CHAT_PUBLISH = '{{"user":"b","text":"{seq}.{t} {pad}"}}'
_CHAT_SAMPLE = re.compile(rb'"text":"(\d+)\.(\d+)')

_IN_MEMORY: tuple[Target, ...] = (
    Target(
        name="wshub",
        command=_uvicorn("wshub"),
        path="/ws",
        subscribe='{{"op":"subscribe","id":1,"channel":"{channel}"}}',
        publish='{{"op":"publish","channel":"{channel}","data":{{"m":"{seq}.{t}","p":"{pad}"}}}}',
        marker=b'"op":"message"',
        sample=re.compile(rb'"m":"(\d+)\.(\d+)"'),
        ready=b'"result"',
        rooms=True,
    ),
    Target(
        name="wshub-chat",
        command=_uvicorn("wshub"),
        path="/ws/chat",
        subscribe=None,
        publish=_CHAT_PUBLISH,
        marker=b'"text":',
        sample=_CHAT_SAMPLE,
    ),
    Target("seed", _uvicorn("seed"), "/ws/chat", None, _CHAT_PUBLISH, b'"text":', _CHAT_SAMPLE),
    Target(
        "seed-once",
        _uvicorn("seed-once"),
        "/ws/chat",
        None,
        _CHAT_PUBLISH,
        b'"text":',
        _CHAT_SAMPLE,
    ),
    Target(
        name="socketio",
        command=_uvicorn("socketio"),
        path="/socket.io/?EIO=4&transport=websocket",
        subscribe=None,
        publish='42["publish",{{"m":"{seq}.{t}","p":"{pad}"}}]',
        marker=b'42["message"',
        sample=re.compile(rb'"m":"(\d+)\.(\d+)"'),
        socketio=True,
    ),
    Target(
        name="websockets",
        command=_uvicorn("websockets"),
        path="/",
        subscribe=None,
        publish='{{"m":"{seq}.{t}","p":"{pad}"}}',
        marker=b'"m":',
        sample=re.compile(rb'"m":"(\d+)\.(\d+)"'),
    ),
    Target("bare", _uvicorn("bare"), "/ws/chat", None, _CHAT_PUBLISH, b'"text":', _CHAT_SAMPLE),
)


def _on_redis(name: str, twin: Target, command: tuple[str, ...]) -> Target:
    """``twin`` served on a throwaway Redis (the run starts it) instead of in process."""
    return dataclasses.replace(twin, name=name, command=command, redis=True)


_BY_NAME = {target.name: target for target in _IN_MEMORY}
TARGETS: dict[str, Target] = {
    **_BY_NAME,
    "wshub-redis": _on_redis("wshub-redis", _BY_NAME["wshub"], _uvicorn("wshub")),
    "socketio-redis": _on_redis("socketio-redis", _BY_NAME["socketio"], _uvicorn("socketio-redis")),
}
