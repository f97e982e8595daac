"""Every Python block of README.md and docs/*.md runs as written, so the docs cannot rot.

The rules, for whoever adds a block (a marker is an HTML comment alone on the line
right before the opening fence; GitHub and mkdocs render nothing for it):

- **A whole script** (no marker) runs with ``python`` in a subprocess, from an empty
  temporary directory, and must exit 0 within 30 s. It may print. If it leaves a
  module-level ``app``, that app is then served with `wshub.testing.run_server`
  (lifespan started and stopped), so an app that cannot start fails too. Blocks that
  define an app must therefore not serve it themselves.
- ``<!-- server: module:attribute -->``: a client script. The app (e.g.
  ``wshub.demo:app``) is served on an ephemeral port first, and every
  ``127.0.0.1:8000`` in the block is pointed at it. The script must end by itself:
  ``break`` out of ``async for`` loops.
- ``<!-- server: above -->``: the same, against the app of the nearest app block
  (one defining ``app``) above it in the same file.
- ``<!-- redis -->``: the block needs Redis: it runs against a throwaway
  ``redis-server`` (skipped without one, failing under ``CI=true``), with every
  ``redis://localhost:6379`` pointed at it.
- ``<!-- fragment -->``: not run. Only for code that cannot run alone: a piece that
  uses names from around it (``app``, ``hub``, models of an earlier block), a test
  module for pytest, or the shape of a loop. Prefer a whole script.
- Blocks starting with ``# app.py (step N)`` are docs/tutorial.md's steps, run by
  tests/integration/test_tutorial.py.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from uvicorn.importer import import_from_string

from wshub.testing import run_server

from .support import scaled

ROOT = Path(__file__).resolve().parents[2]
FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```python\s*$")
MARKER = re.compile(r"^<!--\s*(fragment|redis|server:\s*(\S+))\s*-->\s*$")
TUTORIAL_STEP = re.compile(r"^# app\.py \(step \d+\)")
DEFINES_APP = re.compile(r"^app\s*[:=]", re.MULTILINE)

# Runs a block, then serves the `app` it left behind, if any.
RUNNER = textwrap.dedent(
    """
    import runpy, sys
    namespace = runpy.run_path(sys.argv[1], run_name="__main__")
    app = namespace.get("app")
    if app is not None and callable(app):
        from wshub.testing import run_server
        with run_server(app):
            pass
    """
)


@dataclass
class Block:
    path: Path
    line: int  # of the opening fence
    code: str
    marker: str | None  # "fragment", "redis", "server"
    server: str | None  # module:attribute, or "above"
    above: Block | None  # the nearest app block before it, in the same file

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def blocks() -> list[Block]:
    found: list[Block] = []
    for path in FILES:
        lines = path.read_text().splitlines()
        last_app: Block | None = None
        i = 0
        while i < len(lines):
            if not FENCE.match(lines[i]):
                i += 1
                continue
            end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
            code = "\n".join(lines[i + 1 : end]) + "\n"
            match = MARKER.match(lines[i - 1]) if i else None
            marker = server = None
            if match:
                marker = "server" if match[2] else match[1]
                server = match[2]
            block = Block(path, i + 1, code, marker, server, last_app)
            if not TUTORIAL_STEP.match(code):
                found.append(block)
            if marker != "fragment" and DEFINES_APP.search(code):
                last_app = block
            i = end + 1
    return found


BLOCKS = blocks()


def test_the_blocks_are_found() -> None:
    """The extraction sees the README's blocks (a changed fence style would skip them)."""
    readme = [b for b in BLOCKS if b.path.name == "README.md"]
    assert len(readme) >= 8
    assert any(b.marker is None for b in readme)


def run_block(code: str, tmp_path: Path, timeout: float = 30) -> None:
    script = tmp_path / "snippet.py"
    script.write_text(code)
    runner = tmp_path / "run_snippet.py"
    runner.write_text(RUNNER)
    env = {k: v for k, v in os.environ.items() if not k.startswith("WSHUB_")}
    try:
        done = subprocess.run(
            [sys.executable, str(runner), str(script)],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=scaled(timeout),
            env=env,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"the block did not end within {timeout} s:\n{code}\n{exc.stdout}{exc.stderr}")
    assert done.returncode == 0, (
        f"the block failed:\n{code}\n--- output\n{done.stdout}{done.stderr}"
    )


def load_app(block: Block, tmp_path: Path) -> Any:
    """The ``app`` of an app block, imported in this process under a fresh module name."""
    name = f"doc_snippet_{uuid.uuid4().hex[:8]}"
    source = tmp_path / f"{name}.py"
    source.write_text(block.code)
    spec = importlib.util.spec_from_file_location(name, source)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module.app


@contextmanager
def served(block: Block, tmp_path: Path) -> Iterator[str]:
    """Serve the app a ``server:`` block names; yield its ``host:port``."""
    if block.server == "above":
        assert block.above is not None, f"{block.id}: no app block above it"
        app = load_app(block.above, tmp_path)
    else:
        app = import_from_string(block.server)
    with run_server(app) as server:
        yield f"{server.host}:{server.port}"


@pytest.mark.parametrize("block", BLOCKS, ids=[b.id for b in BLOCKS])
def test_block_runs_as_written(block: Block, tmp_path: Path) -> None:
    if block.marker == "fragment":
        pytest.skip("marked <!-- fragment -->")
    code = block.code
    with ExitStack() as stack:
        if block.marker == "server":
            address = stack.enter_context(served(block, tmp_path))
            code = code.replace("127.0.0.1:8000", address)
        elif block.marker == "redis":
            from tests.redis_support import redis_server

            redis = stack.enter_context(redis_server())
            code = code.replace("redis://localhost:6379", redis.url.removesuffix("/0"))
        run_block(code, tmp_path)
