"""Inference settings of a trained tracker chosen on the validation split, then measured on the test split.

    python benchmarks/tracking_inference.py --model tracking-rgbd-moe --config rgbd_moe

Grid: the score-map window weight (``TrackingTask`` ``window``) x template update (None or a
confidence threshold, every 10 frames). Each setting tracks the config's validation sequences; the
one with the best validation success AUC (ties: the earlier, simpler setting in the grid) is then
run on the test split beside the default (no window, no update). The test split is never used to
choose. Results: a markdown table on stdout.
"""

from __future__ import annotations

import argparse
import sys
import itertools
from pathlib import Path

import yaml
if __name__ == "__main__" and not __package__:  # run as a file (python benchmarks/tracking_inference.py): siblings import
    sys.path[0] = str(Path(__file__).resolve().parents[1])  # as the benchmarks package, like `python -m benchmarks.tracking_inference`

from benchmarks.tracking import depth_data, evaluate

import mmoe
from mmoe.datamodules.tracking.datamodule import TrackingDataModule

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tracking-rgbd-moe", help="zoo name, .safetensors or .ckpt")
    parser.add_argument("--config", default="rgbd_moe", help="configs/tracking/<config>.yaml: its data")
    parser.add_argument("--windows", nargs="+", type=float, default=[0.0, 0.2, 0.4, 0.6])
    parser.add_argument("--updates", nargs="+", default=["none", "0.7"], help="'none' or confidence thresholds")
    args = parser.parse_args()
    cfg = yaml.safe_load((ROOT / "configs" / "tracking" / f"{args.config}.yaml").read_text())
    dm = TrackingDataModule(**cfg["data"]["init_args"])
    dm.setup("validate")
    dm.setup("test")
    val = [dm.val_dataset[i] for i in range(len(dm.val_dataset))]
    test = [dm.test_dataset[i] for i in range(len(dm.test_dataset))]
    model = mmoe.load(args.model).float().eval()
    updates = [None if u == "none" else float(u) for u in args.updates]

    def run(items, window: float, update: float | None) -> dict:
        model.hparams.window, model.hparams.template_update = window, update
        return evaluate(model, items, depth_data(dm))["test"]

    print(f"# {args.model}: validation split ({len(val)} sequences)\n")
    print("| window | template update | val success AUC | val P@20 |\n|---|---|---|---|")
    scores = {}
    for window, update in itertools.product(args.windows, updates):
        r = run(val, window, update)
        scores[(window, update)] = r["success_auc"]
        print(f"| {window} | {update} | {r['success_auc']:.3f} | {r['precision_20']:.3f} |")
    best = max(scores, key=lambda k: scores[k])  # max keeps the first of equal scores
    print(f"\nchosen on validation: window {best[0]}, template update {best[1]}\n")
    print(f"# test split ({len(test)} sequences)\n")
    print("| setting | success AUC | precision@20 | norm. precision |\n|---|---|---|---|")
    for name, (window, update) in (("default (window 0, no update)", (0.0, None)),
                                   (f"chosen (window {best[0]}, update {best[1]})", best)):
        r = run(test, window, update)
        print(f"| {name} | {r['success_auc']:.3f} | {r['precision_20']:.3f} | {r['norm_precision']:.3f} |")


if __name__ == "__main__":
    main()
