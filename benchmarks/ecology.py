"""Expert ecology E = T·H/(O+B) (issue 36, arXiv 2605.06415) on a synthetic supervised-routing task.

The task: tokens ``x [dim]`` from ``classes`` Gaussian clusters, target ``y = tanh(A_c x)`` with one
random map per class. One :class:`mmoe.MoELayer` (``experts`` experts, top-``k``) predicts ``y``.
The oracle loss (weight O) is the cross-entropy of the class against the router's *group*
log-probabilities, the experts forming ``classes`` equal groups (the PDE family loss in miniature):
it says which group a token belongs to, not which expert inside it, so inside a group the
rich-get-richer dynamics of top-k routing can starve experts. B is the Switch balance weight,
T the router temperature, H the routing-entropy weight set by ``moe.ecology_target`` to hold E.

Per run: dead experts at the end (no token in the last ``dead_window`` training steps), load
imbalance (busiest / mean expert load on held-out tokens), quality (held-out MSE over the target
variance, lower is better). Runs: E swept (B = 0 and B = the recipe's 1e-2), the H = 0 baselines
(E = 0) with and without B, sigmoid routing with aux-free bias balancing; then a resuscitation run
(low E until experts die, then E raised).

    python benchmarks/ecology.py                 # the full sweep, 3 seeds (a few minutes on 2 cores)
    python benchmarks/ecology.py --quick         # smoke run
    python benchmarks/ecology.py --plot out.png  # also draw dead experts against E
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mmoe import MoELayer

E_GRID = (0.05, 0.1, 0.2, 0.5, 1.0, 2.0)
RECIPE_B = 1e-2  # MoESettings.load_balance_weight, the recipes' balance weight
ORACLE = 0.1  # the PDE / restoration recipes' supervised routing weight


@dataclass
class Setup:
    dim: int = 32
    hidden: int = 32
    experts: int = 8
    top_k: int = 1
    classes: int = 4
    batch: int = 256
    steps: int = 1500
    lr: float = 3e-3
    dead_window: int = 50
    temperature: float = 1.0


def make_task(setup: Setup, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Class means ``[C, dim]`` and per-class maps ``[C, dim, dim]`` of one seed."""
    g = torch.Generator().manual_seed(1000 + seed)
    means = 2.0 * torch.randn(setup.classes, setup.dim, generator=g)
    maps = torch.randn(setup.classes, setup.dim, setup.dim, generator=g) / setup.dim**0.5
    return means, maps


def sample(setup: Setup, task: tuple[torch.Tensor, torch.Tensor], n: int, g: torch.Generator):
    means, maps = task
    c = torch.randint(setup.classes, (n,), generator=g)
    x = means[c] + torch.randn(n, setup.dim, generator=g)
    y = torch.tanh(torch.einsum("nd,nod->no", x, maps[c]))
    return x, y, c


def oracle_loss(layer: MoELayer, x: torch.Tensor, c: torch.Tensor, classes: int) -> torch.Tensor:
    """Cross-entropy of the class against the router's group log-probabilities (raw logits)."""
    logits = layer.router.logits(x)  # the raw map, as a task's supervised routing loss sees it
    group_logits = torch.logsumexp(logits.view(x.shape[0], classes, -1), dim=-1)
    return F.cross_entropy(group_logits, c)


def run(setup: Setup, seed: int, *, router: str = "softmax", B: float = 0.0, target: float | None = None,
        schedule: list[tuple[int, float | None]] | None = None, trace_every: int = 0) -> dict:
    """Train one layer; ``schedule`` = [(step, target E), ...] changes the target during the run."""
    torch.manual_seed(seed)
    task = make_task(setup, seed)
    options = {"bias_rate": 1e-3} if router == "sigmoid" else {}
    layer = MoELayer(setup.dim, setup.hidden, setup.experts, setup.top_k, router=router, router_options=options,
                     load_balance_weight=B, z_loss_weight=0.0, backend="torch", dead_window=setup.dead_window,
                     router_temperature=setup.temperature, ecology_target=target, validate_inputs=False)
    layer.oracle_weight = ORACLE
    opt = torch.optim.Adam(layer.parameters(), lr=setup.lr)
    g = torch.Generator().manual_seed(seed)
    trace, changes = [], dict(schedule or [])
    start = time.perf_counter()
    for step in range(setup.steps):
        if step in changes:
            layer.ecology_target = changes[step]
        x, y, c = sample(setup, task, setup.batch, g)
        pred = layer(x)
        loss = F.mse_loss(pred, y) + layer.aux_loss + ORACLE * oracle_loss(layer, x, c, setup.classes)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if trace_every and step % trace_every == 0:
            trace.append((step, layer.ecology, int(layer.stats.dead_experts)))
    seconds = time.perf_counter() - start
    dead = int(layer.stats.dead_experts)
    layer.eval()
    with torch.no_grad():
        x, y, _ = sample(setup, task, 8192, torch.Generator().manual_seed(10_000 + seed))
        mse = float(F.mse_loss(layer(x), y) / y.var())
        load = layer.stats.tokens_per_expert.float()
    return {"dead": dead, "imbalance": float(load.max() / load.mean()), "rel_mse": mse,
            "ecology": layer.ecology if target is not None or schedule else 0.0, "seconds": seconds, "trace": trace}


def summarize(results: list[dict]) -> dict:
    def stat(key: str) -> tuple[float, float]:
        values = [r[key] for r in results]
        return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)

    return {k: stat(k) for k in ("dead", "imbalance", "rel_mse")} | {
        "dead_runs": sum(r["dead"] > 0 for r in results), "runs": len(results),
        "seconds": sum(r["seconds"] for r in results)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="short runs, one seed, three E values")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--plot", default=None, help="write dead experts against E to this PNG")
    parser.add_argument("--json", default=None, help="write all numbers to this JSON file")
    args = parser.parse_args()
    setup = Setup()
    if args.quick:
        setup.steps, setup.dead_window = 200, 20
    if args.steps:
        setup.steps = args.steps
    seeds = range(1 if args.quick else args.seeds)
    grid = (0.05, 0.5, 2.0) if args.quick else E_GRID
    torch.set_num_threads(max(1, torch.get_num_threads()))
    print(f"# expert ecology, synthetic task: {setup.experts} experts top-{setup.top_k}, {setup.classes} classes "
          f"(groups of {setup.experts // setup.classes}), O={ORACLE}, T={setup.temperature}, {setup.steps} steps x "
          f"{setup.batch} tokens, dead window {setup.dead_window}, seeds {len(seeds)}; CPU "
          f"({platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__})")
    print("| routing | B | E | H | dead experts (mean) | runs with dead | busiest/mean load | rel. MSE |")
    print("|---|---|---|---|---|---|---|---|")
    table: list[dict] = []
    configs: list[tuple[str, str, float, float | None]] = []
    for B in (0.0, RECIPE_B):
        configs.append(("softmax", f"{B:g}", B, None))
        configs += [("softmax", f"{B:g}", B, e) for e in grid]
    configs.append(("sigmoid + aux-free bias", "0", 0.0, None))
    for name, B_text, B, target in configs:
        router = "sigmoid" if name.startswith("sigmoid") else "softmax"
        s = summarize([run(setup, seed, router=router, B=B, target=target) for seed in seeds])
        H = 0.0 if target is None else target * (ORACLE + B) / setup.temperature
        row = {"routing": name, "B": B, "E": target or 0.0, "H": H, **s}
        table.append(row)
        print(f"| {name} | {B_text} | {target or 0:g} | {H:.4g} | {s['dead'][0]:.2f} ± {s['dead'][1]:.2f} | "
              f"{s['dead_runs']}/{s['runs']} | {s['imbalance'][0]:.2f} ± {s['imbalance'][1]:.2f} | "
              f"{s['rel_mse'][0]:.4f} ± {s['rel_mse'][1]:.4f} |", flush=True)

    # resuscitation: B = 0 and a low E until experts die, then E raised
    low, high = 0.05, 2.0
    switch = setup.steps
    res_setup = Setup(**{**setup.__dict__, "steps": 2 * setup.steps})
    print(f"\n# resuscitation: B=0, E={low} for {switch} steps, then E={high} for {switch} steps "
          f"(dead experts every {max(1, switch // 10)} steps)")
    print("| seed | dead at switch | dead at end | steps after the switch until none dead | rel. MSE at end |")
    print("|---|---|---|---|---|")
    revivals = []
    for seed in seeds:
        r = run(res_setup, seed, B=0.0, target=low, schedule=[(switch, high)], trace_every=1)
        at_switch = next(d for s, _, d in r["trace"] if s == switch - 1)
        after = [s - switch for s, _, d in r["trace"] if s >= switch and d == 0]
        revived = after[0] if after and at_switch else ("-" if not at_switch else "never")
        revivals.append({"seed": seed, "dead_at_switch": at_switch, "dead_at_end": r["dead"], "revived_after": revived,
                         "rel_mse": r["rel_mse"],
                         "trace": r["trace"][:: max(1, switch // 10)]})
        print(f"| {seed} | {at_switch} | {r['dead']} | {revived} | {r['rel_mse']:.4f} |", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"setup": setup.__dict__, "sweep": table, "resuscitation": revivals}, f, indent=1)
    if args.plot:
        plot(table, args.plot)


def plot(table: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for B in sorted({r["B"] for r in table if r["routing"] == "softmax"}):
        rows = [r for r in table if r["routing"] == "softmax" and r["B"] == B and r["E"] > 0]
        es = [r["E"] for r in rows]
        axes[0].errorbar(es, [r["dead"][0] for r in rows], yerr=[r["dead"][1] for r in rows], marker="o",
                         capsize=3, label=f"B={B:g}")
        axes[1].errorbar(es, [r["rel_mse"][0] for r in rows], yerr=[r["rel_mse"][1] for r in rows], marker="o",
                         capsize=3, label=f"B={B:g}")
    for ax, label in zip(axes, ("dead experts (of 8)", "held-out MSE / var(y)")):
        ax.set_xscale("log")
        ax.axvline(0.5, color="gray", ls=":", lw=1)
        ax.set(xlabel="E = T·H/(O+B)", ylabel=label)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


if __name__ == "__main__":
    main()
