"""CPU benchmark of MoELayer (torch backend) against a naive expert loop and an equal-FLOP dense FFN.

Each (shape, method) runs in its own subprocess so that peak memory (growth of the max RSS
during forward+backward) is measured cleanly. Prints a markdown table with ratios.

    python benchmarks/moe_layer.py            # full grid (a few minutes on 2 cores)
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

GRID = [  # (tokens, dim, hidden per expert, E, k), shapes scaled down from real models
    (4096, 512, 1792, 8, 2),  # Mixtral-8x7B ratios (hidden = 3.5 dim, E=8, k=2)
    (4096, 512, 256, 64, 8),  # OLMoE ratios (hidden = dim / 2, E=64, k=8)
    (4096, 512, 128, 64, 8),  # finer experts (hidden = dim / 4): less work per expert
]
QUICK_GRID = [(256, 64, 64, 8, 2), (256, 64, 32, 64, 8)]
METHODS = ("mmoe", "naive_loop", "dense_equal_flops")


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
    return layer if method == "mmoe" else NaiveLoopMoE(layer)


def measure(method: str, T: int, dim: int, hidden: int, E: int, k: int, repeats: int) -> dict:
    """Median forward+backward seconds and peak RSS growth over the built model (MiB).

    Runs inside a fresh process, so the growth of the max RSS is this method's working memory.
    """
    torch.manual_seed(0)
    model = build(method, dim, hidden, E, k)

    def step() -> None:
        x = torch.randn(T, dim, requires_grad=True)  # fresh data every run
        model(x).square().mean().backward()

    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # model built, nothing run yet
    for _ in range(2):
        step()
    model.zero_grad(set_to_none=True)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
        model.zero_grad(set_to_none=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"seconds": statistics.median(times), "peak_mib": (peak - base) / 1024}


def run_child(method: str, shape: tuple, repeats: int) -> dict:
    cmd = [sys.executable, __file__, "--child", json.dumps([method, *shape, repeats])]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small shapes, few repeats")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        method, T, dim, hidden, E, k, repeats = json.loads(args.child)
        print(json.dumps(measure(method, T, dim, hidden, E, k, repeats)))
        return
    grid = QUICK_GRID if args.quick else GRID
    repeats = args.repeats or (3 if args.quick else 7)
    print(f"# MoE layer forward+backward, fp32, CPU ({platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}), median of {repeats}")
    print("| tokens | dim | hidden | E | k | method | fwd+bwd ms | peak MiB | naive / mmoe | mmoe / dense |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for shape in grid:
        res = {m: run_child(m, shape, repeats) for m in METHODS}
        speedup = res["naive_loop"]["seconds"] / res["mmoe"]["seconds"]
        vs_dense = res["mmoe"]["seconds"] / res["dense_equal_flops"]["seconds"]
        for m in METHODS:
            r = res[m]
            ratios = f"{speedup:.2f}x | {vs_dense:.2f}x" if m == "mmoe" else " | "
            print(f"| {' | '.join(map(str, shape))} | {m} | {1e3 * r['seconds']:.1f} | {r['peak_mib']:.0f} | {ratios} |",
                  flush=True)


if __name__ == "__main__":
    main()
