"""Expert parallelism on this machine: throughput at 1 and 2 ranks, and the straggler experiment.

Part 1 (throughput): one MoE layer (dim 128, hidden 256, E=8, top-2, softmax, dropless),
forward + backward on ``--tokens`` tokens per rank; 1 rank is the plain single-process layer,
2 ranks are :func:`mmoe.parallel.shard_experts` over gloo (one thread per rank). Reports global
tokens/s and the bytes each rank sends to the other per step (token rows and outputs, forward
and backward; routing metadata separately).

Part 2 (straggler): a small vision-language-like classification task on 2 EP ranks: each sample
has 48 near-duplicate "image" tokens (modality 0, uninformative, they all route alike: a hot
expert) and 16 "text" tokens (modality 1) that carry the class. The same model is trained for
``--steps`` steps with dropless routing, static capacity and MACS at the same capacity factor;
reported: the step time (the ranks synchronise in the all-to-all, so it is the slowest rank's),
the computed expert rows per rank (max and min: the straggler's load), the dropped pairs per
modality, and the held-out accuracy each keeps.

    python benchmarks/expert_parallel.py            # both parts, ~3-4 min on 2 CPU cores
    python benchmarks/expert_parallel.py --smoke    # seconds, for the tests

On GPUs (NCCL): the same code runs with ``--backend nccl --device cuda`` under torchrun, one
process per GPU (``torchrun --nproc_per_node 8 benchmarks/expert_parallel.py --backend nccl
--device cuda --launcher torchrun``); the MoE layer then uses the triton backend (``auto``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from mmoe import MoELayer
from mmoe.parallel import expert_parallel_layers, shard_experts


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------ part 1: throughput
def throughput_layer(device: str) -> MoELayer:
    torch.manual_seed(0)
    return MoELayer(128, 256, 8, 2, router="softmax", backend="auto").to(device)


def time_layer(layer: MoELayer, tokens: int, steps: int, device: str) -> tuple[float, dict[str, int]]:
    x = torch.randn(tokens // 64, 64, 128, device=device)
    ep = layer.expert_parallel
    times = []
    for i in range(steps + 2):
        if ep is not None:
            ep.traffic.update(tokens=0, routing=0)
            dist.barrier()
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        xi = x.clone().requires_grad_()
        y = layer(xi)
        (y.square().mean() + layer.aux_loss).backward()
        if device == "cuda":
            torch.cuda.synchronize()
        if i >= 2:
            times.append(time.perf_counter() - t0)
    traffic = dict(ep.traffic) if ep is not None else {"tokens": 0, "routing": 0}
    return statistics.median(times), traffic


# ------------------------------------------------------------------ part 2: straggler
IMG, TXT, CLASSES, DIN = 48, 16, 4, 32


def make_data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1234)
    class_means = torch.randn(CLASSES, DIN, generator=g)
    prototypes = torch.randn(2, DIN, generator=g) * 2
    g.manual_seed(seed)
    y = torch.randint(0, CLASSES, (n,), generator=g)
    img = prototypes[torch.randint(0, 2, (n, 1), generator=g)] + 0.05 * torch.randn(n, IMG, DIN, generator=g)
    txt = class_means[y].unsqueeze(1) + 1.5 * torch.randn(n, TXT, DIN, generator=g)
    x = torch.cat([img, txt], 1)
    mod = torch.cat([torch.zeros(n, IMG, dtype=torch.long), torch.ones(n, TXT, dtype=torch.long)], 1)
    return x, mod, y


class Classifier(nn.Module):
    def __init__(self, capacity_factor: float | None, mode: str, dim: int = 64, hidden: int = 256) -> None:
        super().__init__()
        self.embed = nn.Linear(DIN, dim)
        self.modality = nn.Embedding(2, dim)
        self.moe = MoELayer(dim, hidden, 8, 2, router="softmax", capacity_factor=capacity_factor,
                            capacity_mode=mode, num_modalities=2, backend="auto")
        self.head = nn.Linear(dim, CLASSES)

    def forward(self, x: torch.Tensor, mod: torch.Tensor) -> torch.Tensor:
        h = self.embed(x) + self.modality(mod)
        h = h + self.moe(h, mod)
        return self.head(h.mean(1))


def straggler_run(mode: str, steps: int, batch: int, rank: int, world: int, device: str) -> dict[str, float]:
    cf, cmode = {"dropless": (None, "static"), "static": (1.0, "static"), "macs": (1.0, "macs")}[mode]
    torch.manual_seed(0)
    model = Classifier(cf, cmode).to(device)
    shard_experts(model)
    replicated = [p for n, p in model.named_parameters() if ".experts." not in n]
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    x, mod, y = make_data(batch * world * steps, seed=1)
    step_times, rows, dropped = [], [], torch.zeros(2)
    for s in range(steps):
        lo = (s * world + rank) * batch
        xb, mb, yb = x[lo:lo + batch].to(device), mod[lo:lo + batch].to(device), y[lo:lo + batch].to(device)
        dist.barrier()
        t0 = time.perf_counter()
        loss = nn.functional.cross_entropy(model(xb, mb), yb) + model.moe.aux_loss
        opt.zero_grad()
        loss.backward()
        for p in replicated:  # what DDP does for the replicated parameters
            dist.all_reduce(p.grad)
            p.grad /= world
        opt.step()
        if device == "cuda":
            torch.cuda.synchronize()
        step_times.append(time.perf_counter() - t0)
        st = model.moe.stats
        mine = st.tokens_per_expert.view(world, -1)[rank].sum()  # rows computed on this rank
        rows.append(float(mine))
        dropped += st.dropped_per_modality.float().cpu()
    # held-out accuracy, each rank half of the test set, same capacity policy
    xt, mt, yt = make_data(512, seed=2)
    part = slice(rank * 512 // world, (rank + 1) * 512 // world)
    model.eval()
    with torch.no_grad():
        correct = (model(xt[part].to(device), mt[part].to(device)).argmax(-1) == yt[part].to(device)).sum().float()
    dist.all_reduce(correct)
    t = torch.tensor([statistics.median(step_times[2:])], device=device)
    gathered_rows = [torch.zeros(1, device=device) for _ in range(world)]
    dist.all_gather(gathered_rows, torch.tensor([statistics.mean(rows)], device=device))
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    pairs = batch * world * (IMG + TXT) * 2  # per step, both modalities
    return {"step_ms": float(t) * 1e3, "rows_max": max(float(r) for r in gathered_rows),
            "rows_min": min(float(r) for r in gathered_rows), "accuracy": float(correct) / 512,
            "drop_image": float(dropped[0]) / (steps * batch * world * IMG * 2),
            "drop_text": float(dropped[1]) / (steps * batch * world * TXT * 2), "pairs_per_step": pairs}


def worker(rank: int, world: int, port: int, args: argparse.Namespace, out: str) -> None:
    torch.set_num_threads(1)
    if args.launcher == "spawn":
        dist.init_process_group(args.backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    else:
        dist.init_process_group(args.backend)
    device = args.device
    if device == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", rank)))
    result: dict = {}
    layer = throughput_layer(device)
    shard_experts(layer)
    sec, traffic = time_layer(layer, args.tokens, args.reps, device)
    result["throughput"] = {"ranks": world, "tokens_per_s": args.tokens * world / sec, "step_ms": sec * 1e3,
                            "token_bytes_per_step": 2 * traffic["tokens"], "routing_bytes_per_step": traffic["routing"]}
    assert expert_parallel_layers(layer)
    result["straggler"] = {m: straggler_run(m, args.steps, args.batch, rank, world, device)
                           for m in ("dropless", "static", "macs")}
    if rank == 0:
        Path(out).write_text(json.dumps(result))
    dist.destroy_process_group()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokens", type=int, default=4096, help="tokens per rank in the throughput part")
    ap.add_argument("--reps", type=int, default=8)
    ap.add_argument("--steps", type=int, default=150, help="training steps per capacity policy")
    ap.add_argument("--batch", type=int, default=16, help="samples per rank per step")
    ap.add_argument("--world", type=int, default=2)
    ap.add_argument("--backend", default="gloo", choices=["gloo", "nccl"])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--launcher", default="spawn", choices=["spawn", "torchrun"])
    ap.add_argument("--smoke", action="store_true", help="tiny sizes: checks that it runs")
    args = ap.parse_args()
    if args.smoke:
        args.tokens, args.reps, args.steps, args.batch = 256, 1, 3, 2
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    out = Path(tempfile.mkdtemp()) / "ep.json"
    if args.launcher == "torchrun":
        worker(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), 0, args, str(out))
        if int(os.environ["RANK"]) != 0:
            return
        world = int(os.environ["WORLD_SIZE"])
    else:
        world = args.world
        mp.spawn(worker, args=(world, free_port(), args, str(out)), nprocs=world, join=True)
    res = json.loads(out.read_text())

    torch.set_num_threads(1)
    one, _ = time_layer(throughput_layer(args.device), args.tokens, args.reps, args.device)
    print(f"# expert parallel, {world} ranks ({args.backend}, {args.device}, 1 thread per rank); "
          f"torch {torch.__version__}, python {sys.version.split()[0]}")
    print("\n## Throughput: one MoE layer, dim 128, hidden 256, E=8, top-2, dropless, forward+backward")
    print("| ranks | tokens per rank | global tokens/s | step ms | token all-to-all bytes sent per rank per step "
          "(fwd+bwd) | routing bytes per step |")
    print("|---|---|---|---|---|---|")
    print(f"| 1 | {args.tokens} | {args.tokens / one:,.0f} | {one * 1e3:.1f} | 0 | 0 |")
    t = res["throughput"]
    print(f"| {world} | {args.tokens} | {t['tokens_per_s']:,.0f} | {t['step_ms']:.1f} | "
          f"{t['token_bytes_per_step']:,} | {t['routing_bytes_per_step']:,} |")
    print(f"\n## Straggler: hot expert from redundant image tokens, {world} EP ranks, {args.steps} steps, "
          f"capacity factor 1.0 for static and MACS")
    print("| policy | step ms (slowest rank) | expert rows per step, busiest rank | least busy rank | "
          "image pairs dropped | text pairs dropped | held-out accuracy |")
    print("|---|---|---|---|---|---|---|")
    for mode, r in res["straggler"].items():
        print(f"| {mode} | {r['step_ms']:.1f} | {r['rows_max']:.0f} | {r['rows_min']:.0f} | "
              f"{100 * r['drop_image']:.1f}% | {100 * r['drop_text']:.1f}% | {100 * r['accuracy']:.1f}% |")
    assert all(math.isfinite(r["accuracy"]) for r in res["straggler"].values())


if __name__ == "__main__":
    main()
