"""Every library the shipped code imports is a declared dependency of the package (not something
that happens to arrive through another one), and every declared dependency is imported or says in
pyproject.toml why it is needed."""

from __future__ import annotations

import ast
import importlib.metadata as md
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ("mmoe", "tasks", "datamodules", "kernels")  # the folders the wheel maps into mmoe


def _imported_modules() -> dict[str, str]:
    """Top-level third-party module -> one file importing it (any depth, function-level imports too)."""
    found: dict[str, str] = {}
    for folder in SHIPPED:
        for f in sorted((ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    top = name.split(".")[0]
                    if top not in sys.stdlib_module_names and top not in ("mmoe", "__future__"):
                        found.setdefault(top, str(f.relative_to(ROOT)))
    return found


def _declared() -> dict[str, str]:
    """Normalised distribution name -> its line in ``[project].dependencies``."""
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    deps = tomllib.loads(text)["project"]["dependencies"]
    lines = {d: next(line for line in text.splitlines() if f'"{d}"' in line) for d in deps}
    return {_norm(re.split(r"[\[<>=;! ]", d, maxsplit=1)[0]): lines[d] for d in deps}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_every_imported_library_is_declared() -> None:
    declared = _declared()
    owners = md.packages_distributions()
    missing = []
    for module, where in _imported_modules().items():
        dists = {_norm(d) for d in owners.get(module, [module])}
        if not dists & set(declared):
            missing.append(f"{module} (distribution {sorted(dists)}, imported by {where})")
    assert not missing, f"imported but not declared in pyproject.toml dependencies: {missing}"


def test_every_declared_dependency_is_used_or_explained() -> None:
    owners = md.packages_distributions()
    used = {_norm(d) for module in _imported_modules() for d in owners.get(module, [module])}
    unexplained = [name for name, line in _declared().items()
                   if name not in used and "#" not in line and name not in ("triton",)]
    # triton: the kernels import it; it is absent from packages_distributions() on some installs
    assert not unexplained, f"declared but never imported, and no comment says why: {unexplained}"
