"""Authentication against a real server: token sources, bad tokens, anonymous access, expiry, logs.

Every refusal is a close with 4001 after the handshake, and nothing else reaches
the client first: no ``welcome``, no application frame, and in library mode the
endpoint's body never runs.

No ``from __future__ import annotations`` here: FastAPI must evaluate the endpoint's
``Annotated[..., Depends(hub.authenticate)]`` where ``hub`` is a local variable.
"""

import asyncio
import base64
import hashlib
import hmac
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any

import httpx
import jwt
import orjson
import pytest
import websockets
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from fastapi import Depends, FastAPI, WebSocket
from websockets.asyncio.client import ClientConnection

from wshub import Hub, mount
from wshub.core.redaction import REDACTED
from wshub.server.auth import Identity, JWTAuthenticator
from wshub.testing import TIME_SCALE, RunningServer, wait_until

pytestmark = pytest.mark.anyio

SECRET = "integration-secret-for-wshub-tests-long-enough-for-hs512-0123456789"
OTHER_SECRET = "a-secret-the-server-does-not-know-but-just-as-long-0123456789abcdef"
AUDIENCE = "wshub-tests"
ISSUER = "https://issuer.test"

Serve = Callable[..., RunningServer]


# -- helpers ----------------------------------------------------------------------------------


def make_token(sub: str = "ada", *, key: Any = SECRET, alg: str = "HS256", **claims: Any) -> str:
    """A token the test server accepts, unless ``claims`` (None removes one) say otherwise."""
    payload = {"sub": sub, "aud": AUDIENCE, "iss": ISSUER, "exp": int(time.time()) + 300}
    payload.update(claims)
    return jwt.encode({k: v for k, v in payload.items() if v is not None}, key, algorithm=alg)


def b64(obj: object) -> str:
    """Base64url of a JSON value without padding."""
    return base64.urlsafe_b64encode(orjson.dumps(obj)).rstrip(b"=").decode()


def alg_none_token() -> str:
    """An unsigned token made by hand: header ``{"alg":"none"}``, valid claims, no signature."""
    claims = {"sub": "ada", "aud": AUDIENCE, "iss": ISSUER, "exp": int(time.time()) + 300}
    return f"{b64({'alg': 'none', 'typ': 'JWT'})}.{b64(claims)}."


BAD_TOKENS: dict[str, Callable[[], str]] = {
    "malformed": lambda: "this-is.not-a.jwt",
    "forged-signature": lambda: make_token(key=OTHER_SECRET),
    "expired": lambda: make_token(exp=int(time.time()) - 30),
    "not-yet-valid": lambda: make_token(nbf=int(time.time()) + 60),
    "wrong-audience": lambda: make_token(aud="somebody-else"),
    "wrong-issuer": lambda: make_token(iss="https://evil.test"),
    "alg-none": alg_none_token,
    "alg-outside-allow-list": lambda: make_token(alg="HS512"),
}


def auth_app(**settings: Any) -> tuple[FastAPI, Hub, list[Identity]]:
    """The protocol endpoint at /ws (JWT on), and a library endpoint at /ws/lib.

    /ws/lib uses ``Depends(hub.authenticate)``; its body records the identity in the
    returned list, greets with ``{"hello": user}`` and echoes JSON.
    """
    options: dict[str, Any] = {
        "jwt_secret": SECRET,
        "jwt_audience": AUDIENCE,
        "jwt_issuer": ISSUER,
        **settings,
    }
    hub = Hub(**options)
    app = FastAPI(lifespan=hub.lifespan)
    mount(app, hub, "/ws")
    ran: list[Identity] = []

    @app.websocket("/ws/lib")
    async def lib(ws: WebSocket, who: Annotated[Identity, Depends(hub.authenticate)]) -> None:
        ran.append(who)
        async with hub.connect(ws, identity=who) as conn:
            conn.send({"hello": who.user})
            async for data in conn.iter_json():
                conn.send(data)

    @app.get("/ping")
    async def ping() -> dict[str, bool]:
        return {"ok": True}

    return app, hub, ran


def start(serve: Serve, **settings: Any) -> tuple[RunningServer, Hub, list[Identity]]:
    """Run `auth_app` on a real server."""
    app, hub, ran = auth_app(**settings)
    return serve(app, settings=hub.settings), hub, ran


async def connect(
    server: RunningServer, path: str, *, source: str | None = None, token: str = "", **kw: Any
) -> ClientConnection:
    """Open a client on ``path``, carrying ``token`` in the handshake as ``source`` says.

    Sources: ``header`` (Authorization: Bearer), ``cookie`` (wshub_token), ``query``
    (``?token=``); ``connect`` and None put nothing in the handshake.
    """
    headers: dict[str, str] = dict(kw.pop("additional_headers", {}))
    if source == "header":
        headers["Authorization"] = f"Bearer {token}"
    elif source == "cookie":
        headers["Cookie"] = f"theme=dark; wshub_token={token}"
    elif source == "query":
        path = f"{path}?token={token}"
    ws = await websockets.connect(
        server.ws_url(path), additional_headers=headers, proxy=None, compression=None, **kw
    )
    if source == "connect":
        await ws.send(orjson.dumps({"op": "connect", "token": token}).decode())
    return ws


async def recv_json(ws: ClientConnection) -> Any:
    """Receive one message and decode it as JSON."""
    return orjson.loads(await asyncio.wait_for(ws.recv(), 5 * TIME_SCALE))


async def until_closed(ws: ClientConnection, within: float = 5.0) -> list[str | bytes]:
    """Read until the server closes; return what arrived before the close."""
    received: list[str | bytes] = []

    async def read() -> None:
        try:
            while True:
                received.append(await ws.recv())
        except websockets.ConnectionClosed:
            pass

    await asyncio.wait_for(read(), within * TIME_SCALE)
    return received


async def assert_refused(ws: ClientConnection, reason: str | None = None) -> str:
    """The server closes with 4001 and sends nothing before; return the reason."""
    received = await until_closed(ws)
    assert received == []
    assert ws.close_code == 4001, (ws.close_code, ws.close_reason)
    assert ws.close_reason is not None
    if reason is not None:
        assert ws.close_reason == reason
    return ws.close_reason


async def request(ws: ClientConnection, frame: dict[str, Any]) -> dict[str, Any]:
    """Send a request and return the reply carrying its id (pushes in between are skipped)."""
    await ws.send(orjson.dumps(frame).decode())
    while True:
        for line in (await asyncio.wait_for(ws.recv(), 5 * TIME_SCALE)).split("\n"):
            reply: dict[str, Any] = orjson.loads(line)
            if reply.get("id") == frame["id"]:
                return reply


# -- bad tokens -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(BAD_TOKENS))
async def test_bad_token_is_closed_4001_from_every_source(serve: Serve, kind: str) -> None:
    """A bad token closes with 4001 and nothing else, in every source, before any endpoint body."""
    server, hub, ran = start(serve)
    token = BAD_TOKENS[kind]()
    attempts = [("/ws", s) for s in ("header", "cookie", "query", "connect")]
    attempts += [("/ws/lib", s) for s in ("header", "cookie", "query")]
    expected = {"expired": "token expired", "not-yet-valid": "token not valid yet"}
    for path, source in attempts:
        async with await connect(server, path, source=source, token=token) as ws:
            reason = await assert_refused(ws)
        assert reason == expected[kind] if kind in expected else reason.startswith("invalid token")
        assert token not in reason, (path, source)
    assert ran == []
    assert hub.stats.auth_failures == len(attempts)
    await wait_until(lambda: hub.connection_count == 0)


async def test_missing_token_is_closed_4001(serve: Serve) -> None:
    """Without a token: /ws waits for connect and refuses one without a token; /ws/lib refuses."""
    server, hub, ran = start(serve)
    async with await connect(server, "/ws") as ws:
        await ws.send('{"op":"connect"}')
        await assert_refused(ws, "missing token")
    async with await connect(server, "/ws") as ws:
        await ws.send('{"op":"subscribe","id":1,"channel":"room"}')
        await assert_refused(ws, "expected connect")
    async with await connect(server, "/ws") as ws:
        await ws.send("not json at all")
        await assert_refused(ws, "expected connect")
    async with await connect(server, "/ws/lib") as ws:
        await assert_refused(ws, "missing token")
    async with await connect(server, "/ws/lib", source="header", token="") as ws:
        await assert_refused(ws, "missing token")
    assert ran == []
    assert hub.stats.auth_failures == 5


async def test_bearer_of_another_scheme_is_no_token(serve: Serve) -> None:
    """`Authorization: Basic ...` is not a token: library mode refuses it as missing."""
    server, _, ran = start(serve)
    headers = {"Authorization": "Basic YWRhOnB3"}
    async with await connect(server, "/ws/lib", additional_headers=headers) as ws:
        await assert_refused(ws, "missing token")
    assert ran == []


# -- good tokens ------------------------------------------------------------------------------


@pytest.mark.parametrize("source", ["header", "cookie", "query", "connect"])
async def test_protocol_endpoint_accepts_each_token_source(serve: Serve, source: str) -> None:
    """A valid token in the header, the cookie, the query or a connect frame gets welcome as ada."""
    server, hub, _ = start(serve)
    async with await connect(server, "/ws", source=source, token=make_token()) as ws:
        welcome = await recv_json(ws)
        assert welcome["op"] == "welcome" and welcome["user"] == "ada"
        reply = await request(ws, {"op": "subscribe", "id": 1, "channel": "room"})
        assert reply == {"id": 1, "result": {}}
        assert [c.user for c in hub.connections()] == ["ada"]
    await wait_until(lambda: hub.connection_count == 0)
    assert hub.stats.auth_failures == 0


@pytest.mark.parametrize("source", ["header", "cookie", "query"])
async def test_library_endpoint_accepts_each_token_source(serve: Serve, source: str) -> None:
    """`Depends(hub.authenticate)` takes the token from the header, the cookie or the query."""
    server, hub, ran = start(serve)
    async with await connect(server, "/ws/lib", source=source, token=make_token("bob")) as ws:
        assert await recv_json(ws) == {"hello": "bob"}
        await ws.send('{"n":1}')
        assert await recv_json(ws) == {"n": 1}
    assert [who.user for who in ran] == ["bob"]
    await wait_until(lambda: hub.connection_count == 0)


async def test_handshake_header_wins_over_a_bad_query_token(serve: Serve) -> None:
    """The Bearer header is read first, so a stale `?token=` beside it does not matter."""
    server, _, _ = start(serve)
    headers = {"Authorization": f"Bearer {make_token()}"}
    async with await connect(
        server, "/ws", source="query", token="garbage", additional_headers=headers
    ) as ws:
        assert (await recv_json(ws))["user"] == "ada"


# -- public keys ------------------------------------------------------------------------------


def write_public_key(path: Path, key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> Path:
    """Write the PEM public key of ``key`` to ``path``."""
    path.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return path


async def test_rs256_from_the_public_key_file_setting(serve: Serve, tmp_path: Path) -> None:
    """`jwt_public_key_file` turns on RS256: a token of the key pair gets in, others get 4001."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem_file = write_public_key(tmp_path / "rsa.pem", key)
    server, hub, _ = start(serve, jwt_secret=None, jwt_public_key_file=str(pem_file))
    async with await connect(
        server, "/ws", source="header", token=make_token(key=key, alg="RS256")
    ) as ws:
        assert (await recv_json(ws))["user"] == "ada"
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    signing_input = f"{b64({'alg': 'HS256', 'typ': 'JWT'})}.{b64({'sub': 'ada'})}"
    mac = hmac.new(pem_file.read_bytes(), signing_input.encode(), hashlib.sha256).digest()
    confused = f"{signing_input}.{base64.urlsafe_b64encode(mac).rstrip(b'=').decode()}"
    for bad in (
        make_token(key=stranger, alg="RS256"),
        make_token(key=ec.generate_private_key(ec.SECP256R1()), alg="ES256"),
        make_token(alg="HS256"),
        confused,
    ):
        async with await connect(server, "/ws", source="query", token=bad) as ws:
            assert (await assert_refused(ws)).startswith("invalid token")
    assert hub.stats.auth_failures == 4


async def test_es256_with_an_authenticator_from_a_public_key_file(
    serve: Serve, tmp_path: Path
) -> None:
    """`JWTAuthenticator.from_public_key_file` passed as `Hub(auth=...)` verifies ES256 tokens."""
    key = ec.generate_private_key(ec.SECP256R1())
    auth = JWTAuthenticator.from_public_key_file(
        write_public_key(tmp_path / "ec.pem", key), algorithms=["ES256"], audience=AUDIENCE
    )
    hub = Hub(auth=auth)
    app = FastAPI(lifespan=hub.lifespan)
    mount(app, hub, "/ws")
    server = serve(app, settings=hub.settings)
    token = make_token("carol", key=key, alg="ES256")
    async with await connect(server, "/ws", source="connect", token=token) as ws:
        assert (await recv_json(ws))["user"] == "carol"
    other = make_token(key=ec.generate_private_key(ec.SECP256R1()), alg="ES256")
    async with await connect(server, "/ws", source="connect", token=other) as ws:
        await assert_refused(ws, "invalid token: InvalidSignatureError")


# -- auth timeout and anonymous access --------------------------------------------------------


async def test_no_connect_frame_within_auth_timeout_is_closed_4001(serve: Serve) -> None:
    """A client that sends nothing is closed with 4001 after `auth_timeout`, with nothing sent."""
    server, hub, _ = start(serve, auth_timeout=0.5)
    async with await connect(server, "/ws") as ws:
        began = time.monotonic()
        await assert_refused(ws, "authentication timeout")
        elapsed = time.monotonic() - began
    assert 0.4 <= elapsed < 0.5 + 1.5 * TIME_SCALE
    assert hub.stats.auth_failures == 1
    await wait_until(lambda: hub.connection_count == 0)


async def test_connect_frame_in_time_beats_the_auth_timeout(serve: Serve) -> None:
    """A connect frame sent just before `auth_timeout` gets in."""
    server, _, _ = start(serve, auth_timeout=1.0)
    async with await connect(server, "/ws") as ws:
        await asyncio.sleep(0.5)
        await ws.send(orjson.dumps({"op": "connect", "token": make_token()}).decode())
        assert (await recv_json(ws))["user"] == "ada"
        await asyncio.sleep(1.0)  # past auth_timeout: still open
        assert (await request(ws, {"op": "subscribe", "id": 1, "channel": "a"}))["result"] == {}


async def test_anonymous_allowed_when_opted_in(serve: Serve) -> None:
    """With allow_anonymous, no token means anonymous, on /ws (connect or any frame) and /ws/lib."""
    server, hub, ran = start(serve, allow_anonymous=True)
    async with await connect(server, "/ws") as ws:
        await ws.send('{"op":"connect"}')
        welcome = await recv_json(ws)
        assert welcome["op"] == "welcome" and welcome["user"] is None
    async with await connect(server, "/ws") as ws:
        await ws.send('{"op":"subscribe","id":7,"channel":"room"}')
        frames: list[Any] = []
        while len(frames) < 2:
            frames += [orjson.loads(line) for line in (await ws.recv()).split("\n")]
        assert frames[0]["op"] == "welcome" and frames[0]["user"] is None
        assert frames[1:] == [{"id": 7, "result": {}}]
    async with await connect(server, "/ws/lib") as ws:
        assert await recv_json(ws) == {"hello": None}
    async with await connect(server, "/ws", source="connect", token=make_token("dan")) as ws:
        assert (await recv_json(ws))["user"] == "dan"
    assert [who.user for who in ran] == [None]
    assert hub.stats.auth_failures == 0


async def test_anonymous_opt_in_still_refuses_bad_tokens(serve: Serve) -> None:
    """A bad token is never downgraded to anonymous access."""
    server, _, ran = start(serve, allow_anonymous=True)
    bad = BAD_TOKENS["forged-signature"]()
    for path, source in [("/ws", "query"), ("/ws", "connect"), ("/ws/lib", "cookie")]:
        async with await connect(server, path, source=source, token=bad) as ws:
            await assert_refused(ws, "invalid token: InvalidSignatureError")
    assert ran == []


async def test_without_an_authenticator_everyone_is_anonymous(serve: Serve) -> None:
    """With no JWT key configured, tokens are ignored: /ws welcomes, /ws/lib runs, anonymously."""
    server, hub, ran = start(serve, jwt_secret=None)
    assert hub.auth is None
    async with await connect(server, "/ws", source="query", token=make_token()) as ws:
        welcome = await recv_json(ws)
        assert welcome["op"] == "welcome" and welcome["user"] is None
    async with await connect(server, "/ws/lib", source="header", token="garbage") as ws:
        assert await recv_json(ws) == {"hello": None}
    assert [who.user for who in ran] == [None]


# -- expiry -----------------------------------------------------------------------------------


async def closes_at(ws: ClientConnection, expected: float) -> float:
    """Wait for the close; return how far from ``expected`` (Unix time) it came."""
    received = await until_closed(ws, within=expected - time.time() + 5)
    assert all(orjson.loads(m).get("op") == "ping" for m in received)
    return time.time() - expected


async def test_expiry_without_refresh_closes_4001_at_exp(serve: Serve) -> None:
    """A connection whose token expires is closed with 4001 "token expired" at about `exp`."""
    server, hub, _ = start(serve)
    exp = int(time.time()) + 2
    async with await connect(server, "/ws", source="connect", token=make_token(exp=exp)) as ws:
        assert (await recv_json(ws))["op"] == "welcome"
        drift = await closes_at(ws, exp)
        assert (ws.close_code, ws.close_reason) == (4001, "token expired")
    assert abs(drift) <= 1.5 * TIME_SCALE, drift
    assert hub.stats.auth_failures == 1
    await wait_until(lambda: hub.connection_count == 0 and not hub.registry.users)


async def test_library_endpoint_connection_expires_too(serve: Serve) -> None:
    """Library-mode connections are closed with 4001 "token expired" at `exp` as well."""
    server, hub, _ = start(serve)
    exp = int(time.time()) + 2
    async with await connect(server, "/ws/lib", source="header", token=make_token(exp=exp)) as ws:
        assert await recv_json(ws) == {"hello": "ada"}
        drift = await closes_at(ws, exp)
        assert (ws.close_code, ws.close_reason) == (4001, "token expired")
    assert abs(drift) <= 1.5 * TIME_SCALE, drift
    await wait_until(lambda: hub.connection_count == 0)


async def test_refresh_before_exp_keeps_the_connection_open(serve: Serve) -> None:
    """A refresh with a valid token of the same user pushes the expiry back; `expires` is an int."""
    server, hub, _ = start(serve)
    old_exp = int(time.time()) + 2
    async with await connect(server, "/ws", source="query", token=make_token(exp=old_exp)) as ws:
        assert (await recv_json(ws))["op"] == "welcome"
        new_exp = int(time.time()) + 60
        reply = await request(ws, {"op": "refresh", "id": 1, "token": make_token(exp=new_exp)})
        assert reply == {"id": 1, "result": {"expires": new_exp}}
        assert type(reply["result"]["expires"]) is int
        await asyncio.sleep(max(0.0, old_exp + 1.5 - time.time()))
        reply = await request(ws, {"op": "subscribe", "id": 2, "channel": "still-here"})
        assert reply == {"id": 2, "result": {}}
    assert hub.stats.auth_failures == 0


async def test_refresh_with_another_users_token_is_refused(serve: Serve) -> None:
    """A refresh for another user answers `unauthorized`; the connection still expires at `exp`."""
    server, hub, _ = start(serve)
    exp = int(time.time()) + 2
    async with await connect(server, "/ws", source="header", token=make_token(exp=exp)) as ws:
        assert (await recv_json(ws))["op"] == "welcome"
        refresh = {"op": "refresh", "id": "r1", "token": make_token("mallory")}
        reply = await request(ws, refresh)
        assert reply["error"]["code"] == "unauthorized"
        assert refresh["token"] not in reply["error"]["message"]
        drift = await closes_at(ws, exp)
        assert (ws.close_code, ws.close_reason) == (4001, "token expired")
    assert abs(drift) <= 1.5 * TIME_SCALE, drift
    await wait_until(lambda: hub.connection_count == 0)


async def test_refresh_with_a_bad_token_is_refused_and_the_connection_stays(serve: Serve) -> None:
    """An invalid or expired refresh token answers `unauthorized`; the connection stays usable."""
    server, _, _ = start(serve)
    async with await connect(server, "/ws", source="cookie", token=make_token()) as ws:
        assert (await recv_json(ws))["op"] == "welcome"
        for i, kind in enumerate(["forged-signature", "expired", "alg-none"]):
            reply = await request(ws, {"op": "refresh", "id": i, "token": BAD_TOKENS[kind]()})
            assert reply["error"]["code"] == "unauthorized", reply
        assert (await request(ws, {"op": "subscribe", "id": 9, "channel": "a"}))["result"] == {}


# -- logs -------------------------------------------------------------------------------------


class Capture(logging.Handler):
    """Collects every formatted record of uvicorn's and wshub's loggers (wshub at DEBUG)."""

    NAMES = ("uvicorn.error", "uvicorn.access", "wshub")

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []
        self._wshub_level = logging.getLogger("wshub").level

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))

    def attach(self) -> None:
        """Start capturing; call it after the server started (its logging setup drops handlers)."""
        logging.getLogger("wshub").setLevel(logging.DEBUG)
        for name in self.NAMES:
            logging.getLogger(name).addHandler(self)

    def detach(self) -> None:
        for name in self.NAMES:
            logging.getLogger(name).removeHandler(self)
        logging.getLogger("wshub").setLevel(self._wshub_level)


@pytest.fixture
def log_capture() -> Iterator[Capture]:
    """A `Capture`, detached at the end of the test."""
    capture = Capture()
    yield capture
    capture.detach()


async def test_no_token_appears_in_any_log_line(serve: Serve, log_capture: Capture) -> None:
    """Tokens in the query, headers, cookies and frames never reach uvicorn's or wshub's logs."""
    app, hub, _ = auth_app()
    server = serve(app, settings=hub.settings, log_level="info")
    log_capture.attach()
    log_lines = log_capture.lines
    tokens = [make_token(f"user{i}") for i in range(6)] + [BAD_TOKENS["forged-signature"]()]
    good_query, header, cookie, frame, refresh, http, bad_query = tokens
    async with await connect(server, "/ws", source="query", token=good_query) as ws:
        await recv_json(ws)
    async with await connect(server, "/ws/lib", source="header", token=header) as ws:
        await recv_json(ws)
    async with await connect(server, "/ws", source="cookie", token=cookie) as ws:
        await recv_json(ws)
    async with await connect(server, "/ws", source="connect", token=frame) as ws:
        await recv_json(ws)
        await request(ws, {"op": "refresh", "id": 1, "token": refresh})
    async with await connect(server, "/ws/lib", source="query", token=bad_query) as ws:
        await assert_refused(ws)
    async with await connect(
        server, "/ws", source="query", token=good_query, origin="https://evil.test"
    ) as ws:
        await until_closed(ws)
    async with httpx.AsyncClient(trust_env=False) as client:
        response = await client.get(
            server.http_url(f"/ping?token={http}"), headers={"Authorization": f"Bearer {http}"}
        )
        assert response.status_code == 200
    await wait_until(lambda: hub.connection_count == 0)
    await wait_until(lambda: sum("WebSocket /ws" in line for line in log_lines) >= 6)
    await wait_until(lambda: any("GET /ping" in line for line in log_lines))
    text = "\n".join(log_lines)
    assert f"token={REDACTED}" in text
    for token in tokens:
        assert token not in text
        for part in token.split("."):  # not even the signature or payload alone
            assert len(part) < 20 or part not in text
