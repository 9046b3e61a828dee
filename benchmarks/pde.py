"""Quality of the shipped PDE configs and of an FNO peer: train, test, print one table.

    python benchmarks/pde.py                                  # the four shipped recipes (~10 min each) + FNO peers
    python benchmarks/pde.py --configs nested_moe_2d dense_2d --max_steps 500   # a shorter trial, not a recipe
    python benchmarks/pde.py --no_fno                         # the recipes only
    python benchmarks/pde.py --smoke --run_dir /tmp/bench     # tiny model, data and FNO, 2 steps (CI check)
    python benchmarks/pde.py --configs nested_moe_2d --fno_only --fno_budget 639 --fno_conditioned 4 \
        --run_dir runs/bench_pde_fno_cond                     # ablation: FNO + the recipe's conditioned channels

Each config is trained with ``mmoe fit`` semantics (LightningCLI, seed from the config or
--seed), its best-validation checkpoint is tested on the test split, and 2D models are also
tested on the same families generated at 64x64 (resolution transfer). Results go to stdout as
markdown tables and to ``<run_dir>/results.json`` (used for the zoo manifest).

FNO peer (``fno_2d`` / ``fno_1d``, :mod:`pde_fno`): neuraloperator's FNO of a similar parameter
count, trained on the data of the ``nested_moe_<d>`` config (same channels, splits and metric)
for the wall time that config's run took in this invocation (or ``--fno_budget`` seconds), one
for each dimension among ``--configs``; best-validation weights, tested the same way (64x64 fed
directly). Needs ``neuraloperator`` (see ``pde_fno.INSTALL``).
"""

from __future__ import annotations

import argparse
import sys
import json
import time
from pathlib import Path

import torch
import yaml
if __name__ == "__main__" and not __package__:  # run as a file (python benchmarks/pde.py): siblings import
    sys.path[0] = str(Path(__file__).resolve().parents[1])  # as the benchmarks package, like `python -m benchmarks.pde`

from benchmarks.pde_fno import DEFAULT_MODES, DEFAULT_WIDTH, evaluate, train_fno
from benchmarks.recipe_overrides import overrides

from mmoe.cli import cli_main
from mmoe.datamodules import PDEDataModule

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "pde"
DEFAULT = ["nested_moe_2d", "dense_2d", "nested_moe_1d", "dense_1d"]
#: --smoke: the 2D recipe shrunk (model, data, FNO peer), SMOKE_STEPS steps, validated every epoch
SMOKE_CONFIGS = ["nested_moe_2d"]
SMOKE_MODEL = {"dim": 16, "depth": 1, "num_heads": 2, "hidden_dim": 16, "modes": 4}
SMOKE_DATA = {"num_samples_per_family": 8, "batch_size": 4}
SMOKE_STEPS = 2
SMOKE_FNO = {"width": 8, "modes": 4, "layers": 1}


def run_config(name: str, max_steps: int | None, seed: int, run_dir: str, smoke: bool = False) -> dict:
    config = CONFIGS / f"{name}.yaml"
    extra, _, data_args = overrides(yaml.safe_load(config.read_text()), max_steps, smoke, SMOKE_MODEL, SMOKE_DATA,
                                    SMOKE_STEPS)
    if smoke:  # the smoke steps fill one epoch, which ends with a validation (a best checkpoint)
        extra += ["--trainer.limit_train_batches", str(max_steps or SMOKE_STEPS),
                  "--trainer.check_val_every_n_epoch", "1"]
    start = time.perf_counter()
    cli = cli_main(["fit", "--config", str(config), "--seed_everything", str(seed), *extra,
                    "--run_dir", run_dir, "--run_name", name, "--trainer.enable_progress_bar", "false"])
    train_seconds = time.perf_counter() - start
    trainer, model = cli.trainer, cli.model
    best = trainer.checkpoint_callback.best_model_path or None
    metrics = trainer.test(model, datamodule=cli.datamodule, ckpt_path=best, verbose=False)[0]
    result = {"config": f"configs/pde/{name}.yaml", "seed": seed, "train_seconds": round(train_seconds, 1),
              "parameters": sum(p.numel() for p in model.model.parameters()), "steps": trainer.global_step,
              "epochs": trainer.current_epoch, "checkpoint": best,
              "test": {k: round(float(v), 5) for k, v in metrics.items() if k.startswith("test/")}}
    if data_args.get("spatial_dims", 2) == 2:
        dm64 = PDEDataModule(**(data_args | {"resolution": 64}))
        m64 = trainer.test(model, datamodule=dm64, ckpt_path=best, verbose=False)[0]
        result["test_64x64"] = {k: round(float(v), 5) for k, v in m64.items() if k.startswith("test/rel_l2")}
    return result


def run_fno(moe_name: str, budget: float, max_steps: int | None, seed: int, conditioned_channels: int = 0,
            smoke: bool = False) -> dict:
    """Train the FNO peer on the data of config ``moe_name`` for ``budget`` seconds; test like the configs
    (``smoke``: on the smoke data, a tiny FNO)."""
    data_args = yaml.safe_load((CONFIGS / f"{moe_name}.yaml").read_text())["data"]["init_args"]
    data_args = data_args | (SMOKE_DATA if smoke else {})
    model, info = train_fno(PDEDataModule(**data_args), budget, max_steps=max_steps, seed=seed,
                            conditioned_channels=conditioned_channels, **(SMOKE_FNO if smoke else {}))
    dm = PDEDataModule(**data_args)
    dm.setup("test")
    result = info | {"config": f"benchmarks/pde_fno.py on the data of configs/pde/{moe_name}.yaml",
                     "test": {k: round(v, 5) for k, v in evaluate(model, dm.test_dataloader(), dm.family_names).items()}}
    if data_args.get("spatial_dims", 2) == 2:
        dm64 = PDEDataModule(**(data_args | {"resolution": 64}))
        dm64.setup("test")
        result["test_64x64"] = {k: round(v, 5) for k, v in
                                evaluate(model, dm64.test_dataloader(), dm64.family_names).items()}
    return result


def _families(metrics: dict) -> str:
    return ", ".join(f"{k.split('rel_l2_')[1]} {v:.4f}" for k, v in metrics.items() if "rel_l2_" in k)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=None,
                        help=f"config names under configs/pde (default: {' '.join(DEFAULT)}; "
                             f"with --smoke: {' '.join(SMOKE_CONFIGS)})")
    parser.add_argument("--max_steps", type=int, default=None, help="override the recipes' steps (a trial)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--run_dir", default="runs/bench_pde")
    parser.add_argument("--no_fno", action="store_true", help="skip the FNO peers")
    parser.add_argument("--fno_only", action="store_true",
                        help="train only the FNO peers of the dimensions among --configs (needs --fno_budget)")
    parser.add_argument("--fno_conditioned", type=int, default=0,
                        help="ablation: FNO peers fed this many of the MoE recipe's conditioned Fourier channels")
    parser.add_argument("--fno_budget", type=float, default=None,
                        help="FNO training seconds (default: the wall time of nested_moe_<d> in this run)")
    parser.add_argument("--smoke", action="store_true",
                        help=f"tiny model, data and FNO, {SMOKE_STEPS} steps each: checks the script runs")
    args = parser.parse_args()
    if args.configs is None:
        args.configs = SMOKE_CONFIGS if args.smoke else DEFAULT
    results = {}
    out = Path(args.run_dir) / "results.json"

    def save() -> None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2))

    if args.fno_only and (args.no_fno or args.fno_budget is None):
        raise SystemExit("--fno_only: needs --fno_budget and no --no_fno")
    if args.fno_conditioned < 0:  # checked before the configs' long runs, not after
        raise SystemExit(f"--fno_conditioned: expected an integer >= 0, got {args.fno_conditioned}")
    for name in [] if args.fno_only else args.configs:
        results[name] = run_config(name, args.max_steps, args.seed, args.run_dir, args.smoke)
        save()
    if not args.no_fno:
        for dim in ("2d", "1d"):  # a peer for each dimension this run has configs of
            moe = f"nested_moe_{dim}"
            if not any(n.endswith(f"_{dim}") for n in args.configs):
                continue
            budget = args.fno_budget or results.get(moe, {}).get("train_seconds")
            if budget is None:
                raise SystemExit(f"--fno_budget: needed for fno_{dim} when {moe} is not among --configs")
            torch.manual_seed(args.seed)
            suffix = f"_cond{args.fno_conditioned}" if args.fno_conditioned else ""
            fno_steps = (args.max_steps or SMOKE_STEPS) if args.smoke else None
            results[f"fno_{dim}{suffix}"] = run_fno(moe, budget, fno_steps, args.seed, args.fno_conditioned,
                                                    args.smoke)
            save()
    steps = "the recipes' steps" if args.max_steps is None else f"{args.max_steps} steps (trial)"
    steps = f"smoke run ({args.max_steps or SMOKE_STEPS} steps, tiny models)" if args.smoke else steps
    widths = ", ".join(f"{d}D width {w}" for d, w in DEFAULT_WIDTH.items())
    print(f"\n# PDE quality, seed {args.seed}, {steps}; FNO ({widths}, {DEFAULT_MODES} modes) for the "
          "wall time of nested_moe_<d> (test split, relative L2, lower is better)")
    print("| model | parameters | steps | train s | test rel L2 | per family | family routing acc | rel L2 at 64x64 |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        t = r["test"]
        acc = t.get("test/family_routing_acc")
        r64 = r.get("test_64x64", {}).get("test/rel_l2")
        print(f"| {name} | {r['parameters'] / 1e6:.2f}M | {r['steps']} | {r['train_seconds']:.0f} | "
              f"{t.get('test/rel_l2', float('nan')):.4f} | {_families(t)} | {'-' if acc is None else f'{acc:.3f}'} | "
              f"{'-' if r64 is None else f'{r64:.4f}'} |")
    rows = {n: r["test_64x64"] for n, r in results.items() if "test_64x64" in r}
    if rows:
        print("\nZero-shot at 64x64 (trained at 32x32), per family:\n")
        print("| model | rel L2 at 64x64 | per family |")
        print("|---|---|---|")
        for name, t in rows.items():
            print(f"| {name} | {t['test/rel_l2']:.4f} | {_families(t)} |")
    print(f"\nresults: {out}")


if __name__ == "__main__":
    main()
