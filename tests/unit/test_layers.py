"""Imports flow one way (STYLE.md): the Sans-I/O core has no I/O, brokers never reach up.

The module graph is read from the source with `ast`, so the checks see every
import statement, including ones inside functions and ``if TYPE_CHECKING:`` blocks.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

import wshub

PACKAGE = Path(wshub.__file__).parent

#: The Sans-I/O core: bytes in, frames out, no event loop, no web framework, no socket.
PURE_MODULES = [
    "wshub.core.protocol",
    "wshub.core.codecs",
    "wshub.core.sendqueue",
    "wshub.core.channels",
    "wshub.core.errors",
    "wshub.core.types",
]
#: Top-level packages the pure core must not import, directly or through other wshub modules.
IO_PACKAGES = {"asyncio", "anyio", "socket", "starlette", "fastapi", "uvicorn", "websockets"}
#: What a broker must never import: the layers above it.
ABOVE_BROKERS = {"wshub.hub", "wshub.server", "wshub.ops", "wshub.client"}


def module_path(name: str) -> Path:
    """The source file of the wshub module ``name``."""
    base = PACKAGE.parent.joinpath(*name.split("."))
    return base / "__init__.py" if base.is_dir() else base.with_suffix(".py")


def is_wshub_module(name: str) -> bool:
    """True when ``name`` is a module or package of wshub."""
    return name.split(".")[0] == "wshub" and module_path(name).exists()


def all_modules() -> list[str]:
    """Every module of the wshub package, by dotted name."""
    names = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


@cache
def imports_of(name: str) -> frozenset[str]:
    """The modules ``name`` imports directly, as absolute dotted names.

    ``from a import b`` counts as importing ``a``, and ``a.b`` as well when that is a
    wshub module. Relative imports are resolved against ``name``'s package.
    """
    path = module_path(name)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            found.add(base)
            found.update(
                f"{base}.{alias.name}"
                for alias in node.names
                if is_wshub_module(f"{base}.{alias.name}")
            )
    return frozenset(found)


def reachable(name: str) -> set[str]:
    """Every module ``name`` imports, directly or through wshub modules.

    Importing ``wshub.brokers.base`` also runs ``wshub/brokers/__init__.py``, so parent
    packages are followed too, except ``wshub`` itself: its ``__init__`` gathers the
    public API from every layer and is not part of any one layer.
    """
    seen: set[str] = set()
    todo = [name]
    while todo:
        for imported in imports_of(todo.pop()):
            names = [imported]
            parts = imported.split(".")
            names += [".".join(parts[:i]) for i in range(2, len(parts))]
            for candidate in names:
                if candidate not in seen:
                    seen.add(candidate)
                    if is_wshub_module(candidate) and candidate != "wshub":
                        todo.append(candidate)
    return seen


def test_the_graph_sees_known_edges() -> None:
    """Sanity check of the walker itself: known imports are found, relative ones resolved."""
    assert "wshub.core.channels" in imports_of("wshub.core.protocol")
    assert "orjson" in reachable("wshub.core.codecs")
    assert "wshub.core" in reachable("wshub.core.codecs")  # parent package of core.types
    assert "asyncio" in reachable("wshub.hub.connection")
    assert "wshub.brokers.base" in imports_of("wshub.brokers")


@pytest.mark.parametrize("name", PURE_MODULES)
def test_pure_core_does_no_io(name: str) -> None:
    """protocol, codecs, sendqueue, channels and errors reach neither asyncio nor the web stack."""
    offending = {m for m in reachable(name) if m.split(".")[0] in IO_PACKAGES}
    assert not offending, f"{name} imports {sorted(offending)}"


@pytest.mark.parametrize(
    "name", [m for m in all_modules() if m == "wshub.brokers" or m.startswith("wshub.brokers.")]
)
def test_brokers_never_import_the_layers_above(name: str) -> None:
    """A broker knows the hub only through BrokerEvents: no hub, connection or endpoint."""
    offending = reachable(name) & ABOVE_BROKERS
    assert not offending, f"{name} imports {sorted(offending)}"


def test_import_wshub_needs_no_redis() -> None:
    """``import wshub`` and a memory-broker Hub load neither redis nor the Redis engine."""
    script = (
        "import sys, wshub\n"
        "wshub.Hub()\n"
        "loaded = sorted(m for m in sys.modules if m == 'redis' or m.startswith('redis.')\n"
        "                or m == 'wshub.brokers.redis')\n"
        "print(loaded)\n"
        "sys.exit(1 if loaded else 0)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("WSHUB_")}
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, env=env
    )
    assert result.returncode == 0, result.stdout + result.stderr
