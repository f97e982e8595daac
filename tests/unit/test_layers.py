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

#: Top-level packages the Sans-I/O core must not import, directly or through other modules.
IO_PACKAGES = {"asyncio", "anyio", "socket", "starlette", "fastapi", "uvicorn", "websockets"}

#: For each layer, the wshub layers it must never reach. Arrows point down or into core:
#: core <- brokers <- hub <- server; ops read the hub; the client speaks only the wire.
FORBIDDEN = {
    "wshub.core": {
        "wshub.brokers", "wshub.hub", "wshub.server", "wshub.ops", "wshub.client",
        "wshub.settings", "wshub.cli",
    },
    "wshub.brokers": {"wshub.hub", "wshub.server", "wshub.ops", "wshub.client", "wshub.cli"},
    "wshub.hub": {"wshub.server", "wshub.ops", "wshub.client", "wshub.cli", "wshub.demo"},
    "wshub.ops": {"wshub.server", "wshub.client", "wshub.cli", "wshub.demo"},
    "wshub.client": {"wshub.server", "wshub.hub", "wshub.ops", "wshub.brokers", "wshub.cli"},
}  # fmt: skip


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
    assert "wshub.hub.facade" in reachable("wshub.server.endpoint")


def layer_of(name: str) -> str | None:
    """The layer (a key of `FORBIDDEN`) that module ``name`` belongs to, if any."""
    return next(
        (layer for layer in FORBIDDEN if name.startswith(layer + ".") or name == layer), None
    )


def in_layer(name: str, layer: str) -> bool:
    """Whether module ``name`` is ``layer`` itself or inside it."""
    return name == layer or name.startswith(layer + ".")


def test_every_module_sits_in_a_known_place() -> None:
    """Each module is in a layer folder or is one of the few top-level ones."""
    top_level = {"wshub", "wshub.cli", "wshub.settings", "wshub.testing", "wshub.publisher"}
    loose = [
        m
        for m in all_modules()
        if layer_of(m) is None
        and m not in top_level
        and not m.startswith(("wshub.server", "wshub.demo", "wshub.bench"))
    ]
    assert not loose, f"modules outside the layer folders: {loose}"


@pytest.mark.parametrize("name", [m for m in all_modules() if in_layer(m, "wshub.core")])
def test_core_does_no_io(name: str) -> None:
    """The core (protocol, codecs, send queue, types) reaches neither asyncio nor the web stack."""
    offending = {m for m in reachable(name) if m.split(".")[0] in IO_PACKAGES}
    assert not offending, f"{name} imports {sorted(offending)}"


@pytest.mark.parametrize("name", [m for m in all_modules() if layer_of(m) is not None])
def test_no_arrow_points_up(name: str) -> None:
    """core -> nothing above; brokers -> no hub; hub -> no endpoint, auth scheme or CLI; ..."""
    layer = layer_of(name)
    assert layer is not None
    offending = {m for m in reachable(name) for up in FORBIDDEN[layer] if in_layer(m, up)}
    assert not offending, f"{name} ({layer}) imports {sorted(offending)}"


def test_no_import_cycles() -> None:
    """No module of wshub imports itself through others (``TYPE_CHECKING`` imports count)."""
    modules = set(all_modules()) - {"wshub"}
    graph = {m: {i for i in imports_of(m) if i in modules and i != m} for m in modules}
    cycles = []
    for start in sorted(graph):
        # A path from one of start's imports back to start is a cycle through start.
        seen, todo = set(), [(i, (start, i)) for i in graph[start]]
        while todo:
            node, path = todo.pop()
            if node == start:
                cycles.append(" -> ".join(path))
                break
            if node not in seen:
                seen.add(node)
                todo.extend((n, (*path, n)) for n in graph[node])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


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
