"""Imports run downwards only: simulator -> engine -> fences (docs/architecture.md)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _violations(package: str, forbidden: tuple[str, ...]) -> list[str]:
    bad = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for name in _imported_modules(path):
            if name.split(".")[0] in forbidden:
                bad.append(f"{path.relative_to(ROOT)} imports {name}")
    return bad


def test_engine_never_imports_the_simulator() -> None:
    assert _violations("engine", ("simulator",)) == []


def test_fences_imports_neither_engine_nor_simulator() -> None:
    assert _violations("fences", ("engine", "simulator")) == []


def test_no_string_imports_of_the_simulator_in_engine() -> None:
    # importlib.import_module("simulator....") would dodge the AST check above.
    for path in (ROOT / "engine").rglob("*.py"):
        assert '"simulator.' not in path.read_text(encoding="utf-8"), path
