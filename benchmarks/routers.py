"""BEAM against each task's default router at the same recipe, with expert choice and soft routing
beside them (issue 25 item 3): short fixed-step runs of shipped recipes, one router changed from
the CLI (``--model.init_args.moe.router``), everything else as the recipe says.

    python -m benchmarks.routers --tasks emotion pde  # emotion/text_only (3 routers), pde/nested_moe_1d (4)
    python -m benchmarks.routers --tasks emotion --steps 400 --routers softmax beam
    python -m benchmarks.routers --smoke               # a few steps, a check that it runs

Per run: the test split's quality with the final weights (the recipe's monitor metric on test);
expert rows computed per token over the test split, summed over the MoE layers (a row is one
token or slot through one expert MLP, the same FLOPs in every router of a layer: top-k computes
``k`` rows a token, BEAM its unpruned ones, expert choice ``E x C``, soft ``E x slots`` a sample);
the share of expert FLOPs skipped against the task's default router (``1 - rows / rows of the
default``) and, for BEAM, against its own top-k (``1 - rows / (k x tokens)``); the median training
step time (forward, backward, optimizer; after 20 warm-up steps) in the same run. Validation is
off during these runs (it would only add time); the cosine schedule spans the shortened run.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback

from mmoe.cli import cli_main
from mmoe.moe_layer import MoELayer
from mmoe.routers import SoftRouter

ROOT = Path(__file__).resolve().parents[1]
#: task -> (recipe, its default router first, then the routers compared with it, default steps)
TASKS: dict[str, tuple[str, list[str], int]] = {
    "emotion": ("emotion/text_only", ["softmax", "beam", "expert_choice"], 400),  # soft: refused (padding removed)
    "pde": ("pde/nested_moe_1d", ["nested", "beam", "expert_choice", "soft"], 400),
    # not in the default run: its smoke run (5 steps) had not finished after 14 minutes here (not diagnosed)
    "separation": ("separation/tfmoe_8k", ["softmax", "beam", "expert_choice", "soft"], 200),
}
WARMUP = 20


class StepTimer(Callback):
    """Wall time of each training batch (forward, backward, optimizer step)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._start = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.times.append(time.perf_counter() - self._start)


class RowCounter:
    """Forward hooks on every MoE layer: tokens seen and expert rows computed (see the module docstring)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.tokens = 0  # tokens of the first MoE layer (every layer sees the same tokens per forward)
        self.rows = 0
        self.pruned_reference = 0  # k rows a token for the pair-based layers: what a plain top-k computes
        self.layers = [m for m in model.modules() if isinstance(m, MoELayer)]
        self.handles = [m.register_forward_hook(self.hook) for m in self.layers]

    def hook(self, layer: MoELayer, args: tuple, output: torch.Tensor) -> None:
        x = args[0]
        T = x.numel() // x.shape[-1]
        if layer is self.layers[0]:
            self.tokens += T
        if isinstance(layer.router, SoftRouter):
            samples = math.prod(x.shape[:-2]) if x.ndim >= 3 else 1
            rows = samples * layer.num_experts * layer.router.slots
        else:
            rows = int(layer.stats.tokens_per_expert.sum())
        shared = T * (layer.shared_experts.num_experts if layer.shared_experts is not None else 0)
        self.rows += rows + shared
        self.pruned_reference += T * layer.top_k + shared

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def run(recipe: str, router: str, steps: int, run_dir: Path, smoke: bool) -> dict[str, Any]:
    timer = StepTimer()
    args = ["--config", recipe, "--model.init_args.moe.router", router, "--trainer.max_steps", str(steps),
            "--trainer.limit_val_batches", "0", "--trainer.logger", "false", "--trainer.enable_checkpointing", "false",
            "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
            "--run_dir", str(run_dir), "--run_name", f"{recipe.replace('/', '_')}_{router}"]
    if smoke:
        args += ["--trainer.limit_test_batches", "2"]
    argv, sys.argv[1:] = sys.argv[1:], []  # LightningCLI warns when it sees both args and sys.argv
    try:
        cli = cli_main(args, run=False)
        cli.trainer.callbacks.append(timer)
        start = time.perf_counter()
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
        train_s = time.perf_counter() - start
        counter = RowCounter(cli.model)
        test = cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)[0]
        counter.remove()
    finally:
        sys.argv[1:] = argv
    metric = cli.model.monitor.replace("val/", "test/")
    times = timer.times[WARMUP:] if len(timer.times) > WARMUP + 5 else timer.times
    return {
        "recipe": recipe, "router": router, "steps": cli.trainer.global_step, "metric": metric,
        "quality": float(test[metric]), "test": {k: float(v) for k, v in test.items() if "/" in k and "routing" not in k},
        "tokens": counter.tokens, "rows_per_token": counter.rows / max(counter.tokens, 1),
        "topk_rows_per_token": counter.pruned_reference / max(counter.tokens, 1),
        "step_ms_median": 1000 * statistics.median(times), "train_s": round(train_s, 1),
    }


def table(rows: list[dict[str, Any]]) -> str:
    out = ["| task (recipe) | router | steps | test quality | expert rows / token | FLOPs skipped vs default | "
           "BEAM: skipped of its top-k | median step (ms) |", "|---|---|---|---|---|---|---|---|"]
    default = {}
    for r in rows:
        default.setdefault(r["recipe"], r)
    for r in rows:
        d = default[r["recipe"]]
        skipped = 1 - r["rows_per_token"] / d["rows_per_token"]
        own = f"{100 * (1 - r['rows_per_token'] / r['topk_rows_per_token']):.1f}%" if r["router"] == "beam" else ""
        out.append(f"| {r['recipe']} | {r['router']}{' (default)' if r is d else ''} | {r['steps']} | "
                   f"{r['metric']} {r['quality']:.4f} | {r['rows_per_token']:.2f} | {100 * skipped:.1f}% | {own} | "
                   f"{r['step_ms_median']:.0f} |")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=["emotion", "pde"], choices=list(TASKS))
    parser.add_argument("--routers", nargs="+", default=None, help="default: the task's default router, beam, "
                        "expert_choice, soft (the first one is the reference of 'skipped vs default')")
    parser.add_argument("--steps", type=int, default=None, help="training steps of every run (default: per task)")
    parser.add_argument("--smoke", action="store_true", help="5 steps, 2 test batches: a check that it runs")
    parser.add_argument("--run_dir", type=Path, default=Path("runs/bench_routers"))
    parser.add_argument("--json", type=Path, default=None, help="write every row here")
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    rows = []
    for task in args.tasks:
        recipe, routers, steps = TASKS[task]
        steps = 5 if args.smoke else args.steps or steps
        for router in args.routers or routers:
            try:
                rows.append(run(recipe, router, steps, args.run_dir, args.smoke))
            except Exception as exc:  # one failing run must not lose the others' numbers; it is reported
                print(f"FAILED {recipe} {router}: {type(exc).__name__}: {exc}", flush=True)
                continue
            print(json.dumps(rows[-1]), flush=True)
            if args.json:
                args.json.parent.mkdir(parents=True, exist_ok=True)
                args.json.write_text(json.dumps(rows, indent=1) + "\n")
    print(f"\n{platform.node()} {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n")
    print(table(rows))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
