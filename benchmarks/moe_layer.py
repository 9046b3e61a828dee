"""CPU benchmark of MoELayer (torch backend) against a naive expert loop and an equal-FLOP dense FFN.

Methods: ``mmoe`` (the torch backend: :mod:`mmoe.kernels.cpu_dispatch`), ``mmoe_reference`` (the same
layer on the reference ops of :mod:`mmoe.kernels.reference`: the path before the CPU fast path),
``naive_loop`` (Mixtral-style loop over experts) and ``dense_equal_flops`` (SwiGLU FFN of width
``k * hidden``). Each (shape, method) runs in its own subprocess, in the same order for every
shape, so that peak memory (growth of the max RSS during forward+backward) is measured cleanly;
forward+backward (training) and forward-only under ``torch.inference_mode`` (inference) are both
timed, median of ``--repeats`` after 2 warm-ups, fresh random input every run.

    python benchmarks/moe_layer.py            # the issue-34 grid (about 15 minutes on 2 cores)
    python benchmarks/moe_layer.py --quick    # small smoke run
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

from mmoe import MoELayer

# (tokens, dim, hidden per expert, E, k): E=64, k=8 (OLMoE-like) over hidden, dim and tokens,
# then E=8, k=2 at Mixtral-8x7B ratios (hidden = 3.5 dim)
GRID = [(T, D, H, 64, 8) for H in (128, 256) for D in (256, 512) for T in (512, 2048, 8192)] + [
    (2048, 256, 896, 8, 2),
    (2048, 512, 1792, 8, 2),
]
QUICK_GRID = [(256, 64, 64, 8, 2), (256, 64, 32, 64, 8)]
# (dim, hidden, E, k) of each task's shipped MoE recipe (configs/<task>/<recipe>.yaml), run with the
# softmax router (the recipes' own routers, e.g. nested or task-routed, need their task's inputs)
TASK_DIMS = {
    "anomaly/default": (64, 128, 8, 1),
    "emotion/mister_e": (64, 128, 8, 2),
    "pde/nested_moe_2d": (64, 128, 16, 1),
    "separation/tfmoe_8k": (32, 48, 8, 2),
    "tracking/unified": (128, 256, 4, 1),
    "restoration/all_in_one_3": (64, 128, 9, 1),
}
METHODS = ("mmoe", "mmoe_reference", "naive_loop", "dense_equal_flops")


class NaiveLoopMoE(nn.Module):
    """Mixtral-style reference: top-k routing, then a Python loop over experts with index gathers."""

    def __init__(self, layer: MoELayer) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        layer = self.layer
        probs = torch.softmax(x @ layer.router.weight.t(), dim=-1)
        weights, experts = torch.topk(probs, layer.top_k, dim=-1)
        y = torch.zeros_like(x)
        w_in, w_out = layer.experts.w_in, layer.experts.w_out
        for e in range(layer.num_experts):
            token, slot = torch.where(experts == e)
            if token.numel() == 0:
                continue
            gate, up = (x[token] @ w_in[e]).chunk(2, dim=-1)
            out = (F.silu(gate) * up) @ w_out[e]
            y.index_add_(0, token, out * weights[token, slot, None])
        return y


class DenseFFN(nn.Module):
    """SwiGLU FFN with hidden width k * hidden: the active FLOPs of one MoE token."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.w_in = nn.Parameter(torch.randn(dim, 2 * hidden) * dim**-0.5)
        self.w_out = nn.Parameter(torch.randn(hidden, dim) * hidden**-0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = (x @ self.w_in).chunk(2, dim=-1)
        return (F.silu(gate) * up) @ self.w_out


def build(method: str, dim: int, hidden: int, E: int, k: int) -> nn.Module:
    if method == "dense_equal_flops":
        return DenseFFN(dim, k * hidden)
    layer = MoELayer(dim, hidden, E, k, router="softmax", backend="torch", validate_inputs=False)
    if method == "mmoe_reference":  # the torch backend as it was: the reference ops
        from mmoe.kernels import reference

        from mmoe import moe_layer as layer_module

        layer_module.backend_ops = lambda backend, device: reference
    return NaiveLoopMoE(layer) if method == "naive_loop" else layer


def measure(method: str, T: int, dim: int, hidden: int, E: int, k: int, repeats: int) -> dict:
    """Median forward+backward and forward-only seconds, and peak RSS growth over the built model (MiB).

    Runs inside a fresh process, so the growth of the max RSS during the forward+backward runs
    (measured before the forward-only runs) is this method's training working memory.
    """
    torch.manual_seed(0)
    model = build(method, dim, hidden, E, k)

    def train_step() -> None:
        x = torch.randn(T, dim, requires_grad=True)  # fresh data every run
        model(x).square().mean().backward()

    def infer_step() -> None:
        x = torch.randn(T, dim)
        with torch.inference_mode():
            model(x)

    def median_seconds(step) -> float:
        for _ in range(2):
            step()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            step()
            times.append(time.perf_counter() - start)
            model.zero_grad(set_to_none=True)
        return statistics.median(times)

    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # model built, nothing run yet
    train = median_seconds(train_step)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    model.zero_grad(set_to_none=True)
    infer = median_seconds(infer_step)
    return {"seconds": train, "forward_seconds": infer, "peak_mib": (peak - base) / 1024}


def run_child(method: str, shape: tuple, repeats: int) -> dict:
    cmd = [sys.executable, __file__, "--child", json.dumps([method, *shape, repeats])]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small shapes, few repeats")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--task_dims", type=int, nargs="+", metavar="TOKENS",
                        help="instead of the grid: each task recipe's MoE dims (TASK_DIMS) at these token counts")
    parser.add_argument("--shapes", type=int, nargs="+", help="indices into the grid to run (default: all)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        method, T, dim, hidden, E, k, repeats = json.loads(args.child)
        print(json.dumps(measure(method, T, dim, hidden, E, k, repeats)))
        return
    grid = QUICK_GRID if args.quick else GRID
    if args.task_dims:
        grid = [(T, *dims) for dims in TASK_DIMS.values() for T in args.task_dims]
    if args.shapes:
        grid = [grid[i] for i in args.shapes]
    repeats = args.repeats or (3 if args.quick else 7)
    print(f"# MoE layer, fp32, CPU ({platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}), median of {repeats}")
    print("| tokens | dim | hidden | E | k | method | fwd+bwd ms | fwd ms | peak MiB | naive / mmoe fwd+bwd | "
          "mmoe / dense fwd+bwd | naive / mmoe fwd | mmoe / dense fwd | before / after fwd+bwd | before / after fwd |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for shape in grid:
        res = {m: run_child(m, shape, repeats) for m in METHODS}
        mo, ref, naive, dense = (res[m] for m in METHODS)
        for m in METHODS:
            r = res[m]
            if m == "mmoe":
                ratios = [naive["seconds"] / mo["seconds"], mo["seconds"] / dense["seconds"],
                          naive["forward_seconds"] / mo["forward_seconds"],
                          mo["forward_seconds"] / dense["forward_seconds"],
                          ref["seconds"] / mo["seconds"], ref["forward_seconds"] / mo["forward_seconds"]]
                cells = " | ".join(f"{v:.2f}x" for v in ratios)
            elif m == "mmoe_reference":
                cells = " | ".join([f"{naive['seconds'] / r['seconds']:.2f}x", f"{r['seconds'] / dense['seconds']:.2f}x",
                                    f"{naive['forward_seconds'] / r['forward_seconds']:.2f}x",
                                    f"{r['forward_seconds'] / dense['forward_seconds']:.2f}x", "", ""])
            else:
                cells = " | " * 5
            print(f"| {' | '.join(map(str, shape))} | {m} | {1e3 * r['seconds']:.1f} | {1e3 * r['forward_seconds']:.1f} "
                  f"| {r['peak_mib']:.0f} | {cells} |", flush=True)


if __name__ == "__main__":
    main()
