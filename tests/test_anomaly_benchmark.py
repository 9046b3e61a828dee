"""benchmarks/anomaly.py runs end to end in its --smoke mode and prints finite metrics for the model and
both baselines."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_anomaly_benchmark_smoke(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "benchmarks/anomaly.py", "--smoke", "--configs", "default", "--run_dir",
                        str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=600,
                       env=dict(os.environ, NO_ALBUMENTATIONS_UPDATE="1"))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    lines = r.stdout.splitlines()
    for method in ("default", "per-pixel Gaussian z-score", "PCA reconstruction"):
        row = next(ln for ln in lines if ln.startswith(f"| {method} |"))
        values = [float(x) for x in re.findall(r"\b[01]\.\d{3}\b", row)[-3:]]
        assert len(values) == 3 and all(0 <= v <= 1 for v in values), row
    # per-modality tables: the four embedded modalities
    assert any(ln.startswith("| method | brain_mri | ct | fundus | histology | mean |") for ln in lines)
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["default"]["steps"] == 4 and results["default"]["train_seconds"] > 0
    assert (tmp_path / "anomaly_examples.png").stat().st_size > 0
