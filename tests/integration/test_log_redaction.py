"""No token in the logs of a real `wshub serve`, whatever carries it, at every level and format.

Each (format, level) runs one ``wshub serve`` process (module-scoped, so 6 in all);
each token source connects a real websockets client to it with a fresh JWT. The
test then reads everything the process printed (stdout and stderr) and checks:
the connection was logged (its user's disconnect line), the line that used to
carry the secret at that level is there, redacted, and no JWT sent so far (whole,
its payload or signature segment, or either end of the signature) appears.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import secrets
import signal
import time
from collections.abc import Iterator

import anyio
import httpx
import jwt
import orjson
import pytest

from wshub.testing import TIME_SCALE

from .processes import HubProcess, _kill_group, _spawn, hub_env
from .support import connect, drop_clients, recv_frames

__all__ = ["drop_clients"]

SECRET = "redaction-test-jwt-secret-5d0c9e7a41b2"
COOKIE = "wshub_token"

#: How each source hands the token over, and what the server's log must then show,
#: redacted, from that level on (None: the level has no such line).
SOURCES = ("bearer", "cookie", "query", "query-encoded", "frame", "subprotocol")
EVIDENCE: dict[str, dict[str, str | None]] = {
    "bearer": {"info": None, "debug": "< authorization: Bearer [redacted]"},
    "cookie": {"info": None, "debug": f"< cookie: theme=[redacted]; {COOKIE}=[redacted]"},
    "query": {
        "info": '"WebSocket /ws?room=a&token=[redacted]" [accepted]',
        "debug": "< GET /ws?room=a&token=[redacted] HTTP/1.1",
        "trace": "'query_string': b'room=a&token=[redacted]'",
    },
    "query-encoded": {
        "info": '"WebSocket /ws?tok%65n=[redacted]" [accepted]',
        "debug": "< GET /ws?tok%65n=[redacted] HTTP/1.1",
        "trace": "'query_string': b'tok%65n=[redacted]'",
    },
    "frame": {"info": None, "debug": '"token":"[redacted]"'},
    "subprotocol": {"info": None, "debug": "< sec-websocket-protocol: [redacted]"},
}
LEVELS = ("info", "debug", "trace")


def evidence(source: str, level: str) -> list[str]:
    """The redacted lines ``source`` leaves at ``level`` (those of the levels above too)."""
    shown = LEVELS[: LEVELS.index(level) + 1]
    return [text for lvl, text in EVIDENCE[source].items() if lvl in shown and text]


def output_of(hub: HubProcess) -> str:
    """Everything ``hub`` printed so far (``pread``: the child shares the file's offset)."""
    fd = hub.output.fileno()
    return os.pread(fd, os.fstat(fd).st_size, 0).decode(errors="replace")


def fragments(token: str) -> list[str]:
    """The parts of ``token`` that must not be logged: all but its (common) header."""
    _, payload, signature = token.split(".")
    return [token, payload, signature, signature[:16], signature[-16:]]


@dataclasses.dataclass
class LoggingHub:
    """One ``wshub serve`` at one format and level, and every token sent to it."""

    hub: HubProcess
    log_format: str
    level: str
    sent: list[str] = dataclasses.field(default_factory=list)

    def messages(self) -> list[str]:
        """The messages printed so far: text lines, or each JSON line's ``message``."""
        output = output_of(self.hub)
        # Complete lines only: the server may be writing the last one right now.
        lines = [line for line in output[: output.rfind("\n") + 1].splitlines() if line.strip()]
        if self.log_format == "text":
            return lines
        entries = []
        for line in lines:
            try:
                entries.append(orjson.loads(line))
            except orjson.JSONDecodeError:
                raise AssertionError(f"not a JSON line: {line!r}\n{output}") from None
        return [
            f"{e['logger']}: {e['message']} {e.get('event', '')} user={e.get('user')}"
            for e in entries
        ]


def _start(log_format: str, level: str) -> HubProcess:
    env = hub_env("memory://", WSHUB_JWT_SECRET=SECRET, WSHUB_LOG_FORMAT=log_format)
    hub = _spawn(["--log-level", level], env)
    deadline = time.monotonic() + 30 * TIME_SCALE
    with httpx.Client(trust_env=False, timeout=1.0) as client:
        while True:
            exited = hub.process.poll()
            assert exited is None, f"wshub serve exited with {exited}:\n{hub.log()}"
            with contextlib.suppress(httpx.HTTPError):
                if client.get(hub.http_url("/healthz")).status_code == 200:
                    return hub
            if time.monotonic() > deadline:
                _kill_group(hub)
                raise TimeoutError(f"wshub serve did not answer /healthz:\n{hub.log()}")
            time.sleep(0.05)


@pytest.fixture(
    scope="module",
    params=[(f, lvl) for f in ("text", "json") for lvl in LEVELS],
    ids=lambda p: f"{p[0]}-{p[1]}",
)
def logging_hub(request: pytest.FixtureRequest) -> Iterator[LoggingHub]:
    """A ``wshub serve --log-level LEVEL`` with ``WSHUB_LOG_FORMAT``, shared by the sources."""
    log_format, level = request.param
    served = LoggingHub(_start(log_format, level), log_format, level)
    try:
        yield served
        # Shutdown lines too: still no token.
        served.hub.process.send_signal(signal.SIGTERM)
        with contextlib.suppress(Exception):
            served.hub.process.wait(15 * TIME_SCALE)
        output = output_of(served.hub)
        leaked = [f for token in served.sent for f in fragments(token) if f in output]
        assert not leaked, f"secrets in the output after shutdown: {leaked}\n{output}"
    finally:
        _kill_group(served.hub)
        served.hub.output.close()


async def connect_with(hub: HubProcess, source: str, token: str) -> None:
    """Connect as ``source`` hands the token over, check the welcome, close."""
    url, headers, options = hub.ws_url("/ws"), {}, {}
    if source == "bearer":
        headers["Authorization"] = f"Bearer {token}"
    elif source == "cookie":
        headers["Cookie"] = f"theme=dark; {COOKIE}={token}"
    elif source == "query":
        url += f"?room=a&token={token}"
    elif source == "query-encoded":
        url += f"?tok%65n={token}"  # Starlette decodes the name: this is ``token``
    elif source == "subprotocol":
        # Browsers can only set this header; the hub takes no token from it, but logs it.
        # An offer of only unknown subprotocols is closed with 4002: offer wshub's too.
        options["subprotocols"] = ["wshub.v1.json", f"bearer.{token}"]
    ws = await connect(url, additional_headers=headers, **options)
    if source in ("frame", "subprotocol"):
        await ws.send(orjson.dumps({"op": "connect", "token": token}).decode())
    frames = await recv_frames(ws)
    assert (frames[0]["op"], frames[0]["user"]) == ("welcome", user_of(token)), frames
    await ws.close()


def user_of(token: str) -> str:
    """The ``sub`` of ``token``."""
    return str(jwt.decode(token, SECRET, algorithms=["HS256"])["sub"])


def disconnect_logged(served: LoggingHub, user: str) -> bool:
    """Whether the server logged the end of ``user``'s connection."""
    needle = f"user={user}"
    return any(
        "disconnect" in m and needle in m and "wshub.connections" in m for m in served.messages()
    )


@pytest.mark.anyio
@pytest.mark.parametrize("source", SOURCES)
async def test_no_token_reaches_the_log(logging_hub: LoggingHub, source: str) -> None:
    """The connection is logged, the lines that carried the token are redacted, none leak."""
    served = logging_hub
    user = f"{source}-{secrets.token_hex(4)}"
    token = jwt.encode(
        {"sub": user, "jti": secrets.token_hex(8), "exp": int(time.time()) + 3600},
        SECRET,
        algorithm="HS256",
    )
    served.sent.append(token)
    await connect_with(served.hub, source, token)
    deadline = time.monotonic() + 5 * TIME_SCALE
    while not disconnect_logged(served, user):
        assert time.monotonic() < deadline, f"no disconnect for {user}:\n{output_of(served.hub)}"
        await anyio.sleep(0.02)
    output = output_of(served.hub)
    messages = "\n".join(served.messages())
    for line in evidence(source, served.level):
        assert line in messages, f"{line!r} not logged at {served.level}:\n{output}"
    leaked = [f for sent in served.sent for f in fragments(sent) if f in output]
    assert not leaked, f"secrets in the output: {leaked}\n{output}"
