"""Release a trained tracking recipe to the zoo and measure the released file.

    python benchmarks/tracking_release.py --ckpt runs/bench_tracking/rgbd_moe/version_0/checkpoints/best.ckpt \\
        --config rgbd_moe --name tracking-rgbd-moe --train_seconds 1040

Exports the checkpoint to ``checkpoints/<name>.safetensors`` (float16), loads the exported file
with ``mmoe.load``, tracks the embedded test split exactly as benchmarks/tracking.py does (every
sequence from its first true box), then rewrites the manifest row with those metrics: the numbers
in the manifest are those of the file users download.
"""

from __future__ import annotations

import argparse
import sys
import json
from pathlib import Path

import yaml
if __name__ == "__main__" and not __package__:  # run as a file (python benchmarks/tracking_release.py): siblings import
    sys.path[0] = str(Path(__file__).resolve().parents[1])  # as the benchmarks package, like `python -m benchmarks.tracking_release`

from benchmarks.tracking import depth_data, evaluate, make_datamodule, test_items

import mmoe
from mmoe.loading import torch_load_weights_only
from mmoe.zoo_cli import export_checkpoint

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", required=True)
    parser.add_argument("--config", default="rgbd_moe")
    parser.add_argument("--name", default="tracking-rgbd-moe")
    parser.add_argument("--train_seconds", type=float, required=True, help="wall time of the recipe's fit")
    parser.add_argument("--dtype", default="float16", choices=["float32", "float16", "bfloat16"])
    args = parser.parse_args()
    config_rel = f"tracking/{args.config}.yaml"
    cfg = yaml.safe_load((ROOT / "configs" / config_rel).read_text())
    data_args = cfg["data"]["init_args"]
    steps = int(torch_load_weights_only(Path(args.ckpt), args.ckpt)["global_step"])
    training = (f"embedded TrackingDataModule {json.dumps(data_args, sort_keys=True)}; recipe of "
                f"{cfg['trainer']['max_steps']} steps ({args.train_seconds:.0f} s on 2 CPU cores), best validation "
                f"checkpoint at step {steps}, seed {cfg['seed_everything']}")
    common = dict(ckpt=Path(args.ckpt), name=args.name, config=config_rel, task="tracking", training_data=training,
                  out_dir=ROOT / "checkpoints", dtype=args.dtype,
                  description=f"RGB-X single-object tracker (one-stream, token-level top-k and soft MoE), "
                              f"{args.config} config, weights stored as {args.dtype}")
    row = export_checkpoint(metrics={}, **common)
    model = mmoe.load(ROOT / "checkpoints" / row["file"])
    dm = make_datamodule(data_args)
    test = evaluate(model.float(), test_items(dm), depth_data(dm))["test"]
    metrics = {k: round(test[k], 4) for k in ("success_auc", "precision_20", "norm_precision")}
    if "rgbd" in test:
        metrics["rgbd_f_score"] = round(test["rgbd"]["f_score"], 4)
    row = export_checkpoint(metrics=metrics, **common)
    print(json.dumps(row, indent=2))


if __name__ == "__main__":
    main()
