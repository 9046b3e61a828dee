"""benchmarks/ is a package (issue 25 item 6): scripts import each other as ``benchmarks.<name>``,
run both as ``python -m benchmarks.<name>`` and as ``python benchmarks/<name>.py`` (the form the
README and BENCHMARKS.md commands use), and no test puts a folder on ``sys.path``."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted((ROOT / "benchmarks").glob("*.py"))


def test_no_bare_sibling_import() -> None:
    siblings = {p.stem for p in SCRIPTS}
    assert {"recipe_runs", "tracking", "pde_fno"} <= siblings
    offenders = []
    for p in SCRIPTS:
        for node in ast.walk(ast.parse(p.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module] if isinstance(node, ast.ImportFrom) and not node.level else [])
            offenders += [f"{p.name}:{node.lineno} imports {n}" for n in names if n and n.split(".")[0] in siblings]
    assert not offenders, "\n".join(offenders)


def test_no_test_edits_sys_path() -> None:
    """pytest's ``pythonpath`` (pyproject: the checkout root and tests/) makes the benchmarks and the
    test helpers importable; no test or conftest touches ``sys.path`` (code run in a subprocess,
    passed as a string, is not the test session's path)."""
    offenders = []
    for p in sorted((ROOT / "tests").glob("*.py")):
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.Attribute) and node.attr == "path" and isinstance(node.value, ast.Name) \
                    and node.value.id == "sys":
                offenders.append(f"{p.name}:{node.lineno}")
    assert not offenders, "sys.path used in " + ", ".join(offenders)


@pytest.mark.parametrize("form", ["module", "file"])
def test_a_script_with_sibling_imports_runs_both_ways(form: str) -> None:
    """tracking_release imports benchmarks.tracking, which imports benchmarks.recipe_runs and
    benchmarks.recipe_overrides: the deepest chain of sibling imports."""
    cmd = ["-m", "benchmarks.tracking_release"] if form == "module" else ["benchmarks/tracking_release.py"]
    out = subprocess.run([sys.executable, *cmd, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=300,
                         check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "usage:" in out.stdout
