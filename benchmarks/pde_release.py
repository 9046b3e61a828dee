"""Release a trained PDE model to the zoo and measure the released file.

    python benchmarks/pde_release.py --results runs/bench_pde/results.json --config nested_moe_2d \\
        --name pde-nested-moe-2d --dtype float16

Exports the config's best checkpoint (from benchmarks/pde.py results) to
``checkpoints/<name>.safetensors``, loads the exported file back with ``mmoe.load`` and tests it
on the config's test split (and at 64x64 for 2D), then rewrites the manifest row with those
metrics — the numbers in the manifest are those of the file users download.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import lightning as L
import yaml

import mmoe
from mmoe.datamodules import PDEDataModule
from mmoe.zoo_cli import export_checkpoint

ROOT = Path(__file__).resolve().parents[1]


def evaluate(model, data_args: dict) -> dict[str, float]:
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    out = trainer.test(model, datamodule=PDEDataModule(**data_args), verbose=False)[0]
    return {k.removeprefix("test/"): round(float(v), 5) for k, v in out.items() if k.startswith("test/rel_l2")
            or k == "test/family_routing_acc"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", default="runs/bench_pde/results.json")
    parser.add_argument("--config", default="nested_moe_2d")
    parser.add_argument("--name", default="pde-nested-moe-2d")
    parser.add_argument("--dtype", default="float16", choices=["float32", "float16", "bfloat16"])
    args = parser.parse_args()
    run = json.loads(Path(args.results).read_text())[args.config]
    config_rel = f"pde/{args.config}.yaml"
    data_args = yaml.safe_load((ROOT / "configs" / config_rel).read_text())["data"]["init_args"]
    training = (f"embedded PDEDataModule {json.dumps(data_args, sort_keys=True)}; trained {run['train_seconds']} s "
                f"({run['steps']} steps) on 2 CPU cores, seed {run['seed']}")
    common = dict(ckpt=Path(run["checkpoint"]), name=args.name, config=config_rel, task="pde",
                  training_data=training, out_dir=ROOT / "checkpoints", dtype=args.dtype,
                  description=f"nested-MoE neural operator, {args.config} config, weights stored as {args.dtype}")
    row = export_checkpoint(metrics={}, **common)
    model = mmoe.load(ROOT / "checkpoints" / row["file"])
    metrics = evaluate(model, data_args)
    if data_args.get("spatial_dims", 2) == 2:
        metrics |= {f"{k}_64x64": v for k, v in evaluate(model, data_args | {"resolution": 64}).items()
                    if k.startswith("rel_l2")}
    row = export_checkpoint(metrics=metrics, **common)
    print(json.dumps(row, indent=2))


if __name__ == "__main__":
    main()
