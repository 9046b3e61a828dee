"""MACS where the paper finds its gain (issue 35): a small vision-language MoE model, many
redundant image-patch tokens beside a few decisive question tokens.

    python benchmarks/vlm_macs.py                 # render, train (fixed steps), evaluate every policy
    python benchmarks/vlm_macs.py --load runs/vlm_macs/model.pt   # evaluate a trained model again
    python benchmarks/vlm_macs.py --smoke         # tiny data, 10 steps, one cf (a check that it runs)
    python benchmarks/vlm_macs.py --ep-timing runs/vlm_macs/model.pt   # 2 gloo processes, step times

Data (rendered here, offline, from a seed): 32x32 RGB scenes of 2-5 objects (square, circle,
triangle; red, green, blue, yellow) on a dark noisy background, placed in distinct cells of a 4x4
grid; a question of 3-6 words (+ a CLS token) of five kinds: "how many <colour>", "how many
<shape>", "what colour <shape>" (the shape occurs once), "what shape <colour>" (the colour occurs
once), "is <colour shape> left <colour shape>"; one answer out of 15 (counts 0-5, 4 colours, 3
shapes, yes/no). Every question needs both the image and the words. Image: 4x4 patches, 64
tokens; text 4-7 real tokens (padding masked, never routed): ~11x more visual than text tokens.

Model: linear patch embedding and word embedding -> ``MultimodalMoEBackbone`` (modalities
``["text", "image"]``, DEPTH blocks of [self-attention -> MoE FFN], E experts, top-k softmax
routing per token, the usual Switch balance loss 1e-2 and z-loss 1e-3, dropless while training)
-> the CLS token -> linear head. AdamW, cosine schedule, a fixed number of steps.

Evaluation, training-free, on the held-out split in batches of EVAL_BATCH scenes, every MoE layer
set to each policy: dropless; ``static`` (CAI-MoE: C = ceil(cf * k * T / E), lowest gates drop);
``macs_paper`` (the MACS paper's rule, :mod:`mmoe.capacity`); ``macs`` (today's fair queueing);
``macs_output`` (fair queueing valued by gate x expert-output norm), for each cf of the grid.
Reported per setting: accuracy; kept pairs at the busiest expert per layer (mean over batches: the
expert-parallel straggler, exact); simulated expert-parallel layer time for 2/4/8 ranks; dropped
share per modality. Cost model of the simulation: rank r holds experts [r*E/W, (r+1)*E/W); a
layer's expert time is ``c * max_r (kept pairs of rank r's experts)``, ``c`` the measured time of one
pair's expert FFN on this machine (one thread); summed over the MoE layers, mean over batches.
Router, attention, all-to-all and the capacity decision are not in the model (stated).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mmoe.backbone import BlockSpec, MultimodalMoEBackbone
from mmoe.moe_layer import MoELayer

ROOT = Path(__file__).resolve().parents[1]

# ------------------------------------------------------------------ the shipped configuration
SEED = 0
TRAIN_SCENES, TEST_SCENES = 24000, 2048
IMAGE, PATCH = 32, 4
DIM, DEPTH, HEADS, HIDDEN, EXPERTS, TOP_K = 64, 3, 4, 128, 8, 2
BATCH, STEPS, LR = 64, 7000, 2e-3
EVAL_BATCH = 32
FACTORS = (2.0, 1.5, 1.25, 1.0, 0.75, 0.5, 0.35)
POLICIES = ("static", "macs_paper", "macs", "macs_output")
RANKS = (2, 4, 8)

COLOURS = {"red": (0.95, 0.15, 0.1), "green": (0.1, 0.85, 0.2), "blue": (0.15, 0.3, 1.0), "yellow": (0.95, 0.9, 0.1)}
SHAPES = ("square", "circle", "triangle")
WORDS = ["<pad>", "<cls>", "how", "many", "what", "colour", "shape", "is", "left", *COLOURS, *SHAPES]
VOCAB = {w: i for i, w in enumerate(WORDS)}
ANSWERS = [str(n) for n in range(6)] + list(COLOURS) + list(SHAPES) + ["yes", "no"]
TEXT_LEN = 7  # <cls> + at most 6 words


# ------------------------------------------------------------------ rendering
def draw(img: np.ndarray, shape: str, colour: tuple[float, ...], cy: float, cx: float, r: float) -> None:
    yy, xx = np.mgrid[0:IMAGE, 0:IMAGE].astype(np.float32) + 0.5
    dy, dx = yy - cy, xx - cx
    if shape == "square":
        m = (np.abs(dy) <= r * 0.85) & (np.abs(dx) <= r * 0.85)
    elif shape == "circle":
        m = dy ** 2 + dx ** 2 <= r ** 2
    else:  # triangle, apex up
        m = (dy >= -r) & (dy <= r) & (np.abs(dx) <= (dy + r) / 2)
    img[m] = colour


def question(rng: np.random.Generator, objs: list[tuple[str, str, int, int]]) -> tuple[list[str], str]:
    """A question about ``objs`` ((colour, shape, row, col) each) and its answer."""
    colours = [o[0] for o in objs]
    shapes = [o[1] for o in objs]
    kinds = ["count_colour", "count_shape"]
    once_shape = [s for s in SHAPES if shapes.count(s) == 1]
    once_colour = [c for c in COLOURS if colours.count(c) == 1]
    unique = [o for o in objs if sum(p[0] == o[0] and p[1] == o[1] for p in objs) == 1]
    pairs = [(a, b) for a in unique for b in unique if a[3] != b[3]]
    kinds += ["colour_of"] * bool(once_shape) + ["shape_of"] * bool(once_colour) + ["left_of"] * 2 * bool(pairs)
    kind = kinds[rng.integers(len(kinds))]
    if kind == "count_colour":
        c = list(COLOURS)[rng.integers(len(COLOURS))]
        return ["how", "many", c], str(colours.count(c))
    if kind == "count_shape":
        s = SHAPES[rng.integers(len(SHAPES))]
        return ["how", "many", s], str(shapes.count(s))
    if kind == "colour_of":
        s = once_shape[rng.integers(len(once_shape))]
        return ["what", "colour", s], colours[shapes.index(s)]
    if kind == "shape_of":
        c = once_colour[rng.integers(len(once_colour))]
        return ["what", "shape", c], shapes[colours.index(c)]
    a, b = pairs[rng.integers(len(pairs))]
    return ["is", a[0], a[1], "left", b[0], b[1]], "yes" if a[3] < b[3] else "no"


def render(n: int, seed: int) -> dict[str, torch.Tensor]:
    """``n`` scenes: patches ``[n, 64, 48]``, text ids ``[n, 7]``, text mask ``[n, 7]``, answers ``[n]``."""
    rng = np.random.default_rng(seed)
    images = np.empty((n, IMAGE, IMAGE, 3), dtype=np.float32)
    text = np.zeros((n, TEXT_LEN), dtype=np.int64)
    answer = np.empty(n, dtype=np.int64)
    cell = IMAGE // 4
    for i in range(n):
        img = 0.08 + rng.normal(0, 0.02, (IMAGE, IMAGE, 3)).astype(np.float32)
        count = int(rng.integers(2, 6))
        cells = rng.choice(16, size=count, replace=False)
        objs = []
        for c in cells:
            colour = list(COLOURS)[rng.integers(len(COLOURS))]
            shape = SHAPES[rng.integers(len(SHAPES))]
            row, col = divmod(int(c), 4)
            shade = np.array(COLOURS[colour]) * rng.uniform(0.85, 1.0)
            draw(img, shape, tuple(shade), row * cell + cell / 2 + rng.uniform(-0.8, 0.8),
                 col * cell + cell / 2 + rng.uniform(-0.8, 0.8), rng.uniform(2.6, 3.4))
            objs.append((colour, shape, row, col))
        words, ans = question(rng, objs)
        ids = [VOCAB["<cls>"]] + [VOCAB[w] for w in words]
        text[i, :len(ids)] = ids
        answer[i] = ANSWERS.index(ans)
        images[i] = np.clip(img, 0, 1)
    g = IMAGE // PATCH
    patches = images.reshape(n, g, PATCH, g, PATCH, 3).transpose(0, 1, 3, 2, 4, 5).reshape(n, g * g, -1)
    t = torch.from_numpy(text)
    return {"patches": torch.from_numpy(patches), "text": t, "text_mask": t != VOCAB["<pad>"],
            "answer": torch.from_numpy(answer)}


# ------------------------------------------------------------------ model
class TinyVLM(nn.Module):
    """Patch and word embeddings -> multimodal MoE backbone -> CLS -> answer logits."""

    def __init__(self) -> None:
        super().__init__()
        self.patch = nn.Linear(PATCH * PATCH * 3, DIM)
        self.word = nn.Embedding(len(WORDS), DIM)
        spec = BlockSpec(mixer="attention", mixer_options={"num_heads": HEADS}, hidden_dim=HIDDEN,
                         num_experts=EXPERTS, top_k=TOP_K, capacity_factor=None, backend="torch")
        self.backbone = MultimodalMoEBackbone(["text", "image"], DIM, blocks=[spec] * DEPTH)
        self.head = nn.Linear(DIM, len(ANSWERS))

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        tokens = {"text": self.word(batch["text"]), "image": self.patch(batch["patches"])}
        mask = {"text": batch["text_mask"], "image": torch.ones(batch["patches"].shape[:2], dtype=torch.bool)}
        out = self.backbone(tokens, mask=mask)
        return self.head(out["text"][:, 0])

    def moe_layers(self) -> list[MoELayer]:
        return [m for m in self.modules() if isinstance(m, MoELayer)]


def subset(data: dict[str, torch.Tensor], idx: torch.Tensor | slice) -> dict[str, torch.Tensor]:
    return {k: v[idx] for k, v in data.items()}


def train(model: TinyVLM, data: dict[str, torch.Tensor], steps: int, log_every: int = 250) -> dict:
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.01)
    warm = max(1, steps // 20)  # linear warm-up, then cosine to 0
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: min(1.0, (i + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(i, steps) / steps)))
    gen = torch.Generator().manual_seed(SEED)
    n = data["answer"].shape[0]
    model.train()
    start = time.perf_counter()
    for step in range(steps):
        idx = torch.randint(0, n, (BATCH,), generator=gen)
        batch = subset(data, idx)
        logits = model(batch)
        loss = F.cross_entropy(logits, batch["answer"])
        aux = sum(m.aux_loss for m in model.moe_layers())
        opt.zero_grad(set_to_none=True)
        (loss + aux).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % log_every == 0 or step == steps - 1:
            acc = float((logits.argmax(-1) == batch["answer"]).float().mean())
            print(f"step {step:5d}  loss {float(loss.detach()):.3f}  aux {float(aux.detach()):.4f}  batch acc {acc:.3f}  "
                  f"{time.perf_counter() - start:.0f}s", flush=True)
    return {"train_seconds": time.perf_counter() - start, "steps": steps}


# ------------------------------------------------------------------ evaluation
@dataclass
class Setting:
    mode: str
    factor: float | None

    @property
    def name(self) -> str:
        return "dropless" if self.factor is None else f"{self.mode} {self.factor}"


def set_policy(model: TinyVLM, setting: Setting) -> None:
    for m in model.moe_layers():
        m.capacity_factor = setting.factor
        m.capacity_mode = "static" if setting.factor is None else setting.mode


@torch.no_grad()
def evaluate(model: TinyVLM, data: dict[str, torch.Tensor], setting: Setting, pair_cost_us: float) -> dict:
    set_policy(model, setting)
    model.eval()
    layers = model.moe_layers()
    L, E = len(layers), EXPERTS
    n = data["answer"].shape[0]
    correct = 0
    busiest = torch.zeros(L)
    routed_max_over_mean = torch.zeros(L)
    per_mod_max_over_mean = torch.zeros(L, 2)
    rank_time = {w: 0.0 for w in RANKS}
    dropped = torch.zeros(2)
    routed = torch.zeros(2)
    batches = 0
    start = time.perf_counter()
    for lo in range(0, n, EVAL_BATCH):
        batch = subset(data, slice(lo, lo + EVAL_BATCH))
        correct += int((model(batch).argmax(-1) == batch["answer"]).sum())
        batches += 1
        for i, m in enumerate(layers):
            s = m.stats
            kept = s.tokens_per_expert.float()
            busiest[i] += float(kept.max())
            r = s.routed_per_expert.float()
            routed_max_over_mean[i] += float(r.max() / r.mean().clamp_min(1e-9))
            pm = s.tokens_per_expert_per_modality.float()
            if setting.factor is None:  # dropless: kept = routed, per modality
                per_mod_max_over_mean[i] += pm.max(1).values / pm.mean(1).clamp_min(1e-9)
            for w in RANKS:
                rank_time[w] += float(kept.view(w, E // w).sum(1).max())
            dropped += s.dropped_per_modality.float()
            routed += s.tokens_per_expert_per_modality.float().sum(1) + s.dropped_per_modality.float()
    seconds = time.perf_counter() - start
    out = {"setting": setting.name, "mode": setting.mode if setting.factor is not None else "dropless",
           "cf": setting.factor, "accuracy": correct / n,
           "busiest_per_layer": (busiest / batches).tolist(),
           "busiest_sum": float(busiest.sum() / batches),
           "routed_max_over_mean_per_layer": (routed_max_over_mean / batches).tolist(),
           "dropped_text": float(dropped[0] / routed[0].clamp_min(1)),
           "dropped_image": float(dropped[1] / routed[1].clamp_min(1)),
           "eval_seconds": seconds}
    for w in RANKS:
        out[f"sim_ep{w}_pairs"] = rank_time[w] / batches
        out[f"sim_ep{w}_us"] = rank_time[w] / batches * pair_cost_us
    if setting.factor is None:
        out["modality_max_over_mean_per_layer"] = (per_mod_max_over_mean / batches).tolist()
    return out


def pair_cost_us() -> float:
    """Measured time of one pair's expert FFN (SwiGLU, DIM -> HIDDEN -> DIM), microseconds, one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    x = torch.randn(4096, DIM)
    w_in, w_out = torch.randn(DIM, 2 * HIDDEN) * 0.1, torch.randn(HIDDEN, DIM) * 0.1
    best = math.inf
    for _ in range(20):
        t0 = time.perf_counter()
        h = x @ w_in
        (F.silu(h[:, :HIDDEN]) * h[:, HIDDEN:]) @ w_out
        best = min(best, time.perf_counter() - t0)
    torch.set_num_threads(threads)
    return best / x.shape[0] * 1e6


EP_SETTINGS = (Setting("dropless", None), Setting("static", 0.5), Setting("macs_paper", 0.5), Setting("macs", 0.5),
               Setting("static", 1.0), Setting("macs_paper", 1.0))


def ep_worker(rank: int, world: int, port: int, state_path: str, out: str, batches: int) -> None:
    """One expert-parallel rank: the trained model with its experts sharded; each global batch of
    EVAL_BATCH scenes is split in rank order (so capacity is decided as for the one-process batch)."""
    import os

    import torch.distributed as dist

    from mmoe.parallel import shard_experts

    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    model = TinyVLM()
    model.load_state_dict(torch.load(state_path, weights_only=True))
    shard_experts(model)
    model.eval()
    data = render(batches * EVAL_BATCH, SEED + 1)  # the first scenes of the held-out split
    per = EVAL_BATCH // world
    results = {}
    for setting in EP_SETTINGS:
        set_policy(model, setting)
        times, correct = [], 0
        with torch.no_grad():
            for b in range(-2, batches):  # two warm-up batches
                lo = max(b, 0) * EVAL_BATCH + rank * per
                batch = subset(data, slice(lo, lo + per))
                dist.barrier()
                t0 = time.perf_counter()
                logits = model(batch)
                dist.barrier()  # the step ends when the slowest rank is done
                if b >= 0:
                    times.append(time.perf_counter() - t0)
                    correct += int((logits.argmax(-1) == batch["answer"]).sum())
        total = torch.tensor([correct])
        dist.all_reduce(total)
        results[setting.name] = {"step_ms_median": 1e3 * sorted(times)[len(times) // 2],
                                 "step_ms_mean": 1e3 * sum(times) / len(times),
                                 "accuracy": int(total) / (batches * EVAL_BATCH)}
    if rank == 0:
        Path(out).write_text(json.dumps(results, indent=1))
    dist.destroy_process_group()


def ep_timing(state_path: Path, out: Path, batches: int) -> dict:
    """Measured inference step time (forward of one EVAL_BATCH-scene batch) with 2 gloo processes."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.spawn(ep_worker, args=(2, port, str(state_path), str(out), batches), nprocs=2, join=True)
    return json.loads(out.read_text())


def table(rows: list[dict]) -> str:
    drop = rows[0]
    head = ("| policy | cf | accuracy | vs dropless | busiest expert, pairs per layer (L1/L2/L3) | busiest sum | "
            "sim EP 2 | sim EP 4 | sim EP 8 (us) | 8-rank speed-up | text dropped | image dropped |")
    lines = [head, "|" + "---|" * 12]
    for r in rows:
        lines.append(
            f"| {r['mode']} | {'-' if r['cf'] is None else r['cf']} | {r['accuracy']:.4f} | "
            f"{r['accuracy'] / drop['accuracy']:.4f} | {' / '.join(f'{b:.0f}' for b in r['busiest_per_layer'])} | "
            f"{r['busiest_sum']:.0f} | {r['sim_ep2_us']:.0f} | {r['sim_ep4_us']:.0f} | {r['sim_ep8_us']:.0f} | "
            f"{drop['sim_ep8_us'] / r['sim_ep8_us']:.2f}x | {100 * r['dropped_text']:.1f}% | "
            f"{100 * r['dropped_image']:.1f}% |")
    return "\n".join(lines)


def main() -> None:
    global TRAIN_SCENES, TEST_SCENES, STEPS, FACTORS
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--load", type=Path, help="a state dict written by an earlier run (skip training)")
    parser.add_argument("--save", type=Path, default=ROOT / "runs" / "vlm_macs" / "model.pt")
    parser.add_argument("--out", type=Path, help="JSON of every row (default benchmarks/results/vlm_macs.json; "
                        "--smoke: /tmp/vlm_macs_smoke.json)")
    parser.add_argument("--smoke", action="store_true", help="tiny data, 10 steps, one factor")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ep-timing", type=Path, metavar="STATE",
                        help="only measure inference step times of the model STATE with 2 gloo processes")
    parser.add_argument("--ep-batches", type=int, default=TEST_SCENES // EVAL_BATCH,
                        help="global batches timed per policy (--ep-timing)")
    args = parser.parse_args()
    if args.smoke:
        TRAIN_SCENES, TEST_SCENES, STEPS, FACTORS = 128, 64, 10, (0.5,)
        args.out = args.out or Path("/tmp/vlm_macs_smoke.json")
        args.save = args.out.with_suffix(".pt")
    args.out = args.out or ROOT / "benchmarks" / "results" / "vlm_macs.json"
    if args.ep_timing:
        out = args.out.with_name("vlm_macs_ep.json") if args.out else ROOT / "benchmarks" / "results" / "vlm_macs_ep.json"
        for name, r in ep_timing(args.ep_timing, out, 2 if args.smoke else args.ep_batches).items():
            print(f"{name:18s} 2-rank gloo step {r['step_ms_median']:.1f} ms (median; mean {r['step_ms_mean']:.1f})  "
                  f"accuracy {r['accuracy']:.4f}")
        return
    torch.set_num_threads(args.threads)
    torch.manual_seed(SEED)
    t0 = time.perf_counter()
    train_data, test_data = render(TRAIN_SCENES, SEED), render(TEST_SCENES, SEED + 1)
    render_s = time.perf_counter() - t0
    text_tokens = float(test_data["text_mask"].sum(1).float().mean())
    print(f"rendered {TRAIN_SCENES} + {TEST_SCENES} scenes in {render_s:.1f}s; image tokens per scene "
          f"{test_data['patches'].shape[1]}, text tokens {text_tokens:.2f} (ratio "
          f"{test_data['patches'].shape[1] / text_tokens:.1f}x)", flush=True)
    model = TinyVLM()
    info: dict = {"render_seconds": render_s, "image_tokens": test_data["patches"].shape[1],
                  "text_tokens_mean": text_tokens}
    if args.load:
        model.load_state_dict(torch.load(args.load, weights_only=True))
    else:
        info.update(train(model, train_data, STEPS))
        args.save.parent.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), args.save)
    cost = pair_cost_us()
    info["pair_cost_us"] = cost
    print(f"cost model: c = {cost:.3f} us per pair (expert FFN, one thread)", flush=True)
    settings = [Setting("dropless", None)] + [Setting(m, f) for f in FACTORS for m in POLICIES]
    rows = []
    for s in settings:
        rows.append(evaluate(model, test_data, s, cost))
        r = rows[-1]
        print(f"{s.name:18s} acc {r['accuracy']:.4f}  busiest {r['busiest_per_layer']}  "
              f"ep8 {r['sim_ep8_pairs']:.0f} pairs  drop text {r['dropped_text']:.3f} image {r['dropped_image']:.3f}",
              flush=True)
    d = rows[0]
    print("dropless routed max/mean per layer:", [f"{v:.2f}" for v in d["routed_max_over_mean_per_layer"]])
    print("dropless kept max/mean per layer and modality [text, image]:",
          [[f"{v:.2f}" for v in layer] for layer in d["modality_max_over_mean_per_layer"]])
    print(table(rows))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"info": info, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
