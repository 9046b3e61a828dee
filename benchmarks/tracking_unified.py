"""One tracker for every X (issue 29): per-modality quality on the embedded test split, beside
the released RGB-D tracker and OpenCV's CSRT and KCF, in one run.

    python benchmarks/tracking_unified.py --model runs/bench_tracking29/unified/.../best.ckpt
    python benchmarks/tracking_unified.py --model a.ckpt --model b.safetensors --test_sequences 24

Rows: RGB (the test split's frames, no X), RGB-D, RGB-T and RGB-E (the test split rendered with that
X: the same seeds and photographs, ``TrackingDataModule(modality=X)``), and their mean. Each model
tracks every sequence from the first true box through its streaming loop (``track_sequence``); a
model with the modality prompt is told the X kind, one without it reads any X as its own (the
released RGB-D tracker reads thermal or event frames as depth). Peers: RGB only (CSRT and KCF need
opencv-contrib, see benchmarks/tracking.py). Scores: success AUC and precision@20
(``benchmarks/tracking.py``'s ``TrackScores``: frame 0 and absent frames unscored, per-sequence means).
"""

from __future__ import annotations

import argparse
import sys
import datetime
import json
import os
import time
from pathlib import Path
from typing import Any

import torch
if __name__ == "__main__" and not __package__:  # run as a file (python benchmarks/tracking_unified.py): siblings import
    sys.path[0] = str(Path(__file__).resolve().parents[1])  # as the benchmarks package, like `python -m benchmarks.tracking_unified`

from benchmarks.tracking import TrackScores, _bgr, opencv_distribution, peer_track, tracker_factory

import mmoe
from mmoe.datamodules.tracking.datamodule import TrackingDataModule

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
SPLITS = {"RGB": None, "RGB-D": "depth", "RGB-T": "thermal", "RGB-E": "event"}


def items_of(modality: str | None, sequences: int) -> list[dict[str, Any]]:
    dm = TrackingDataModule(modality=modality or "depth", use_x=modality is not None, test_sequences=sequences)
    dm.setup("test")
    return [dm.test_dataset[i] for i in range(len(dm.test_dataset))]


@torch.no_grad()
def score_model(model, items: list[dict[str, Any]]) -> dict:
    prompt = bool(model.hparams.get("modality_prompt", False))
    scores = TrackScores(rgbd=False)
    start = time.perf_counter()
    for item in items:
        out = model.track_sequence(item["frames"], item.get("x"), item["boxes"][0],
                                   item.get("modality") if prompt else None)
        scores.update(item, out["boxes"], out["confidence"])
    r = scores.compute()
    return {"success_auc": r["success_auc"], "precision_20": r["precision_20"],
            "rgb_fails_auc": r["attributes"]["rgb_fails"]["success_auc"], "seconds": time.perf_counter() - start}


def score_peer(name: str, items: list[dict[str, Any]]) -> dict | None:
    factory = tracker_factory(name)
    if factory is None:
        return None
    scores = TrackScores(rgbd=False)
    for item in items:
        boxes, conf = peer_track(factory, _bgr(item), item["boxes"][0].numpy())
        scores.update(item, torch.from_numpy(boxes), torch.from_numpy(conf))
    r = scores.compute()
    return {"success_auc": r["success_auc"], "precision_20": r["precision_20"],
            "rgb_fails_auc": r["attributes"]["rgb_fails"]["success_auc"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", default=[], help="zoo name, .safetensors or .ckpt (repeat)")
    parser.add_argument("--release", default="tracking-rgbd-moe", help="the released tracker to compare ('' skips)")
    parser.add_argument("--test_sequences", type=int, default=24)
    parser.add_argument("--out", default=None, help="results JSON")
    args = parser.parse_args()
    torch.set_num_threads(2)
    names = ([args.release] if args.release else []) + args.model
    models = {n: mmoe.load(n).float().eval() for n in names}
    peers = [p for p in ("CSRT", "KCF") if tracker_factory(p) is not None]
    results: dict[str, dict[str, Any]] = {}
    for split, modality in SPLITS.items():
        items = items_of(modality, args.test_sequences)
        row = {n: score_model(m, items) for n, m in models.items()}
        row.update({f"OpenCV {p}": score_peer(p, items) for p in peers})
        results[split] = row
    methods = list(next(iter(results.values())))
    print(f"# per-modality embedded test split ({args.test_sequences} sequences each), {datetime.date.today()}, "
          f"torch threads 2, {opencv_distribution()}; missing peers: "
          f"{[p for p in ('CSRT', 'KCF') if p not in peers] or 'none'}\n")
    for key, label in (("success_auc", "success AUC"), ("precision_20", "precision@20"),
                       ("rgb_fails_auc", "success AUC on rgb_fails frames")):
        print(f"{label}:\n\n| split | " + " | ".join(methods) + " |\n|---|" + "---|" * len(methods))
        for split, row in results.items():
            print(f"| {split} | " + " | ".join(f"{row[m][key]:.3f}" for m in methods) + " |")
        mean = {m: sum(results[s][m][key] for s in results) / len(results) for m in methods}
        print("| mean of the four | " + " | ".join(f"{mean[m]:.3f}" for m in methods) + " |\n")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
