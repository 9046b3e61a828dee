"""benchmarks/pde.py --smoke runs end to end in CI: the shrunk recipe trains, tests at 32x32 and
64x64, and its FNO peer trains and tests the same way. neuraloperator is a benchmark-only
dependency: where it is not installed, a stand-in ``neuralop.models.FNO`` (a pointwise network
with FNO's constructor) takes its place, so the script's own code path still runs."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

STAND_IN = '''"""A stand-in for neuraloperator's FNO (tests only): same constructor, pointwise layers."""
from torch import nn


class FNO(nn.Module):
    def __init__(self, n_modes, in_channels, out_channels, hidden_channels, n_layers):
        super().__init__()
        conv = nn.Conv2d if len(n_modes) == 2 else nn.Conv1d
        layers = [conv(in_channels, hidden_channels, 1)]
        for _ in range(n_layers):
            layers += [nn.GELU(), conv(hidden_channels, hidden_channels, 1)]
        self.net = nn.Sequential(*layers, nn.GELU(), conv(hidden_channels, out_channels, 1))

    def forward(self, x):
        return self.net(x)
'''


def test_pde_benchmark_smoke(tmp_path: Path) -> None:
    env = dict(os.environ, MMOE_HOME=str(tmp_path / "home"), OMP_NUM_THREADS="1")
    real = importlib.util.find_spec("neuralop") is not None
    if not real:
        (tmp_path / "stub" / "neuralop").mkdir(parents=True)
        (tmp_path / "stub" / "neuralop" / "__init__.py").write_text("")
        (tmp_path / "stub" / "neuralop" / "models.py").write_text(STAND_IN)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(tmp_path / "stub"), env.get("PYTHONPATH")]))
    run_dir = tmp_path / "bench"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "pde.py"), "--smoke", "--run_dir", str(run_dir)],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    results = json.loads((run_dir / "results.json").read_text())
    assert list(results) == ["nested_moe_2d", "fno_2d"]
    moe, fno = results["nested_moe_2d"], results["fno_2d"]
    assert moe["steps"] == 2 and fno["steps"] == 2
    assert moe["checkpoint"] and Path(moe["checkpoint"]).is_file()  # the smoke epoch ended with a validation
    for r_ in (moe, fno):
        for split in ("test", "test_64x64"):
            values = [v for k, v in r_[split].items() if k.startswith("test/rel_l2")]
            assert len(values) >= 2 and all(math.isfinite(v) and v > 0 for v in values), (split, r_[split])
        assert set(r_["test"]) >= {f"test/rel_l2_{f}" for f in ("darcy", "heat", "advection", "allen_cahn")}
    assert fno["width"] == 8 and fno["modes"] == 4 and fno["layers"] == 1
    rows = [line for line in r.stdout.splitlines() if re.match(r"\| (nested_moe_2d|fno_2d) \|", line)]
    assert len(rows) == 4  # quality table and the 64x64 table
    assert "smoke run (2 steps" in r.stdout
