"""The browser client as an npm package: ``npm pack`` it, install it, import it from node.

The tarball built from ``src/wshub/static`` (package.json, wshub.js, wshub.d.ts) is
installed into a throwaway project, as a Vite or plain-ESM project would install it,
and ``import { Client, sse } from "wshub"`` must work. Without node (or npm) the test
skips with what to install, and fails under ``CI=true``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tarfile
from pathlib import Path

from tests.redis_support import missing_tool

STATIC = Path(__file__).parents[2] / "src" / "wshub" / "static"


def need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        missing_tool(f"{tool} not found: run `make browser-deps` (apt-get install nodejs npm)")
    return path


def test_npm_pack_installs_and_imports_as_an_es_module(tmp_path: Path) -> None:
    npm, node = need("npm"), need("node")
    packed = subprocess.run(
        [npm, "pack", "--json", "--pack-destination", str(tmp_path), str(STATIC)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    info = json.loads(packed.stdout)[0]
    assert {f["path"] for f in info["files"]} == {"package.json", "wshub.js", "wshub.d.ts"}
    tarball = tmp_path / info["filename"]

    project = tmp_path / "project"
    (project / "node_modules" / "wshub").mkdir(parents=True)
    (project / "package.json").write_text('{"name": "app", "private": true, "type": "module"}')
    with tarfile.open(tarball) as tar:  # what `npm install <tarball>` puts in node_modules
        tar.extractall(project / "node_modules" / "wshub", filter="data")
    installed = project / "node_modules" / "wshub" / "package"
    for item in installed.iterdir():
        item.rename(installed.parent / item.name)
    installed.rmdir()

    manifest = json.loads((project / "node_modules" / "wshub" / "package.json").read_text())
    assert manifest["type"] == "module"
    assert (project / "node_modules" / "wshub" / manifest["exports"]["."]["types"]).is_file()
    script = (
        "import * as wshub from 'wshub';"
        "import { Client, sse, SseClient, PROTOCOL } from 'wshub';"
        "if (typeof Client !== 'function' || typeof sse !== 'function') throw new Error('exports');"
        "if (wshub.sse !== sse || !(SseClient.prototype.on)) throw new Error('namespace');"
        "console.log(PROTOCOL);"
    )
    ran = subprocess.run(
        [node, "--input-type=module", "-e", script],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip() == "wshub.v1.json"
    assert ran.stderr == ""
