"""Origin checks against a real server: refused origins get 4003 before any endpoint code runs.

The check is `OriginMiddleware`, installed by `mount`: it covers the protocol endpoint
and every library-mode endpoint of the app. Refusals are a close with 4003 after the
handshake (not HTTP 403), so that browser clients can tell them from network errors.
"""

import asyncio
import datetime
import ipaddress
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import websockets
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from fastapi import FastAPI, WebSocket
from websockets.asyncio.client import ClientConnection

from wshub import Hub, mount
from wshub.testing import TIME_SCALE, RunningServer, wait_until

pytestmark = pytest.mark.anyio

Serve = Callable[..., RunningServer]


def origin_app(**settings: Any) -> tuple[FastAPI, Hub, list[str]]:
    """The protocol endpoint at /ws and a library endpoint at /ws/lib that records each run."""
    hub = Hub(**settings)
    app = FastAPI(lifespan=hub.lifespan)
    mount(app, hub, "/ws")
    ran: list[str] = []

    @app.websocket("/ws/lib")
    async def lib(ws: WebSocket) -> None:
        ran.append(ws.headers.get("origin", ""))
        async with hub.connect(ws) as conn:
            conn.send({"hello": True})
            async for data in conn.iter_json():
                conn.send(data)

    @app.get("/page")
    async def page() -> dict[str, bool]:
        return {"ok": True}

    return app, hub, ran


def start(
    serve: Serve, uvicorn_options: dict[str, Any] | None = None, **settings: Any
) -> tuple[RunningServer, Hub, list[str]]:
    """Run `origin_app` on a real server (``uvicorn_options``: e.g. TLS, proxy trust)."""
    app, hub, ran = origin_app(**settings)
    return serve(app, settings=hub.settings, **(uvicorn_options or {})), hub, ran


async def connect(url: str, origin: str | None, **kwargs: Any) -> ClientConnection:
    """A client sending ``origin`` as its Origin header (none when None)."""
    return await websockets.connect(
        url,
        origin=origin,
        proxy=None,
        compression=None,
        open_timeout=5 * TIME_SCALE,
        **kwargs,
    )


async def accepted(url: str, origin: str | None, **kwargs: Any) -> dict[str, Any]:
    """Connect with ``origin`` and return the first frame, proving the endpoint ran."""
    async with await connect(url, origin, **kwargs) as ws:
        first = orjson.loads(await asyncio.wait_for(ws.recv(), 5 * TIME_SCALE))
        assert isinstance(first, dict)
        return first


async def refused(url: str, origin: str, **kwargs: Any) -> None:
    """Connect with ``origin``: the server closes with 4003 and sends nothing before."""
    async with await connect(url, origin, **kwargs) as ws:
        received: list[Any] = []
        try:
            while True:
                received.append(await asyncio.wait_for(ws.recv(), 5 * TIME_SCALE))
        except websockets.ConnectionClosed:
            pass
        assert received == []
        assert (ws.close_code, ws.close_reason) == (4003, "origin not allowed")


async def test_foreign_origin_is_refused_4003_before_any_endpoint_runs(serve: Serve) -> None:
    """A foreign Origin gets 4003 on /ws and on the library endpoint; neither endpoint runs."""
    server, hub, ran = start(serve)
    for origin in ("https://evil.test", f"http://evil.test:{server.port}", "null"):
        await refused(server.ws_url("/ws"), origin)
        await refused(server.ws_url("/ws/lib"), origin)
    assert ran == []
    assert hub.stats.connections == 0
    assert hub.connection_count == 0


async def test_another_local_port_is_a_foreign_origin(serve: Serve) -> None:
    """A page served on another port of the same machine is refused."""
    server, _, ran = start(serve)
    await refused(server.ws_url("/ws"), f"http://127.0.0.1:{server.port + 1}")
    await refused(server.ws_url("/ws/lib"), f"http://localhost:{server.port + 1}")
    assert ran == []


async def test_garbage_origin_or_port_is_refused_not_crashed(serve: Serve) -> None:
    """An Origin with an invalid port is a clean 4003, and the server keeps serving."""
    server, _, ran = start(serve)
    await refused(server.ws_url("/ws/lib"), "http://localhost:notaport")
    await refused(server.ws_url("/ws/lib"), "http://[::1")
    assert await accepted(server.ws_url("/ws/lib"), None) == {"hello": True}
    assert len(ran) == 1


async def test_own_origin_is_accepted(serve: Serve) -> None:
    """A page served by this very server (same host and port) may connect."""
    server, _, ran = start(serve)
    own = f"http://127.0.0.1:{server.port}"
    assert (await accepted(server.ws_url("/ws"), own))["op"] == "welcome"
    assert await accepted(server.ws_url("/ws/lib"), own) == {"hello": True}
    assert ran == [own]


async def test_loopback_names_are_one_origin(serve: Serve) -> None:
    """A page on 127.0.0.1:PORT may open ws://localhost:PORT, and localhost:PORT 127.0.0.1:PORT."""
    server, _, ran = start(serve)
    localhost_url = f"ws://localhost:{server.port}/ws/lib"
    assert await accepted(localhost_url, f"http://127.0.0.1:{server.port}") == {"hello": True}
    page = f"http://localhost:{server.port}"
    assert (await accepted(server.ws_url("/ws"), page))["op"] == "welcome"
    assert ran == [f"http://127.0.0.1:{server.port}"]


async def test_no_origin_header_is_accepted(serve: Serve) -> None:
    """Clients that send no Origin (not browsers) are not affected by the check."""
    server, _, ran = start(serve)
    assert (await accepted(server.ws_url("/ws"), None))["op"] == "welcome"
    assert await accepted(server.ws_url("/ws/lib"), None) == {"hello": True}
    assert ran == [""]


async def test_extra_allowed_origin_is_accepted_and_others_still_refused(serve: Serve) -> None:
    """`allowed_origins` adds origins to the server's own; the rest stay refused."""
    server, _, ran = start(
        serve, allowed_origins="https://app.example.com, https://admin.example.com/"
    )
    for origin in ("https://app.example.com", "https://admin.example.com"):
        assert (await accepted(server.ws_url("/ws"), origin))["op"] == "welcome"
        assert await accepted(server.ws_url("/ws/lib"), origin) == {"hello": True}
    own = f"http://127.0.0.1:{server.port}"
    assert (await accepted(server.ws_url("/ws"), own))["op"] == "welcome"
    await refused(server.ws_url("/ws"), "https://evil.example.com")
    await refused(server.ws_url("/ws/lib"), "http://app.example.com")
    assert len(ran) == 2


async def test_star_opts_in_to_every_origin(serve: Serve) -> None:
    """`allowed_origins="*"` lets any origin connect."""
    server, _, ran = start(serve, allowed_origins="*")
    assert (await accepted(server.ws_url("/ws"), "https://evil.test"))["op"] == "welcome"
    assert await accepted(server.ws_url("/ws/lib"), "null") == {"hello": True}
    assert ran == ["null"]


async def test_http_routes_are_not_affected(serve: Serve) -> None:
    """The middleware only looks at WebSocket handshakes; HTTP from any Origin passes as usual."""
    server, _, _ = start(serve)
    async with httpx.AsyncClient(trust_env=False) as client:
        response = await client.get(
            server.http_url("/page"), headers={"Origin": "https://evil.test"}
        )
    assert response.status_code == 200 and response.json() == {"ok": True}


async def test_refusals_leave_nothing_behind(serve: Serve) -> None:
    """Many refused handshakes never register a connection; accepted ones still work after."""
    server, hub, ran = start(serve)
    await asyncio.gather(*(refused(server.ws_url("/ws"), "https://evil.test") for _ in range(20)))
    assert hub.stats.connections == 0
    assert (await accepted(server.ws_url("/ws"), None))["op"] == "welcome"
    await wait_until(lambda: hub.connection_count == 0)
    assert ran == []


# -- the scheme is part of the origin ---------------------------------------------------------


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key, written to ``directory``."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


async def test_https_page_is_not_the_origin_of_a_ws_server(serve: Serve) -> None:
    """On ws://, ``https://`` with the server's own host and port is another origin: 4003."""
    server, hub, ran = start(serve)
    for host in ("127.0.0.1", "localhost"):
        await refused(server.ws_url("/ws"), f"https://{host}:{server.port}")
        await refused(server.ws_url("/ws/lib"), f"https://{host}:{server.port}")
    assert ran == [] and hub.stats.connections == 0
    own = f"http://127.0.0.1:{server.port}"
    assert await accepted(server.ws_url("/ws/lib"), own) == {"hello": True}
    assert ran == [own]


async def test_http_page_is_not_the_origin_of_a_wss_server(serve: Serve, tmp_path: Path) -> None:
    """On a real wss:// server, ``https://`` host:port is its own origin and ``http://`` is not."""
    cert_file, key_file = self_signed(tmp_path)
    tls = {"ssl_certfile": str(cert_file), "ssl_keyfile": str(key_file)}
    server, _, ran = start(serve, uvicorn_options=tls)
    client_tls = ssl.create_default_context(cafile=str(cert_file))
    url = f"wss://127.0.0.1:{server.port}"
    own = f"https://127.0.0.1:{server.port}"
    assert (await accepted(f"{url}/ws", own, ssl=client_tls))["op"] == "welcome"
    assert await accepted(f"{url}/ws/lib", own, ssl=client_tls) == {"hello": True}
    await refused(f"{url}/ws", f"http://127.0.0.1:{server.port}", ssl=client_tls)
    await refused(f"{url}/ws/lib", f"http://localhost:{server.port}", ssl=client_tls)
    assert ran == [own]


async def test_behind_a_trusted_proxy_the_scheme_comes_from_x_forwarded_proto(
    serve: Serve,
) -> None:
    """A trusted proxy's ``X-Forwarded-Proto: https`` makes ``https://`` the own origin."""
    server, _, ran = start(serve, uvicorn_options={"forwarded_allow_ips": "127.0.0.1"})
    tls_proxy = {"additional_headers": {"X-Forwarded-Proto": "https"}}
    own = f"https://127.0.0.1:{server.port}"
    assert await accepted(server.ws_url("/ws/lib"), own, **tls_proxy) == {"hello": True}
    await refused(server.ws_url("/ws/lib"), f"http://127.0.0.1:{server.port}", **tls_proxy)
    plain_proxy = {"additional_headers": {"X-Forwarded-Proto": "http"}}
    await refused(server.ws_url("/ws"), own, **plain_proxy)
    assert ran == [own]


async def test_x_forwarded_proto_from_an_untrusted_peer_is_ignored(serve: Serve) -> None:
    """Without proxy trust the header changes nothing: the server is still ws://."""
    server, _, ran = start(serve, uvicorn_options={"forwarded_allow_ips": "10.255.255.1"})
    tls_proxy = {"additional_headers": {"X-Forwarded-Proto": "https"}}
    await refused(server.ws_url("/ws/lib"), f"https://127.0.0.1:{server.port}", **tls_proxy)
    own = f"http://127.0.0.1:{server.port}"
    assert await accepted(server.ws_url("/ws/lib"), own, **tls_proxy) == {"hello": True}
    assert ran == [own]
