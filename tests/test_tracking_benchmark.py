"""benchmarks/tracking.py: the per-attribute restriction against a by-hand computation, and the
--smoke and --smoke --macs runs end to end with finite numbers."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "tracking.py"
NUMBER = r"-?\d+\.\d+"
ROWS = ("occlusion", "out_of_view", "dark", "overexposed", "camouflage", "fast_motion", "distractor", "rgb_fails")


def _bench():
    from benchmarks import tracking

    return tracking


def _iou(p: np.ndarray, g: np.ndarray) -> np.ndarray:
    ix = np.clip(np.minimum(p[:, 0] + p[:, 2], g[:, 0] + g[:, 2]) - np.maximum(p[:, 0], g[:, 0]), 0, None)
    iy = np.clip(np.minimum(p[:, 1] + p[:, 3], g[:, 1] + g[:, 3]) - np.maximum(p[:, 1], g[:, 1]), 0, None)
    inter = ix * iy
    return inter / (p[:, 2] * p[:, 3] + g[:, 2] * g[:, 3] - inter)


def test_attribute_rows_equal_the_metric_on_the_subset_by_hand() -> None:
    bench = _bench()
    rng = np.random.default_rng(3)
    scores = bench.TrackScores(rgbd=False)
    seqs = []
    for n in (9, 14, 5, 11):
        gt = np.column_stack([rng.uniform(0, 80, (n, 2)), rng.uniform(8, 40, (n, 2))])
        pred = gt + rng.normal(0, 6, (n, 4))
        pred[:, 2:] = np.abs(pred[:, 2:]) + 1
        present = rng.random(n) > 0.25
        present[0] = True
        attrs = {a: rng.random(n) > 0.6 for a in bench.ATTRIBUTES}
        attrs["dark"][:] = False  # an attribute a sequence never has
        item = {"boxes": torch.tensor(gt), "present": torch.tensor(present),
                **{f"attr/{a}": torch.tensor(m) for a, m in attrs.items()}}
        if n == 5:
            del item["attr/distractor"]  # a dataset without the attribute: all frames off
            attrs["distractor"][:] = False
        scores.update(item, torch.tensor(pred), torch.ones(n))
        seqs.append((pred, gt, present, attrs))
    got = scores.compute()["attributes"]
    for row in ROWS:
        aucs, p20s, frames, scored = [], [], 0, 0
        for pred, gt, present, attrs in seqs:
            on = np.zeros(len(gt), bool)
            for a in (bench.RGB_FAILS if row == "rgb_fails" else (row,)):
                on |= attrs[a]
            on[0] = False  # the first frame is the initialisation
            keep = on & present
            frames += int(on.sum())
            scored += int(keep.sum())
            if not keep.any():
                continue
            iou = _iou(pred[keep], gt[keep])
            aucs.append(np.mean([(iou > t).mean() for t in np.linspace(0, 1, 21)]))
            err = np.hypot(*(pred[keep, :2] + pred[keep, 2:] / 2 - gt[keep, :2] - gt[keep, 2:] / 2).T)
            p20s.append((err <= 20).mean())
        r = got[row]
        assert (r["frames"], r["scored_frames"], r["sequences"]) == (frames, scored, len(aucs)), row
        if aucs:
            assert r["success_auc"] == pytest.approx(np.mean(aucs), abs=1e-4), row
            assert r["precision_20"] == pytest.approx(np.mean(p20s), abs=1e-4), row
        else:
            assert r["success_auc"] is None and r["precision_20"] is None, row  # nothing to score: not a 0
    assert got["dark"]["frames"] == 0


def test_peer_keeps_previous_box_on_failure() -> None:
    bench = _bench()

    class Lost:
        def init(self, frame, rect):
            self.rect = rect

        def update(self, frame):
            return False, (0, 0, 0, 0)

    frames = [np.zeros((20, 30, 3), np.uint8)] * 3
    boxes, conf = bench.peer_track(Lost, frames, np.array([2.4, 3.6, 5.0, 6.0]))
    np.testing.assert_allclose(boxes, [[2.4, 3.6, 5, 6]] * 3)
    assert conf.tolist() == [1.0, 0.0, 0.0]


def test_missing_contrib_trackers_are_skipped_with_the_install_command(monkeypatch) -> None:
    bench = _bench()
    real = bench.tracker_factory
    monkeypatch.setattr(bench, "tracker_factory", lambda name: None if name in ("CSRT", "KCF") else real(name))
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (4, 48, 64, 3), dtype=np.uint8)
    item = {"frames": torch.from_numpy(frames), "boxes": torch.tensor([[20.0, 15, 16, 12]] * 4, dtype=torch.float64),
            "present": torch.ones(4, dtype=torch.bool)}
    out = bench.run_peers([item], rgbd=True, speed_frames=list(frames), speed_box=item["boxes"][0].numpy(), runs=1)
    assert list(out["trackers"]) == ["MIL"] and out["missing"] == ["CSRT", "KCF"]
    assert "pip install opencv-contrib-python-headless==" in out["message"] and "Skipped." in out["message"]
    t = out["trackers"]["MIL"]["test"]
    assert 0 <= t["success_auc"] <= 1 and 0 <= t["rgbd"]["f_score"] <= 1 and out["trackers"]["MIL"]["speed"]["fps"] > 0


def _run(*args: str, tmp: Path) -> str:
    r = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--run_dir", str(tmp), *args], cwd=ROOT,
                       capture_output=True, text=True, timeout=600,
                       env=dict(os.environ, NO_ALBUMENTATIONS_UPDATE="1"))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r.stdout


def test_tracking_benchmark_smoke(tmp_path: Path) -> None:
    out = _run(tmp=tmp_path)
    lines = out.splitlines()

    def row(prefix: str) -> list[list[str]]:
        return [[c.strip() for c in ln.split("|")[1:-1]] for ln in lines if ln.startswith(f"| {prefix}")]

    bench = _bench()
    peers = [p for p in ("CSRT", "KCF") if bench.tracker_factory(p) is not None] + ["MIL"]
    methods = ["rgbd_moe", "rgb_only", "dense"] + [f"OpenCV {p} (RGB)" for p in peers]
    # quality: AUC, P@20, normalised precision in [0, 1]; the F-score for every method (RGB-D test split)
    for m in methods:
        [cells] = [c for c in row(m + " |") if len(c) == 7 and "M (" not in c[1]]  # not the speed row
        for c in cells[3:6]:
            assert 0 <= float(c) <= 1, (m, cells)
        f, pr, re_ = (float(x) for x in re.fullmatch(rf"({NUMBER}) \(({NUMBER}) / ({NUMBER})\)", cells[6]).groups())
        assert all(0 <= v <= 1 for v in (f, pr, re_)), (m, cells)
    # per attribute (AUC and P@20): every row, one column per method; a number where frames are scored
    for table in ("success AUC", "precision@20"):
        start = next(i for i, ln in enumerate(lines) if ln.startswith(f"# Per attribute: {table}"))
        header = [c.strip() for c in lines[start + 1].split("|")[1:-1]]
        assert header[2:] == methods, header
        body = {c[0].split(" ")[0]: c for c in ([x.strip() for x in ln.split("|")[1:-1]]
                                                for ln in lines[start + 3:start + 3 + len(ROWS)])}
        assert tuple(body) == ROWS, body
        for name, cells in body.items():
            frames, scored = (int(x) for x in re.fullmatch(r"(\d+) \((\d+)\)", cells[1]).groups())
            assert scored <= frames, cells
            for c in cells[2:]:
                assert (c == "-") if scored == 0 else (0 <= float(c) <= 1), (name, cells)
        assert int(body["rgb_fails"][1].split(" ")[0]) >= max(int(body[a][1].split(" ")[0]) for a in bench.RGB_FAILS)
        assert any(int(c[1].split(" ")[0]) > 0 for c in body.values())
    # speed: params with the active count, frames/s > 0 for the models and the peers
    for m in ["rgbd_moe", "rgb_only", "dense"]:
        [cells] = [c for c in row(m + " |") if "M (" in c[1]]
        total, active = (float(x) for x in re.fullmatch(rf"({NUMBER}) M \(({NUMBER}) M\)", cells[1]).groups())
        assert 0 < active <= total and float(cells[5]) > 0, cells
    [moe] = [c for c in row("rgbd_moe |") if "M (" in c[1]]
    [dense] = [c for c in row("dense |") if "M (" in c[1]]
    assert float(moe[1].split(" ")[0]) > float(dense[1].split(" ")[0])  # MoE: more parameters in total
    for p in peers:
        [cells] = row(f"OpenCV {p} (cv2 threads")
        assert float(cells[5]) > 0, cells
    if len(peers) == 1:  # no opencv-contrib: CSRT and KCF skipped with the install command
        assert "opencv-contrib-python-headless==" in out and "Skipped." in out
    results = json.loads((tmp_path / "results.json").read_text())
    for name in ("rgbd_moe", "rgb_only", "dense"):
        t = results["configs"][name]["test"]
        assert all(math.isfinite(t[k]) for k in ("success_auc", "precision_20", "norm_precision"))
        assert set(t["attributes"]) == set(ROWS)
    assert sorted(results["peers"]["trackers"]) == sorted(peers)

    # --macs on the smoke rgbd_moe checkpoint just trained: dropless, then static and MACS per factor
    out = _run("--macs", tmp=tmp_path)
    macs = json.loads((tmp_path / "macs.json").read_text())
    modes = ("static", "macs", "macs_output")
    assert [(r["mode"], r["cf"]) for r in macs["rows"]] == [("dropless", None)] + [(m, cf) for cf in (1.0, 0.5)
                                                                                    for m in modes]
    for r in macs["rows"]:
        assert 0 <= r["success_auc"] <= 1 and r["max_over_mean_load"] >= 1 and r["fps"] > 0, r
        assert r["dropped_z_rgb"] is not None and 0 <= r["dropped_s_x"] <= 1, r
    assert all(r["dropped_z_rgb"] == 0 and r["dropped_s_rgb"] == 0 for r in macs["rows"][:1])  # dropless
    # cf 0.5, top-1, 4 experts: each expert keeps ceil(0.5 T / 4) of the T = 640 pairs of a frame
    # (64 + 256 tokens per modality), so at least 0.5 - 4 / 640 of all pairs are dropped, in every mode
    for r in (r for r in macs["rows"] if r["cf"] == 0.5):
        assert r["dropped_all"] >= 0.5 - 4 / 640 - 1e-9, r
    assert set(macs["smallest_cf"]) == set(modes)
    assert "smallest cf keeping >= 99% of dropless AUC" in out
    assert len([ln for ln in out.splitlines() if re.match(r"\| (dropless|static|macs|macs_output) \|", ln)]) == 7
