"""Train a shipped recipe from a benchmark script, or find a run trained outside one
(``mmoe fit ... --run_dir RUN_DIR --run_name NAME``)."""

from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path

import torch
import yaml
from benchmarks.recipe_overrides import overrides


def add_recipe_arguments(parser: argparse.ArgumentParser, task: str, default: list[str], config_dir: Path,
                         smoke_help: str, results_help: str = "--skip_train") -> None:
    """The options every recipe benchmark shares: which configs, steps, seed, run folder, smoke, re-evaluation."""
    parser.add_argument("--configs", nargs="+", default=None, help=f"config names under configs/{task} "
                        f"(default: {' '.join(default)}; with --skip_train: those in --results)")
    parser.add_argument("--max_steps", type=int, default=None, help="override the recipes' steps (a trial)")
    parser.add_argument("--seed", type=int, default=None, help="override the configs' seed_everything")
    parser.add_argument("--run_dir", default=f"runs/bench_{task}")
    parser.add_argument("--smoke", action="store_true", help=smoke_help)
    parser.add_argument("--skip_train", action="store_true",
                        help="re-evaluate the checkpoints of --results (configs not in it: the newest run "
                             "<run_dir>/<name>/version_* of a plain `mmoe fit --run_dir RUN_DIR --run_name NAME`)")
    parser.add_argument("--results", default=None,
                        help=f"results.json of an earlier run ({results_help}; default <run_dir>/results.json)")
    parser.add_argument("--config_dir", default=str(config_dir), help=argparse.SUPPRESS)


def config_path(name: str, config_dir: Path) -> Path:
    path = config_dir / f"{name}.yaml"
    if not path.is_file():
        raise SystemExit(f"--configs: no config {path}")
    return path


def train(name: str, config: Path, args: argparse.Namespace, smoke_model: dict, smoke_data: dict, smoke_steps: int,
          root: Path) -> dict:
    """Fit ``config`` with ``mmoe fit`` semantics into ``args.run_dir/name`` (``args``: max_steps, smoke,
    seed, run_dir), timed; returns the run's description with its best (else last) checkpoint."""
    from mmoe.cli import cli_main

    cfg = yaml.safe_load(config.read_text())
    extra, model_args, data_args = overrides(cfg, args.max_steps, args.smoke, smoke_model, smoke_data, smoke_steps)
    seed = getattr(args, "seed", None)  # a benchmark without --seed uses the config's
    if seed is not None:
        extra += ["--seed_everything", str(seed)]
    argv, sys.argv[1:] = sys.argv[1:], []  # LightningCLI warns when it sees both args and sys.argv
    try:
        start = time.perf_counter()
        cli = cli_main(["fit", "--config", str(config), *extra, "--run_dir", args.run_dir, "--run_name", name,
                        "--trainer.enable_progress_bar", "false"])
        train_seconds = time.perf_counter() - start
    finally:
        sys.argv[1:] = argv
    trainer = cli.trainer
    best, kind = trainer.checkpoint_callback.best_model_path, "best"
    if not best:  # no validation ran: the last weights
        best, kind = trainer.checkpoint_callback.last_model_path, "last"
    result = {"config": str(config.relative_to(root)) if config.is_relative_to(root) else str(config),
              "seed": seed if seed is not None else cfg.get("seed_everything"),
              "smoke": args.smoke, "train_seconds": round(train_seconds, 1), "steps": trainer.global_step,
              "planned_steps": args.max_steps or (smoke_steps if args.smoke
                                                  else (cfg.get("trainer") or {}).get("max_steps")),
              "checkpoint": best, "checkpoint_kind": kind, "model_args": model_args, "data_args": data_args,
              "threads": torch.get_num_threads(),
              "run_kind": "smoke" if args.smoke else "trial" if args.max_steps else "recipe"}
    del cli, trainer
    gc.collect()
    return result


def discover(names: list[str], run_dir: str) -> dict:
    """The newest ``RUN_DIR/<name>/version_*`` with a checkpoint, for the first of ``names`` that has
    one: its saved config.yaml and checkpoint step (best.ckpt, else last.ckpt); the training time is
    the time between the config (written at the start) and last.ckpt."""
    from mmoe.loading import torch_load_weights_only

    folders = []
    for n in dict.fromkeys(names):
        folders += sorted((Path(run_dir) / n).glob("version_*"), key=lambda p: int(p.name.split("_")[-1]))[::-1]
    for folder in folders:
        best, last = folder / "checkpoints" / "best.ckpt", folder / "checkpoints" / "last.ckpt"
        ckpt = best if best.is_file() else last
        if not ckpt.is_file() or not (folder / "config.yaml").is_file():
            continue
        cfg = yaml.safe_load((folder / "config.yaml").read_text())
        final = last if last.is_file() else ckpt
        steps = torch_load_weights_only(final, str(final)).get("global_step")
        return {"config": f"{folder / 'config.yaml'}", "seed": cfg.get("seed_everything"), "smoke": False,
                "train_seconds": round(final.stat().st_mtime - (folder / "config.yaml").stat().st_mtime, 1),
                "train_seconds_source": "file times", "steps": steps,
                "planned_steps": (cfg.get("trainer") or {}).get("max_steps"), "checkpoint": str(ckpt),
                "checkpoint_kind": "best" if ckpt == best else "last",
                "model_args": cfg["model"].get("init_args") or {}, "data_args": cfg["data"].get("init_args") or {},
                "run_kind": "run_folder", "incomplete": (folder / "INCOMPLETE.json").is_file()}
    raise SystemExit(f"--skip_train: {names[0]!r} is neither in the results file nor a run under {run_dir}/{names[0]}")
