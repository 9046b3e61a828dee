"""Release a trained restoration recipe to the zoo and measure the released file.

    python benchmarks/restoration_release.py --ckpt runs/bench_restoration/all_in_one_3/version_0/checkpoints/best.ckpt \\
        --config all_in_one_3 --name restoration-all-in-one-3 --train_seconds 1182

Exports the checkpoint to ``checkpoints/<name>.safetensors`` (float16), loads the exported file
with ``mmoe.load``, evaluates it on the embedded test split exactly as benchmarks/restoration.py
does (whole images, fixed-seed degradations), then rewrites the manifest row with those metrics:
the numbers in the manifest are those of the file users download.
"""

from __future__ import annotations

import argparse
import sys
import json
from pathlib import Path

import torch
import yaml

import mmoe
from mmoe.zoo_cli import export_checkpoint
if __name__ == "__main__" and not __package__:  # run as a file (python benchmarks/restoration_release.py): siblings import
    sys.path[0] = str(Path(__file__).resolve().parents[1])  # as the benchmarks package, like `python -m benchmarks.restoration_release`

from benchmarks.restoration import evaluate, make_datamodule, test_indices

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", required=True)
    parser.add_argument("--config", default="all_in_one_3")
    parser.add_argument("--name", default="restoration-all-in-one-3")
    parser.add_argument("--train_seconds", type=float, required=True, help="wall time of the recipe's fit")
    parser.add_argument("--dtype", default="float16", choices=["float32", "float16", "bfloat16"])
    args = parser.parse_args()
    config_rel = f"restoration/{args.config}.yaml"
    cfg = yaml.safe_load((ROOT / "configs" / config_rel).read_text())
    data_args = cfg["data"]["init_args"]
    steps = int(torch.load(args.ckpt, map_location="cpu", weights_only=True)["global_step"])
    training = (f"embedded RestorationDataModule {json.dumps(data_args, sort_keys=True)}; recipe of "
                f"{cfg['trainer']['max_steps']} steps ({args.train_seconds:.0f} s on 2 CPU cores), best validation "
                f"checkpoint at step {steps}, seed {cfg['seed_everything']}")
    common = dict(ckpt=Path(args.ckpt), name=args.name, config=config_rel, task="restoration", training_data=training,
                  out_dir=ROOT / "checkpoints", dtype=args.dtype,
                  description=f"all-in-one restoration (wavelet-domain nested MoE), {args.config} config, "
                              f"weights stored as {args.dtype}")
    row = export_checkpoint(metrics={}, **common)
    model = mmoe.load(ROOT / "checkpoints" / row["file"])
    dm = make_datamodule(data_args)
    result = evaluate(model.float(), dm, test_indices(dm, None), None)
    metrics = {k: v for k, v in result["test"].items()}
    metrics["router_accuracy"] = result["router"]["accuracy"]
    row = export_checkpoint(metrics=metrics, **common)
    print(json.dumps(row, indent=2))


if __name__ == "__main__":
    main()
