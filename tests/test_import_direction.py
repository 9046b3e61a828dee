"""Data below tasks (design.md): a datamodule never imports a task, at module level or inside a
function; what a model takes from its data (the ``*Preprocess`` dataclasses) is defined beside
the datamodule and travels with the weights."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TASKS = ("pde", "emotion", "restoration", "separation", "anomaly", "tracking")


def imported_modules(source: str, package: str) -> list[tuple[int, str]]:
    """``(line, module)`` of every import in ``source``, at any depth (relative imports resolved
    against ``package``)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            found.append((node.lineno, base))
    return found


def test_datamodules_never_import_tasks() -> None:
    files = sorted((ROOT / "datamodules").rglob("*.py"))
    assert len(files) > 20
    offenders = []
    for p in files:
        package = ".".join(["mmoe", "datamodules", *p.relative_to(ROOT / "datamodules").parts[:-1]])
        offenders += [f"{p.relative_to(ROOT)}:{line} imports {module}"
                      for line, module in imported_modules(p.read_text(), package) if module.startswith("mmoe.tasks")]
    assert not offenders, "\n".join(offenders)


def test_the_scan_sees_imports_inside_functions_and_relative_ones() -> None:
    """The old form (the task's io imported inside a method) and a relative import are both seen."""
    source = ("class D:\n    def preprocess(self):\n        from mmoe.tasks.pde.io import PDEPreprocess\n"
              "        return PDEPreprocess()\nfrom ...tasks import pde\n")
    found = [m for _, m in imported_modules(source, "mmoe.datamodules.pde")]
    assert sorted(found) == ["mmoe.tasks", "mmoe.tasks.pde.io"]


@pytest.mark.parametrize("task", TASKS)
def test_preprocess_is_defined_beside_the_datamodule(task: str) -> None:
    tasks_module = importlib.import_module(f"mmoe.tasks.{task}")
    cls = next(getattr(tasks_module, n) for n in tasks_module.__all__ if n.endswith("Preprocess"))
    assert cls.__module__ == f"mmoe.datamodules.{task}.preprocess"
    task_cls = next(getattr(tasks_module, n) for n in tasks_module.__all__ if n.endswith("Task"))
    assert task_cls.preprocess_class is cls
