"""The browser client's unit tests (tests/js/*.test.mjs) run by node's test runner.

``node --test tests/js/`` covers backoff, frame splitting, offset tracking and the
Client against a fake WebSocket. Without node the test skips with what to install;
with ``CI=true`` it fails instead, so CI never passes by skipping.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from tests.redis_support import missing_tool

ROOT = Path(__file__).resolve().parents[2]
JS_TESTS = ROOT / "tests" / "js"


def node_binary() -> str:
    """Find node 18+ or end the test: fail under ``CI=true``, else skip."""
    node = shutil.which("node")
    problem = None
    if node is None:
        problem = "node not found: apt-get install nodejs (node 18+ runs tests/js)"
    else:
        version = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=30)
        major = int(version.stdout.strip().lstrip("v").split(".")[0] or 0)
        if major < 18:
            problem = f"node {version.stdout.strip()} is too old: tests/js needs node 18+"
    if problem is None:
        assert node is not None
        return node
    missing_tool(problem)


def test_node_unit_tests_of_wshub_js_pass() -> None:
    """``node --test tests/js/`` passes (its TAP output is shown on failure)."""
    node = node_binary()
    files = sorted(str(path) for path in JS_TESTS.glob("*.test.mjs"))
    assert files, "no tests/js/*.test.mjs found"
    result = subprocess.run(
        [node, "--test", *files], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert result.returncode == 0, result.stdout[-8000:] + result.stderr[-2000:]
    assert "# fail 0" in result.stdout
