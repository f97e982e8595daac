"""``wshub.__all__`` is sorted and complete (httpx keeps its public API honest the same way)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import wshub

INIT = Path(wshub.__file__)


def isort_style_key(name: str) -> tuple[int, list[tuple[int, int | str]]]:
    """The order of ruff's RUF022 ("isort-style") for ``__all__``.

    SCREAMING_SNAKE_CASE names come first, then CamelCase, then everything else
    (functions, ``__version__``); within each group a natural sort: runs of digits
    compare as numbers, everything else character by character (case-sensitive).
    """
    if len(name) > 1 and name.isupper():
        group = 0
    elif name[0].isupper():
        group = 1
    else:
        group = 2
    natural = [(0, int(part)) if part.isdigit() else (1, part) for part in re.split(r"(\d+)", name)]
    return group, [piece for piece in natural if piece != (1, "")]


def names_bound_in_init() -> set[str]:
    """The names ``wshub/__init__.py`` binds at module level by import or assignment."""
    tree = ast.parse(INIT.read_text())
    names: set[str] = set()
    body = list(tree.body)
    for node in tree.body:
        # Lazy names (module __getattr__) are imported under `if TYPE_CHECKING:` for typing.
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            body.extend(node.body)
    for node in body:
        if isinstance(node, ast.ImportFrom | ast.Import):
            names.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
    return names - {"__all__"}


def test_sort_key_matches_ruff_examples() -> None:
    """The key puts constants, then classes, then the rest, each in natural order."""
    names = ["mount", "Hub", "MAX_2", "MAX_10", "__version__", "Publication", "PublishError", "A"]
    assert sorted(names, key=isort_style_key) == [
        "MAX_2",
        "MAX_10",
        "A",
        "Hub",
        "Publication",
        "PublishError",
        "__version__",
        "mount",
    ]


def test_all_is_sorted_isort_style() -> None:
    """``__all__`` is in RUF022 order, so ``ruff check --select RUF022`` agrees."""
    assert wshub.__all__ == sorted(wshub.__all__, key=isort_style_key)


def test_all_has_no_duplicates() -> None:
    """Each public name is listed once."""
    assert len(wshub.__all__) == len(set(wshub.__all__))


def test_every_entry_resolves() -> None:
    """Every name in ``__all__`` exists on the package (``from wshub import *`` works)."""
    missing = [name for name in wshub.__all__ if not hasattr(wshub, name)]
    assert not missing
    namespace: dict[str, object] = {}
    exec("from wshub import *", namespace)
    assert set(wshub.__all__) <= namespace.keys()


def test_every_public_name_is_exported() -> None:
    """Each name ``wshub/__init__.py`` binds without a leading underscore is in ``__all__``."""
    public = {name for name in names_bound_in_init() if not name.startswith("_")}
    assert public - set(wshub.__all__) == set()


def test_all_lists_only_names_bound_in_init() -> None:
    """``__all__`` names nothing ``__init__`` does not bind itself (no submodule leaks)."""
    assert set(wshub.__all__) - names_bound_in_init() == set()


def test_version_is_exported() -> None:
    """The version is public and a plain string."""
    assert "__version__" in wshub.__all__
    assert isinstance(wshub.__version__, str) and wshub.__version__
