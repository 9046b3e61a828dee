"""benchmarks/restoration.py runs end to end in its --smoke mode and prints finite numbers."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "configs" / "restoration" / "all_in_one_3.yaml"
NUMBER = r"-?\d+\.\d+"


def _recipe_ready() -> str | None:
    """Why the smoke test cannot run yet, or None."""
    if not RECIPE.is_file():
        return f"{RECIPE.relative_to(ROOT)} does not exist yet"
    steps = (yaml.safe_load(RECIPE.read_text()).get("trainer") or {}).get("max_steps")
    if not isinstance(steps, int) or isinstance(steps, bool):
        return f"{RECIPE.relative_to(ROOT)} is not finished (trainer.max_steps is {steps!r})"
    return None


def test_restoration_benchmark_smoke(tmp_path: Path) -> None:
    reason = _recipe_ready()
    if reason:
        pytest.skip(reason)
    r = subprocess.run([sys.executable, "benchmarks/restoration.py", "--smoke", "--configs", "all_in_one_3",
                        "--run_dir", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=600,
                       env=dict(os.environ, NO_ALBUMENTATIONS_UPDATE="1"))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    out = r.stdout
    lines = out.splitlines()

    def cells(prefix: str) -> list[list[str]]:
        return [[c.strip() for c in ln.split("|")[1:-1]] for ln in lines if ln.startswith(f"| {prefix}")]

    # quality tables (RGB and Y): one column per degradation type (denoise per noise level)
    header = next(ln for ln in lines if ln.startswith("| method | steps | train s |"))
    for col in ("denoise σ15", "denoise σ25", "denoise σ50", "derain", "dehaze", "all images"):
        assert f"| {col} |" in header, header
    for prefix in ("all_in_one_3 | 4 |", "degraded input |"):
        rows = cells(prefix)
        assert len(rows) == 2, (prefix, out)  # RGB and Y
        for row in rows:
            for cell in row[3:]:
                psnr, ssim = (float(x) for x in re.fullmatch(rf"({NUMBER}) / ({NUMBER})", cell).groups())
                assert math.isfinite(psnr) and math.isfinite(ssim) and -1 <= ssim <= 1, row
    # the peers: a finite PSNR/SSIM at sigma 25, nothing elsewhere
    s25 = header.split("|")[1:-1].index(" denoise σ25 ")
    for peer in ("OpenCV NLM", "skimage NLM"):
        rows = [row for row in cells(peer) if "/" in "".join(row[3:])]
        assert len(rows) == 2, (peer, out)
        for row in rows:
            psnr, ssim = (float(x) for x in re.fullmatch(rf"({NUMBER}) / ({NUMBER})", row[s25]).groups())
            assert math.isfinite(psnr) and psnr > 20 and 0 < ssim <= 1, row
    # router accuracy row, speed rows (the model and the peers)
    router = next(row for row in cells("all_in_one_3 |") if len(row) == 5 and "/" not in row[1])
    assert all(0 <= float(c) <= 1 for c in router[1:]), router
    speed = next(ln for ln in lines if re.match(r"\| all_in_one_3 \| [0-9.]+ M \|", ln))
    numbers = [float(x) for x in re.findall(NUMBER, speed)]
    assert len(numbers) >= 5 and all(math.isfinite(x) for x in numbers) and numbers[2] > 0, speed  # MP/s > 0
    assert sum(1 for ln in lines if re.match(r"\| (OpenCV|skimage) NLM .* \| - \| [0-9.]+ \| [0-9.]+ \|", ln)) == 2
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["configs"]["all_in_one_3"]["memory"]["delta_mib"] >= 0
    assert (tmp_path / "restoration_examples.png").stat().st_size > 0
