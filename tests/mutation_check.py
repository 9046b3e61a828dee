"""Mutation check: apply a listed set of mutants to a copy of the repository, run the tests that
should catch each one there, and report which survive.

    python tests/mutation_check.py                      # every mutant (several minutes on 2 cores)
    python tests/mutation_check.py --only macs_rank_order capacity_formula
    python tests/mutation_check.py --list

Not a pytest module (the name does not match ``test_*.py``). The copy holds the files git tracks
plus untracked ones it does not ignore (today's working tree), in a temporary folder. The package
is installed editable from this checkout, so a ``sitecustomize`` put first on ``PYTHONPATH`` points
the editable finder's ``mmoe*`` mapping at the copy; the script checks that ``mmoe`` and its mapped
subpackages resolve into the copy, and a sanity mutant (``mmoe`` fails to import) must be killed,
before any result is trusted. A mutant whose text pattern is not found (the code moved) is
reported "not applied", never as killed.

Each mutant's tests are first run on the unmutated copy (once per test selection): a mutant is
only "killed" when they pass there.

Exit status: 0 when every applied mutant is killed, 1 when one survives or the set-up is not sound.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutant:
    """One change: ``pattern`` (a regex, which must match exactly ``count`` times in ``path``) is
    replaced by ``replacement``; ``tests`` are the test files (globs under the root) that should fail
    (``select``: only their tests matching this ``-k`` expression)."""

    name: str
    description: str
    path: str
    pattern: str
    replacement: str
    tests: tuple[str, ...]
    count: int = 1
    select: str | None = None  # a pytest -k expression, where only some tests of the files apply


MACS_TESTS = ("tests/test_macs_reference.py", "tests/test_moe_layer.py", "tests/test_routing_dynamics.py")
AUDIO_TESTS = ("tests/test_audio_inputs.py", "tests/test_separation_model.py", "tests/test_separation_data.py",
               "tests/test_emotion_readers.py")

SANITY = Mutant("sanity_import_fails", "mmoe fails to import (must be killed: proves the copy is what runs)",
                "mmoe/__init__.py", r"\Z", '\nraise RuntimeError("mutation_check: sanity mutant")\n',
                ("tests/test_macs_reference.py",))

MUTANTS: tuple[Mutant, ...] = (
    # --- from issue 37
    Mutant("pcm_not_full_scale", "integer PCM not divided by full scale (mmoe.inputs.audio.pcm_to_float, signed)",
           "mmoe/inputs/audio.py",
           r"(np\.signedinteger\):\s*\n\s*return \(data\.astype\(np\.float64\))"
           r" / float\(np\.iinfo\(data\.dtype\)\.max \+ 1\)",
           r"\1", AUDIO_TESTS),
    # the separation task's own conversion is gone (tasks/separation/io.py calls mmoe.inputs.audio): the
    # unsigned branch (8-bit WAV) of the shared conversion takes its place in the list
    Mutant("pcm_unsigned_not_centred", "unsigned PCM (uint8/uint16) not shifted down by half its range",
           "mmoe/inputs/audio.py", r"\(data\.astype\(np\.float64\) - half\) / half",
           "data.astype(np.float64) / half", AUDIO_TESTS),
    Mutant("macs_value_inverted", "MACS token value inverted: undecided tokens weigh most", "mmoe/capacity.py",
           r"return 2\.0 - entropy / math\.log\(E\)", "return 1.0 + entropy / math.log(E)", MACS_TESTS),
    Mutant("macs_rank_order", "MACS ranks pairs worst value first inside an (expert, modality) group",
           "mmoe/capacity.py", r"(by_value = torch\.sort\(pair_u, descending=)True", r"\1False", MACS_TESTS),
    # --- core logic
    Mutant("capacity_formula", "expert capacity rounded down: floor(cf * k * T / E)", "mmoe/capacity.py",
           r"return math\.ceil\(capacity_factor \* top_k \* num_tokens / num_experts\)",
           "return math.floor(capacity_factor * top_k * num_tokens / num_experts)", MACS_TESTS),
    Mutant("dropless_gets_capacity", "dropless (capacity_factor None) silently gets capacity factor 1",
           "mmoe/capacity.py", r"if capacity_factor is None:\n(\s*)return None",
           r"if capacity_factor is None:\n\1return math.ceil(top_k * num_tokens / num_experts)", MACS_TESTS),
    Mutant("topk_ignores_selection_bias", "router top-k selects by the scores, ignoring the selection bias",
           "kernels/reference.py", r"experts = torch\.topk\(select, k, dim=-1\)",
           "experts = torch.topk(scores, k, dim=-1)", ("tests/test_moe_layer.py",)),
    Mutant("load_balance_unscaled", "Switch load-balance loss not multiplied by the number of experts",
           "mmoe/moe_layer.py", r"self\.load_balance_weight \* self\.num_experts \* \(",
           "self.load_balance_weight * (", ("tests/test_moe_layer.py",)),
    Mutant("anomaly_calibration_per_rank", "anomaly calibration not summed over ranks (each rank its own)",
           "tasks/anomaly/task.py",
           r"c = \{k: trainer\.strategy\.reduce\(v, reduce_op=\"sum\"\) for k, v in c\.items\(\)\}", "c = c",
           ("tests/test_parallel_lightning.py",), select="round_trip and anomaly"),
)


def repo_files(root: Path) -> list[str]:
    """Tracked files and untracked ones git does not ignore (the working tree as it is)."""
    out = subprocess.run(["git", "ls-files", "-z", "-co", "--exclude-standard"], cwd=root, capture_output=True,
                         check=True).stdout
    return [f for f in out.decode().split("\0") if f and (root / f).is_file()]


def make_copy(root: Path, dest: Path) -> None:
    for rel in repo_files(root):
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / rel, target)


SITECUSTOMIZE = '''"""mutation_check: point the editable install of mmoe at the copy."""
import sys
ORIGINAL, COPY = {original!r}, {copy!r}
for _m in list(sys.modules.values()):
    if getattr(_m, "__name__", "").startswith("__editable__") and isinstance(getattr(_m, "MAPPING", None), dict):
        for _table in (_m.MAPPING, getattr(_m, "NAMESPACES", {{}})):
            for _k, _v in list(_table.items()):
                _fix = lambda p: COPY + p[len(ORIGINAL):] if p == ORIGINAL or p.startswith(ORIGINAL + "/") else p
                _table[_k] = [_fix(p) for p in _v] if isinstance(_v, list) else _fix(_v)
'''

RESOLVE = ("import importlib, sys\n"
           "for n in ('mmoe', 'mmoe.kernels', 'mmoe.tasks', 'mmoe.datamodules', 'mmoe.capacity', 'mmoe.inputs'):\n"
           "    print(n, importlib.import_module(n).__file__)\n")


def environment(boot: Path) -> dict[str, str]:
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    env["PYTHONPATH"] = os.pathsep.join([str(boot), *filter(None, [os.environ.get("PYTHONPATH")])])
    return env


def check_resolution(python: str, copy: Path, env: dict[str, str], cwd: Path) -> None:
    """Every mmoe module imported in a fresh interpreter (outside the copy) must come from the copy."""
    out = subprocess.run([python, "-c", RESOLVE], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    if out.returncode:
        raise SystemExit(f"mutation_check: importing mmoe in the copy failed:\n{out.stderr[-3000:]}")
    wrong = [line for line in out.stdout.splitlines() if not line.split(" ", 1)[1].startswith(str(copy) + os.sep)]
    if wrong:
        raise SystemExit("mutation_check: these modules do not come from the copy:\n" + "\n".join(wrong))


def run_tests(m: Mutant, tests: list[str], python: str, copy: Path, env: dict[str, str],
              timeout: float) -> tuple[subprocess.CompletedProcess, float]:
    start = time.perf_counter()
    select = ["-k", m.select] if m.select else []
    r = subprocess.run([python, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *select, *tests], cwd=copy,
                       env=env, capture_output=True, text=True, timeout=timeout)
    return r, time.perf_counter() - start


def run_mutant(m: Mutant, python: str, copy: Path, env: dict[str, str], timeout: float,
               baseline: dict[tuple, str]) -> tuple[str, str]:
    """``(status, detail)``: status is killed, survived, not applied, no tests, baseline fails or error.
    ``baseline`` caches, per test selection, the failure of the unmutated tree ("" when it passes)."""
    path = copy / m.path
    if not path.is_file():
        return "not applied", f"{m.path} does not exist"
    original = path.read_text()
    mutated, n = re.subn(m.pattern, m.replacement, original)
    if n != m.count:
        return "not applied", f"pattern found {n} times in {m.path} (expected {m.count})"
    tests = sorted({str(p.relative_to(copy)) for g in m.tests for p in copy.glob(g)})
    if not tests:
        return "no tests", f"none of {m.tests} exists"
    key = (tuple(tests), m.select)
    try:
        if m is not SANITY and key not in baseline:  # a failure without the mutant kills nothing
            r, _ = run_tests(m, tests, python, copy, env, timeout)
            baseline[key] = "" if r.returncode == 0 else (r.stdout.strip().splitlines() or ["?"])[-1]
        if baseline.get(key):
            return "baseline fails", f"the unmutated tree fails these tests: {baseline[key]}"
        path.write_text(mutated)
        try:
            r, seconds = run_tests(m, tests, python, copy, env, timeout)
        finally:
            path.write_text(original)
    except subprocess.TimeoutExpired:
        return "error", f"tests ran past {timeout:.0f} s"
    last = (r.stdout.strip().splitlines() or ["(no output)"])[-1]
    if r.returncode == 0:
        return "survived", f"{last} ({seconds:.0f} s)"
    if r.returncode in (1, 2):  # failed tests, or collection errors (the mutant broke an import)
        failed = re.findall(r"^(?:FAILED|ERROR) (\S+)", r.stdout, flags=re.M)
        return "killed", f"by {failed[0] if failed else last} ({seconds:.0f} s)"
    return "error", f"pytest exit {r.returncode}: {last}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", default=None, help="names of the mutants to run (default: all)")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--python", default=None, help="interpreter for the tests (default: .venv/bin/python "
                        "of this checkout if present, else this one)")
    parser.add_argument("--timeout", type=float, default=1200, help="seconds per mutant's tests")
    parser.add_argument("--keep", action="store_true", help="keep the copy (its path is printed)")
    args = parser.parse_args()
    if args.list:
        for m in MUTANTS:
            print(f"{m.name:32s} {m.path:26s} {m.description}")
        return 0
    names = {m.name for m in MUTANTS}
    unknown = sorted(set(args.only or []) - names)
    if unknown:
        raise SystemExit(f"--only: expected names among {sorted(names)}, got {unknown}")
    chosen = [m for m in MUTANTS if args.only is None or m.name in args.only]
    venv = ROOT / ".venv" / "bin" / "python"
    python = args.python or (str(venv) if venv.is_file() else sys.executable)
    work = Path(tempfile.mkdtemp(prefix="mmoe-mutants-"))
    copy, boot = work / "repo", work / "boot"
    try:
        make_copy(ROOT, copy)
        boot.mkdir()
        (boot / "sitecustomize.py").write_text(SITECUSTOMIZE.format(original=str(ROOT), copy=str(copy)))
        env = environment(boot)
        check_resolution(python, copy, env, work)
        baseline: dict[tuple, str] = {}
        status, detail = run_mutant(SANITY, python, copy, env, args.timeout, baseline)
        if status != "killed":
            print(f"sanity mutant {status}: {detail}; the copy's code is not what the tests run", file=sys.stderr)
            return 1
        results = []
        for m in chosen:
            status, detail = run_mutant(m, python, copy, env, args.timeout, baseline)
            results.append((m, status, detail))
            print(f"{status:12s} {m.name:32s} {detail}", flush=True)
    finally:
        if args.keep:
            print(f"copy kept: {copy}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    print("\n| mutant | file | status | detail |\n|---|---|---|---|")
    for m, status, detail in results:
        print(f"| {m.name}: {m.description} | {m.path} | {status} | {detail} |")
    survived = [m.name for m, s, _ in results if s in ("survived", "error", "no tests", "baseline fails")]
    skipped = [m.name for m, s, _ in results if s == "not applied"]
    print(f"\nsurvived (or not run): {', '.join(survived) or 'none'}; not applied: {', '.join(skipped) or 'none'}")
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main())
