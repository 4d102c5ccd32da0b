"""The package's shape, checked: short functions, a docstring per module, a layer per module.

These are the rules a maintainer relies on to find and change one thing at a time; each test
names the offenders, so the fix is obvious.
"""

from __future__ import annotations

import ast
import tomllib
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "operator" / "consul_sd"
MAX_FUNCTION_LINES = 60


def modules() -> Iterator[tuple[str, Path]]:
    """Every module of the package as (dotted name, path), packages' ``__init__`` included."""
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        yield ".".join(parts), path


def function_lengths(path: Path) -> Iterator[tuple[str, int, int]]:
    """(name, first line, lines) of every function in ``path``, decorators included."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            yield node.name, first, (node.end_lineno or node.lineno) - first + 1


def layered_modules() -> set[str]:
    """Every module the import-linter ``layers`` contracts name, containers resolved."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    named: set[str] = set()
    for contract in pyproject["tool"]["importlinter"]["contracts"]:
        if contract["type"] != "layers":
            continue
        containers = contract.get("containers") or [""]
        for layer in contract["layers"]:
            for part in layer.replace("|", ":").split(":"):
                module = part.strip().strip("()")
                named.update(f"{c}.{module}" if c else module for c in containers)
    return named


def test_no_function_of_the_package_is_longer_than_60_lines() -> None:
    long = [
        f"{path.relative_to(ROOT)}:{line} {name} ({lines} lines)"
        for _, path in modules()
        for name, line, lines in function_lengths(path)
        if lines > MAX_FUNCTION_LINES
    ]
    assert long == []


def test_every_module_opens_with_a_docstring_saying_its_role() -> None:
    bare = [name for name, path in modules() if not ast.get_docstring(ast.parse(path.read_text()))]
    assert bare == []


def test_every_module_is_named_in_a_layer_of_the_import_contracts() -> None:
    named = layered_modules()
    unnamed = [name for name, _ in modules() if name != "consul_sd" and name not in named]
    assert unnamed == []
