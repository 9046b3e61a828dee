"""No import circle in the ``mmoe`` namespace (issue 25 item 4): every module imports alone, the
module-level import graph of the MoE core is acyclic, and no import inside a function hides a loop.

A circle between modules ``a`` and ``b`` shows only when ``b`` is imported first, so each module
is imported alone. Importing torch and Lightning takes seconds, so one fresh interpreter loads the
third-party packages (nothing of ``mmoe``) and forks a child per module: each child starts with no
``mmoe`` module loaded, which is what a circle depends on. A few modules are also imported in a
wholly fresh interpreter.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: folder -> package name (pyproject's package-dir; configs and checkpoints hold no Python)
PACKAGES = {"mmoe": "mmoe", "kernels": "mmoe.kernels", "tasks": "mmoe.tasks", "datamodules": "mmoe.datamodules"}
#: the shared core that must be acyclic at module level (tasks and datamodules build on it)
CORE = ("mmoe", "kernels")
#: modules whose import runs something (the CLI)
NOT_IMPORTED = {"mmoe.__main__"}

#: function-level imports of an ``mmoe`` module: each one with why it is not at module level
LAZY_MMOE = {
    ("mmoe/recipes.py", "mmoe.cli"): "`mmoe list` answers without importing torch and Lightning",
    ("kernels/__init__.py", "mmoe.kernels.triton_backend"): "imports triton, needed only for backend='triton'",
}
#: third-party modules the core imports inside functions: heavy, used by one reader or one command
LAZY_THIRD_PARTY = {
    "soundfile": "audio file reader, only when a path is given",
    "torchaudio": "resampler (torchaudio loads its C++ ops), only when rates differ",
    "PIL": "image reader, only for image files",
    "cv2": "image/video reader, only for files PIL cannot read and for videos",
    "tifffile": "TIFF reader, only for .tif files",
    "pydicom": "DICOM reader, only for DICOM files",
    "nibabel": "NIfTI reader, only for .nii files",
    "triton": "optional GPU kernels; probing for it must not fail on machines without it",
    "jsonargparse": "process-global parser settings applied when the CLI starts, not on import",
    "yaml": "with the jsonargparse settings above",
    "matplotlib": "routing figures, drawn only at validation end (mmoe.routing_monitor)",
}


def module_files() -> dict[str, Path]:
    """Dotted name -> file for every Python module of the namespace."""
    out = {}
    for folder, package in PACKAGES.items():
        for p in sorted((ROOT / folder).rglob("*.py")):
            parts = list(p.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join([package, *parts])] = p
    return out


def _resolve(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    parts = module.split(".")
    base = parts[: len(parts) - node.level + (1 if is_package else 0)]
    return ".".join(base + ([node.module] if node.module else []))


def _is_type_checking(node: ast.If) -> bool:
    return isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING" or (
        isinstance(node.test, ast.Attribute) and node.test.attr == "TYPE_CHECKING")


def imports(path: Path, module: str, known: set[str]) -> tuple[list[tuple[int, str]], list[tuple[int, str]]]:
    """``(module_level, in_functions)``: ``(line, imported module)`` of ``path``. ``from p import x``
    counts as an import of ``p.x`` when that is a module of ``known``. ``if TYPE_CHECKING:`` blocks
    never run and are skipped."""
    is_package = path.name == "__init__.py"
    top: list[tuple[int, str]] = []
    nested: list[tuple[int, str]] = []

    def visit(node: ast.AST, inside: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                continue
            if isinstance(child, ast.Import):
                (nested if inside else top).extend((child.lineno, a.name) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = _resolve(child, module, is_package)
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in child.names]
                (nested if inside else top).extend((child.lineno, t) for t in dict.fromkeys(targets))
            else:
                visit(child, inside or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    visit(ast.parse(path.read_text()), False)
    return top, nested


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a path ``[a, b, ..., a]``, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def dfs(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state and (found := dfs(m)):
                return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state and (found := dfs(n)):
            return found
    return None


def core_graph() -> dict[str, set[str]]:
    files = module_files()
    known = set(files)
    core = {m for m, p in files.items() if p.relative_to(ROOT).parts[0] in CORE}
    graph = {}
    for m in sorted(core):
        top, _ = imports(files[m], m, known)
        graph[m] = {t for _, t in top if t in core and t != m}
    return graph


def test_core_module_level_imports_are_acyclic() -> None:
    graph = core_graph()
    assert len(graph) > 20 and "mmoe.moe_layer" in graph and "mmoe.kernels.reference" in graph
    cycle = find_cycle(graph)
    assert cycle is None, "import circle: " + " -> ".join(cycle)
    # the edges that used to close the circle are gone in both directions
    assert "mmoe.parallel" not in graph["mmoe.moe_layer"] and "mmoe.moe_layer" not in graph["mmoe.stats"]
    assert "mmoe.moe_layer" in graph["mmoe.parallel"]


def test_the_cycle_finder_and_the_scan_see_what_they_must(tmp_path: Path) -> None:
    """The checks are not vacuous: a two-module circle is found; an import in a method, a relative
    import and ``from package import submodule`` are read; TYPE_CHECKING blocks are skipped."""
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None
    f = tmp_path / "m.py"
    f.write_text("from typing import TYPE_CHECKING\nfrom . import sub\nfrom .other import X\n"
                 "if TYPE_CHECKING:\n    import hidden\n"
                 "class C:\n    def f(self):\n        from mmoe.parallel import sparse_forward\n")
    top, nested = imports(f, "pkg.m", {"pkg.sub"})
    assert [t for _, t in top] == ["typing", "pkg.sub", "pkg.other"]
    assert [t for _, t in nested] == ["mmoe.parallel"]


def test_no_function_level_import_dodges_a_loop() -> None:
    """Inside functions: an ``mmoe`` module only where :data:`LAZY_MMOE` says why (anywhere in the
    namespace); in the core, a third-party module only where :data:`LAZY_THIRD_PARTY` says why."""
    files = module_files()
    known = set(files)
    offenders = []
    for m, p in files.items():
        rel = p.relative_to(ROOT).as_posix()
        _, nested = imports(p, m, known)
        for line, target in nested:
            if target == "mmoe" or target.startswith("mmoe."):
                if (rel, target) not in LAZY_MMOE:
                    offenders.append(f"{rel}:{line} imports {target} inside a function")
            elif rel.split("/")[0] in CORE and target.split(".")[0] not in LAZY_THIRD_PARTY:
                offenders.append(f"{rel}:{line} imports {target} inside a function (not an optional reader)")
    assert not offenders, "\n".join(offenders)
    for rel, target in LAZY_MMOE:  # the allow-list holds no stale entry
        m = next(k for k, v in files.items() if v.relative_to(ROOT).as_posix() == rel)
        assert target in [t for _, t in imports(files[m], m, known)[1]], (rel, target)


_FORKER = r"""
import importlib, json, os, sys, traceback
import numpy, scipy, torch, torchmetrics, lightning.pytorch  # third-party only, loaded once
assert not [m for m in sys.modules if m == "mmoe" or m.startswith("mmoe.")]
failures = {}
for name in sys.argv[1:]:
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: no mmoe module loaded; import this one alone
        os.close(r)
        code = 0
        try:
            importlib.import_module(name)
        except BaseException:
            os.write(w, traceback.format_exc()[-3000:].encode())
            code = 1
        os._exit(code)
    os.close(w)
    chunks = []
    while chunk := os.read(r, 65536):
        chunks.append(chunk)
    os.close(r)
    if os.waitpid(pid, 0)[1]:
        failures[name] = b"".join(chunks).decode(errors="replace") or "the child died"
print(json.dumps(failures))
"""


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs os.fork")
def test_every_module_imports_alone() -> None:
    names = [m for m in module_files() if m not in NOT_IMPORTED]
    assert len(names) > 80
    out = subprocess.run([sys.executable, "-c", _FORKER, *names], capture_output=True, text=True, timeout=600, check=False,
                         cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    failures = json.loads(out.stdout.strip().splitlines()[-1])
    assert not failures, "\n\n".join(f"{k}:\n{v}" for k, v in failures.items())


@pytest.mark.parametrize("module", ["mmoe.stats", "mmoe.moe_layer", "mmoe.parallel"])
def test_the_former_circle_imports_in_a_fresh_interpreter(module: str) -> None:
    out = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True, timeout=300, check=False,
                         cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
