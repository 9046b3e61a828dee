"""The benchmark scripts run end to end in their small CPU modes and print numeric tables."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(args: list[str], env: dict | None = None) -> str:
    r = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=600,
                       env=dict(os.environ, **(env or {})))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r.stdout


def test_moe_layer_benchmark_quick() -> None:
    out = run(["benchmarks/moe_layer.py", "--quick", "--repeats", "1"])
    rows = [line for line in out.splitlines() if line.startswith("| 256 ")]
    methods = [r.split("|")[6].strip() for r in rows]
    assert methods == ["mmoe", "mmoe_reference", "naive_loop", "dense_equal_flops"] * 2  # 2 shapes x 4 methods
    speedups = [float(m) for m in re.findall(r"\| ([0-9.]+)x \|", out)]
    assert speedups and all(math.isfinite(s) and s > 0 for s in speedups)


def test_moe_kernels_benchmark_cpu_mode() -> None:
    out = run(["benchmarks/moe_kernels.py", "--cpu"], env={"TRITON_INTERPRET": "1"})
    impls = {line.split()[2] for line in out.splitlines() if line.startswith("tiny")}
    assert impls == {"triton", "triton-det", "torch", "naive-loop", "dense-gemm"}
    numbers = [float(x) for x in re.findall(r"\b\d+\.\d+\b", out)]
    assert numbers and all(math.isfinite(x) for x in numbers)


def test_macs_benchmark_smoke(tmp_path: Path) -> None:
    out = run(["benchmarks/macs.py", "--smoke", "--out", str(tmp_path / "macs.json")])
    rows = [line for line in out.splitlines() if re.match(r"\| (dropless|static|macs) \|", line)]
    assert len(rows) == 5  # dropless + 2 factors x 2 modes
    # binding capacity drops pairs of both modalities; dropless drops none
    cells = [[c.strip() for c in r.split("|")[1:-1]] for r in rows]
    assert cells[0][:2] == ["dropless", "-"] and cells[0][5:7] == ["0.0%", "0.0%"]
    assert all(float(c[5].rstrip("%")) > 0 and float(c[6].rstrip("%")) > 0 for c in cells[1:])
    assert "smallest cf keeping" in out
