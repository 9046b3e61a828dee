"""Quality of the shipped PDE configs: train each recipe (its fixed steps), test, print a table.

    python benchmarks/pde.py                                  # the four shipped recipes (~10 min each)
    python benchmarks/pde.py --configs nested_moe_2d --max_steps 500     # a shorter trial, not a recipe

Each config is trained with ``mmoe fit`` semantics (LightningCLI, seed from the config or
--seed), its best-validation checkpoint is tested on the test split, and 2D models are also
tested on the same families generated at 64x64 (resolution transfer). Results go to stdout as
a markdown table and to ``<run_dir>/results.json`` (used for the zoo manifest).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import yaml

from mmoe.cli import cli_main
from mmoe.datamodules import PDEDataModule

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "pde"
DEFAULT = ["nested_moe_2d", "dense_2d", "nested_moe_1d", "dense_1d"]


def run_config(name: str, max_steps: int | None, seed: int, run_dir: str) -> dict:
    config = CONFIGS / f"{name}.yaml"
    start = time.perf_counter()
    extra = ["--trainer.max_steps", str(max_steps)] if max_steps else []
    cli = cli_main(["fit", "--config", str(config), "--seed_everything", str(seed), *extra,
                    "--run_dir", run_dir, "--run_name", name, "--trainer.enable_progress_bar", "false"])
    train_seconds = time.perf_counter() - start
    trainer, model = cli.trainer, cli.model
    best = trainer.checkpoint_callback.best_model_path or None
    metrics = trainer.test(model, datamodule=cli.datamodule, ckpt_path=best, verbose=False)[0]
    result = {"config": f"configs/pde/{name}.yaml", "seed": seed, "train_seconds": round(train_seconds, 1),
              "steps": trainer.global_step, "epochs": trainer.current_epoch, "checkpoint": best,
              "test": {k: round(float(v), 5) for k, v in metrics.items() if k.startswith("test/")}}
    data_args = yaml.safe_load(config.read_text())["data"]["init_args"]
    if data_args.get("spatial_dims", 2) == 2:
        dm64 = PDEDataModule(**(data_args | {"resolution": 64}))
        m64 = trainer.test(model, datamodule=dm64, ckpt_path=best, verbose=False)[0]
        result["test_64x64"] = {k: round(float(v), 5) for k, v in m64.items() if k.startswith("test/rel_l2")}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=DEFAULT, help="config names under configs/pde")
    parser.add_argument("--max_steps", type=int, default=None, help="override the recipes' steps (a trial)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--run_dir", default="runs/bench_pde")
    args = parser.parse_args()
    results = {}
    out = Path(args.run_dir) / "results.json"
    for name in args.configs:
        results[name] = run_config(name, args.max_steps, args.seed, args.run_dir)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2))
    steps = "the recipes' steps" if args.max_steps is None else f"{args.max_steps} steps (trial)"
    print(f"\n# PDE quality, seed {args.seed}, {steps} (test split, relative L2, lower is better)")
    print("| config | steps | train s | test rel L2 | per family | family routing acc | rel L2 at 64x64 |")
    print("|---|---|---|---|---|---|---|")
    for name, r in results.items():
        t = r["test"]
        fams = ", ".join(f"{k.split('rel_l2_')[1]} {v:.4f}" for k, v in t.items() if "rel_l2_" in k)
        acc = t.get("test/family_routing_acc")
        r64 = r.get("test_64x64", {}).get("test/rel_l2")
        print(f"| {name} | {r['steps']} | {r['train_seconds']:.0f} | {t.get('test/rel_l2', float('nan')):.4f} | "
              f"{fams} | {'-' if acc is None else f'{acc:.3f}'} | {'-' if r64 is None else f'{r64:.4f}'} |")
    print(f"\nresults: {out}")


if __name__ == "__main__":
    main()
