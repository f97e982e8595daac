"""Smoke test of an installed wshub wheel, run by ``make test-wheel`` (not by pytest).

``make test-wheel`` builds the wheel, installs it with its dependencies into a clean
venv and runs this file there with ``python -P`` from outside the checkout, so
``import wshub`` finds the installed package and nothing under ``src``. It fails
when a file the package needs at run time is missing from the wheel (the browser
client and its npm metadata, the demo pages), when the version disagrees with the
metadata, or when the demo does not serve and talk. Standard library and wshub's
own dependencies only; bounded in time.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import urllib.request
from importlib import metadata, resources
from pathlib import Path


def check(condition: object, what: str) -> None:
    if not condition:
        raise SystemExit(f"wheel smoke: FAILED: {what}")
    print(f"ok  {what}")


def installed_package() -> None:
    import wshub

    where = Path(wshub.__file__).resolve()
    check(Path(sys.prefix).resolve() in where.parents, f"wshub imported from the venv ({where})")
    check(metadata.version("wshub") == wshub.__version__, f"version {wshub.__version__}")
    package = resources.files("wshub")
    for name in (
        "py.typed",
        "static/wshub.js",
        "static/wshub.d.ts",
        "static/package.json",
        "demo/static/index.html",
        "demo/static/dashboard.html",
    ):
        check(package.joinpath(name).is_file(), f"wshub/{name} in the wheel")
    npm = json.loads(package.joinpath("static/package.json").read_text())
    check(npm.get("types") or npm.get("typings"), "package.json names its type declarations")
    dist = metadata.distribution("wshub")
    check(any(str(f).endswith("LICENSE") for f in dist.files or []), "LICENSE in the dist-info")


def get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.status, response.read().decode()


async def talk(ws_url: str) -> None:
    import websockets

    async with websockets.connect(ws_url + "/ws/chat", open_timeout=10) as ws:
        await ws.send('{"user": "ada", "text": "hi"}')
        reply = await asyncio.wait_for(ws.recv(), 10)
        check(reply == '{"user":"ada","text":"hi"}', "the seed chat echoes")
    async with websockets.connect(ws_url + "/ws", open_timeout=10) as ws:
        await ws.send('{"op":"connect"}')
        welcome = json.loads(await asyncio.wait_for(ws.recv(), 10))
        check(welcome.get("op") == "welcome", "the protocol endpoint says welcome")
        await ws.send('{"op":"subscribe","id":1,"channel":"chat:lobby"}')
        await ws.send('{"op":"publish","id":2,"channel":"chat:lobby","data":{"text":"hi"}}')
        frames: list[dict[str, object]] = []
        while not any(f.get("op") == "message" for f in frames):
            text = await asyncio.wait_for(ws.recv(), 10)
            frames += [json.loads(line) for line in str(text).split("\n")]
        check(True, "a chat:lobby publication comes back")


def demo() -> None:
    from wshub.demo import app
    from wshub.testing import run_server

    with run_server(app) as server:
        for path, marker in (
            ("/", "<html"),
            ("/dashboard", "<html"),
            ("/wshub/client.js", "export class Client"),
            ("/asyncapi.json", "asyncapi"),
            ("/dashboard/stats", "connections"),
            ("/healthz", ""),
        ):
            status, body = get(server.http_url(path))
            check(status == 200 and marker in body, f"GET {path}")
        asyncio.run(talk(server.ws_url("")))


def console_script() -> None:
    wshub = Path(sys.executable).with_name("wshub")
    done = subprocess.run(
        [str(wshub), "types", "--ts", "wshub.demo:app"], capture_output=True, text=True, timeout=60
    )
    check(done.returncode == 0 and "TypedClient" in done.stdout, "wshub types --ts wshub.demo:app")
    done = subprocess.run(
        [str(wshub), "serve", "--help"], capture_output=True, text=True, timeout=60
    )
    check(done.returncode == 0 and "--port" in done.stdout, "wshub serve --help")


if __name__ == "__main__":
    installed_package()
    demo()
    console_script()
    print("wheel smoke: passed")
