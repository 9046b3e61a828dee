"""Quality and speed of the shipped restoration configs (issue 14, item 5), beside classical denoisers.

    python benchmarks/restoration.py --figure docs/restoration_examples.png   # all_in_one_3 + dense_3 recipes
    python benchmarks/restoration.py --configs all_in_one_3 --max_steps 500   # a shorter trial, not a recipe
    python benchmarks/restoration.py --skip_train --results runs/bench_restoration/results.json  # re-evaluate
    python benchmarks/restoration.py --smoke --configs all_in_one_3 --run_dir /tmp/bench   # tiny, < 1 minute

(--smoke: channels 8, dim 16, depth 1, 4 steps on 32x32 crops; at most 2 test images per degradation
and noise level, centre 96x96 crops; speed on 512x512, one run after the warm-up.)

Each config (configs/restoration/<name>.yaml) is trained with ``mmoe fit`` semantics (LightningCLI,
the config's seed unless --seed), the fit is timed, and the best-validation checkpoint is loaded with
``mmoe.load`` and evaluated on the datamodule's test split (whole images at full size, fixed-seed
degradations, denoise at sigma 15/25/50) with the task's ``RestorationMetrics``: PSNR/SSIM on RGB in
[0, 1] and on Y, per degradation type and noise level; the degraded input's own PSNR/SSIM against
the clean image (the gain over the input); the per-image router's degradation accuracy (MoE
configs). Peers on the same denoise test images at sigma 25: OpenCV ``fastNlMeansDenoisingColored``
(h, hColor tuned on a grid on the validation image(s) at sigma 25) and scikit-image
``denoise_nl_means`` (true sigma, h = factor x sigma tuned the same way). Speed: megapixels/s of
``model.predict`` (uint8 RGB 1024x1024, the public API with its tiling) on 2 threads, median of 3
after a warm-up, and the peak-RSS increase of restoring that image in a fresh process that only
loads the model. A before/after figure (degraded | restored per config | clean, one crop per
degradation type) goes to ``<run_dir>/restoration_examples.png`` (and ``--figure``). Results:
stdout (markdown) and ``<run_dir>/results.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
if __name__ == "__main__" and not __package__:  # run as a file (python benchmarks/restoration.py): siblings import
    sys.path[0] = str(Path(__file__).resolve().parents[1])  # as the benchmarks package, like `python -m benchmarks.restoration`

from benchmarks import recipe_runs

# albumentations (training crops) asks PyPI for a newer version on import unless this is set
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs" / "restoration"
DEFAULT = ["all_in_one_3", "dense_3"]
#: --smoke: a tiny model and data, 4 steps, at most 2 test samples per degradation (and noise level), 96x96
SMOKE_MODEL = {"channels": 8, "dim": 16, "depth": 1, "hidden_dim": 16}
SMOKE_DATA = {"crop_size": 32, "samples_per_epoch": 16, "batch_size": 4, "val_samples": 4}
SMOKE_STEPS, SMOKE_TEST_PER_KEY, SMOKE_CROP = 4, 2, 96
SMOKE_SPEED_SIDE, SMOKE_SPEED_RUNS = 512, 1  # --smoke: speed on a 512x512 image, one run after the warm-up
#: peers: the denoise noise level they are compared at, and their tuning grids (validation, that level)
PEER_SIGMA = 25.0
CV_GRID = (6, 9, 12, 15, 18, 21, 24)  # h and hColor of cv2.fastNlMeansDenoisingColored (0-255 scale)
SK_GRID = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 1.0, 1.2)  # h / sigma of skimage denoise_nl_means
PEER_VAL_IMAGES = 2
SPEED_SIDE = 1024
FIG_CROP = 160


def _round(d: dict[str, Any], n: int = 4) -> dict[str, float]:
    return {k: round(float(v), n) for k, v in d.items()}


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


# ------------------------------------------------------------------------------------- training
config_path = recipe_runs.config_path


def train(name: str, config: Path, args: argparse.Namespace) -> dict:
    return recipe_runs.train(name, config, args, SMOKE_MODEL, SMOKE_DATA, SMOKE_STEPS, ROOT)


def discover(name: str, run_dir: str) -> dict:
    """A run of ``name`` trained outside this script (``mmoe fit ... --run_dir RUN_DIR --run_name NAME``);
    see :func:`recipe_runs.discover`."""
    return recipe_runs.discover([name], run_dir)


# ----------------------------------------------------------------------------------- evaluation
def make_datamodule(data_args: dict):
    from mmoe.datamodules.restoration.datamodule import RestorationDataModule

    dm = RestorationDataModule(**data_args)
    dm.setup("test")
    return dm


def center_crop(x: torch.Tensor, side: int | None) -> torch.Tensor:
    """``x [..., H, W]`` cut to its central ``side`` x ``side`` (no-op for None or smaller images)."""
    if side is None:
        return x
    H, W = x.shape[-2:]
    top, left = max(0, (H - side) // 2), max(0, (W - side) // 2)
    return x[..., top:top + side, left:left + side]


def test_indices(dm, per_key: int | None) -> list[int]:
    """Test-split indices, at most ``per_key`` per (degradation, noise level)."""
    counts: dict[tuple[int, float], int] = {}
    out = []
    for i, item in enumerate(dm.test_dataset.items):
        key = (item.label, item.sigma)
        counts[key] = counts.get(key, 0) + 1
        if per_key is None or counts[key] <= per_key:
            out.append(i)
    return out


def load_sample(dataset, i: int, crop: int | None) -> dict[str, torch.Tensor]:
    s = dataset[i]
    return {"input": center_crop(s["input"], crop)[None], "target": center_crop(s["target"], crop)[None],
            "degradation": s["degradation"][None], "sigma": s["sigma"][None]}


def figure_indices(dm, indices: list[int]) -> dict[int, int]:
    """One test sample per degradation type for the figure (denoise: one at the peers' noise level)."""
    out: dict[int, int] = {}
    for i in indices:
        item = dm.test_dataset.items[i]
        if item.label not in out:
            out[item.label] = i
        elif item.sigma == PEER_SIGMA and dm.test_dataset.items[out[item.label]].sigma != PEER_SIGMA:
            out[item.label] = i
    return out


def _crop_np(x: torch.Tensor) -> np.ndarray:
    return center_crop(x[0], FIG_CROP).clamp(0, 1).permute(1, 2, 0).numpy()


@torch.no_grad()
def evaluate(model, dm, indices: list[int], crop: int | None) -> dict:
    """Test metrics of ``model`` (a RestorationTask) and of the degraded inputs, the router's
    per-image accuracy, and the figure crops."""
    from mmoe.tasks.restoration.metrics import RestorationMetrics

    names = list(dm.degradations)
    border = int(model.hparams.crop_border)
    m_model, m_input = RestorationMetrics(names, border), RestorationMetrics(names, border)
    G = model.num_groups
    confusion = np.zeros((len(names), G), dtype=int)
    fig_for = figure_indices(dm, indices)
    figure: dict[str, dict] = {}
    start = time.perf_counter()
    model.eval()
    for i in indices:
        batch = load_sample(dm.test_dataset, i, crop)
        out = model(batch)  # the task's test path: reflect-pad to the multiple, whole image, crop back
        pred = out["image"].clamp(0, 1)
        m_model.update(pred, batch["target"], batch["degradation"], batch["sigma"])
        m_input.update(batch["input"], batch["target"], batch["degradation"], batch["sigma"])
        label = int(batch["degradation"][0])
        if out["logits"] is not None and label >= 0:
            confusion[label, int(out["logits"].argmax(-1)[0])] += 1
        if i in fig_for.values():
            item = dm.test_dataset.items[i]
            figure[names[label]] = {"name": item.name, "degraded": _crop_np(batch["input"]),
                                    "restored": _crop_np(pred), "clean": _crop_np(batch["target"])}
    seconds = time.perf_counter() - start
    router = None
    if confusion.sum():
        correct = [int(confusion[d, d % G]) for d in range(len(names))]
        totals = confusion.sum(1)
        router = {"accuracy": round(sum(correct) / int(totals.sum()), 4),
                  "per_type": {n: round(c / int(t), 4) for n, c, t in zip(names, correct, totals) if t},
                  "confusion": confusion.tolist()}
    return {"test": _round(m_model.compute()), "input": _round(m_input.compute()), "router": router,
            "images": len(indices), "crop": crop, "eval_seconds": round(seconds, 1), "figure": figure}


# ------------------------------------------------------------------------------------------ peers
def _opencv_nlm(noisy: np.ndarray, h: float, h_color: float) -> np.ndarray:
    import cv2

    u8 = np.clip(np.round(noisy * 255), 0, 255).astype(np.uint8)
    return cv2.fastNlMeansDenoisingColored(u8, None, h, h_color, 7, 21).astype(np.float32) / 255


def _skimage_nlm(noisy: np.ndarray, factor: float, sigma: float) -> np.ndarray:
    from skimage.restoration import denoise_nl_means

    s = sigma / 255
    out = denoise_nl_means(noisy, h=factor * s, sigma=s, patch_size=5, patch_distance=6, fast_mode=True,
                           channel_axis=-1)
    return np.clip(out, 0, 1).astype(np.float32)


PEERS = {"opencv_nlm": _opencv_nlm, "skimage_nlm": _skimage_nlm}


def _to_np(x: torch.Tensor) -> np.ndarray:
    return x[0].permute(1, 2, 0).numpy().astype(np.float32)


def _to_t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1)[None].float()


def peer_validation(dm, crop: int | None) -> list[dict[str, torch.Tensor]]:
    """The whole validation image(s) of the denoise type with noise at :data:`PEER_SIGMA` (fixed seeds)."""
    from mmoe.datamodules.restoration.datamodule import EvalDataset

    names, seen, items = list(dm.degradations), set(), []
    for item in dm.val_dataset.items:
        key = getattr(item.entry, "name", None) or str(getattr(item.entry, "target", id(item.entry)))
        if names[item.label] != "denoise" or key in seen:
            continue
        seen.add(key)
        items.append(dataclasses.replace(item, crop=None, sigma=PEER_SIGMA))
        if len(items) == PEER_VAL_IMAGES:
            break
    ds = EvalDataset(items, names)
    samples = [load_sample(ds, i, crop) for i in range(len(items))]
    return [s for s in samples if float(s["sigma"][0]) == PEER_SIGMA]  # real noisy pairs cannot be re-noised


def run_peers(dm, indices: list[int], crop: int | None) -> dict | None:
    """Tune each peer on validation at :data:`PEER_SIGMA`, then measure it on the test images at that level."""
    from mmoe.tasks.restoration.metrics import RestorationMetrics, psnr_per_image

    names = list(dm.degradations)
    if "denoise" not in names:
        return None
    val = peer_validation(dm, crop)
    test = [load_sample(dm.test_dataset, i, crop) for i in indices
            if names[dm.test_dataset.items[i].label] == "denoise" and dm.test_dataset.items[i].sigma == PEER_SIGMA]
    if not val or not test:
        return None
    grids = {"opencv_nlm": [{"h": h, "h_color": hc} for h in CV_GRID for hc in CV_GRID],
             "skimage_nlm": [{"factor": f, "sigma": PEER_SIGMA} for f in SK_GRID]}
    out = {}
    for peer, fn in PEERS.items():
        start = time.perf_counter()
        scores = []
        for params in grids[peer]:
            p = [float(psnr_per_image(_to_t(fn(_to_np(s["input"]), **params)).double(), s["target"].double()))
                 for s in val]
            scores.append(sum(p) / len(p))
        best = int(np.argmax(scores))
        params = grids[peer][best]
        metric = RestorationMetrics(names)
        for s in test:
            metric.update(_to_t(fn(_to_np(s["input"]), **params)), s["target"], s["degradation"], s["sigma"])
        values = metric.compute()
        key = f"sigma{PEER_SIGMA:g}"
        at_edge = [k for k, v in params.items() if k != "sigma"
                   and v in (min(g[k] for g in grids[peer]), max(g[k] for g in grids[peer]))]
        out[peer] = {"params": params, "val_psnr": round(scores[best], 3), "val_images": len(val),
                     "grid_edge": at_edge, "test_images": len(test),
                     "tune_seconds": round(time.perf_counter() - start, 1),
                     "test": _round({k: values[f"{k}_{key}"] for k in ("psnr", "ssim", "psnr_y", "ssim_y")})}
    return out


# ------------------------------------------------------------------------------------------ speed
def speed_image(dm, side: int) -> np.ndarray:
    """A noisy (sigma 25) uint8 RGB ``side`` x ``side`` image made from the first test image."""
    import cv2

    from mmoe.datamodules.restoration.degradations import add_noise

    clean = dm.test_dataset[0]["target"].permute(1, 2, 0).numpy()
    big = np.clip(cv2.resize(clean, (side, side), interpolation=cv2.INTER_CUBIC), 0, 1)
    noisy = add_noise(big.astype(np.float32), np.random.default_rng(0), PEER_SIGMA)
    return np.clip(np.round(noisy * 255), 0, 255).astype(np.uint8)


def _timed(fn, runs: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def model_speed(model, image: np.ndarray, runs: int) -> dict:
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        seconds = _timed(lambda: model.predict(image), runs, 1)
    finally:
        torch.set_num_threads(threads)
    mp = image.shape[0] * image.shape[1] / 1e6
    return {"seconds": round(seconds, 3), "mp_per_s": round(mp / seconds, 4), "runs": runs, "threads": 2,
            "size": list(image.shape[:2]), "params": sum(p.numel() for p in model.model.parameters()),
            "load_avg_1min": round(os.getloadavg()[0], 2)}  # other processes on the machine slow it down


def peer_speed(peers: dict, image: np.ndarray, runs: int) -> dict:
    import cv2

    cv2.setNumThreads(2)
    noisy = image.astype(np.float32) / 255
    mp = image.shape[0] * image.shape[1] / 1e6
    out = {}
    for peer, fn in PEERS.items():
        params = peers[peer]["params"]
        seconds = _timed(lambda: fn(noisy, **params), runs, 0)
        out[peer] = {"seconds": round(seconds, 3), "mp_per_s": round(mp / seconds, 4), "runs": runs,
                     "load_avg_1min": round(os.getloadavg()[0], 2)}
    return out


def memory_probe(ckpt: str, side: int) -> None:
    """(Run in a fresh process.) Load the model, restore one ``side`` x ``side`` uint8 image, print the
    RSS high-water marks (MiB) after loading and after restoring as JSON."""
    torch.set_num_threads(2)
    import mmoe

    model = mmoe.load(ckpt)
    image = np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)
    gc.collect()
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    out = model.predict(image)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    assert out["image"].shape == image.shape
    print(json.dumps({"baseline_mib": round(base, 1), "peak_mib": round(peak, 1), "delta_mib": round(peak - base, 1)}))


def model_memory(ckpt: str, side: int) -> dict:
    # Through a shell that forks (not execs) the probe: a process exec'd straight from this one would
    # start with this process's RSS high-water mark in ru_maxrss (the kernel carries it over at exec).
    cmd = ["sh", "-c", '"$0" "$@"; status=$?; exit $status', sys.executable, __file__, "--_memory_probe", ckpt,
           "--_memory_side", str(side)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=dict(os.environ, OMP_NUM_THREADS="2"))
    if r.returncode:
        raise RuntimeError(f"memory probe failed:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------------------- figure
def save_figure(figures: dict[str, dict], order: list[str], paths: list[Path]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mmoe.tasks.restoration.metrics import psnr_per_image

    configs = [c for c in order if figures.get(c)]
    types = list(dict.fromkeys(t for c in configs for t in figures[c]))
    if not types:
        return
    cols = ["degraded"] + configs + ["clean"]
    fig, axes = plt.subplots(len(types), len(cols), figsize=(2.3 * len(cols), 2.5 * len(types)), squeeze=False)
    for r, t in enumerate(types):
        ref = next(figures[c][t] for c in configs if t in figures[c])
        clean_t = _to_t(ref["clean"]).double()
        for c, col in enumerate(cols):
            ax = axes[r, c]
            ax.axis("off")
            if col in ("degraded", "clean"):
                img = ref[col]
            elif t in figures[col]:
                img = figures[col][t]["restored"]
            else:
                continue
            ax.imshow(img)
            title = f"{t}: {col}" if c == 0 else col
            if col != "clean":
                title += f"\n{float(psnr_per_image(_to_t(img).double(), clean_t)):.2f} dB"
            ax.set_title(title, fontsize=8)
        axes[r, 0].text(0, -0.02, ref["name"], transform=axes[r, 0].transAxes, fontsize=6, va="top")
    fig.tight_layout()
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.stem + ".tmp.png")
        fig.savefig(tmp, dpi=110)
        os.replace(tmp, path)
    plt.close(fig)


# ----------------------------------------------------------------------------------------- tables
def _cell(d: dict | None, key: str, y: bool = False) -> str:
    if not d:
        return "-"
    p, s = d.get(f"psnr{'_y' if y else ''}_{key}" if key else f"psnr{'_y' if y else ''}"), \
        d.get(f"ssim{'_y' if y else ''}_{key}" if key else f"ssim{'_y' if y else ''}")
    return "-" if p is None or s is None else f"{p:.2f} / {s:.4f}"


def columns(results: dict) -> list[tuple[str, str]]:
    """(header, metric key suffix) per column: denoise per noise level, the other types, all images."""
    names = list(dict.fromkeys(n for r in results.values() for n in r["degradations"]))
    cols = []
    for n in names:
        if n == "denoise":
            levels = sorted({k.split("_sigma")[1] for r in results.values() for k in r["test"] if "_sigma" in k},
                            key=float)
            cols += [(f"denoise σ{s}", f"sigma{s}") for s in levels] or [("denoise", "denoise")]
        else:
            cols.append((n, n))
    return cols + [("all images", "")]


def print_tables(results: dict, peers: dict | None, speed_peers: dict | None, out: Path) -> None:
    cols = columns(results)
    first = next(iter(results.values()))
    inputs: dict[str, float] = {}
    for r in results.values():  # the same fixed-seed test samples for the types configs share
        inputs |= r["input"]
    steps = {"smoke": "smoke: tiny model, 4 steps", "trial": "trial: --max_steps", "recipe": "the recipes' steps",
             "run_folder": "checkpoints of the run folders under --run_dir"}.get(first.get("run_kind"), "?")
    crop = f", centre {first['crop']}x{first['crop']} crops" if first.get("crop") else ", whole images"
    for y in (False, True):
        space = "Y (BT.601 luma)" if y else "RGB"
        print(f"\n# Restoration quality, test split{crop}: PSNR (dB) / SSIM on {space} in [0, 1] ({steps})")
        print("| method | steps | train s | " + " | ".join(h for h, _ in cols) + " |")
        print("|---|---|---|" + "---|" * len(cols))
        for name, r in results.items():
            secs = "-" if r.get("train_seconds") is None else f"{r['train_seconds']:.0f}"
            print(f"| {name} | {r['steps']} | {secs} | "
                  + " | ".join(_cell(r["test"], k, y) for _, k in cols) + " |")
        print("| degraded input | - | - | " + " | ".join(_cell(inputs, k, y) for _, k in cols) + " |")
        for peer, p in (peers or {}).items():
            label = _peer_label(peer, p)
            cells = [_cell(p["test"], "", y) if k == f"sigma{PEER_SIGMA:g}" else "-" for _, k in cols]
            print(f"| {label} | - | - | " + " | ".join(cells) + " |")
    print("\n# Gain over the degraded input, PSNR dB (RGB)")
    print("| config | " + " | ".join(h for h, _ in cols) + " |")
    print("|---|" + "---|" * len(cols))
    for name, r in results.items():
        cells = []
        for _, k in cols:
            key = f"psnr_{k}" if k else "psnr"
            cells.append(f"{r['test'][key] - inputs[key]:+.2f}" if key in r["test"] and key in inputs else "-")
        print(f"| {name} | " + " | ".join(cells) + " |")
    print("\n# Per-image router: degradation accuracy on the test images (argmax of the per-image group logits)")
    types = list(dict.fromkeys(n for r in results.values() for n in r["degradations"]))
    print("| config | all | " + " | ".join(types) + " |")
    print("|---|---|" + "---|" * len(types))
    for name, r in results.items():
        router = r.get("router")
        if router is None:
            print(f"| {name} | - (dense) | " + " | ".join("-" for _ in types) + " |")
        else:
            print(f"| {name} | {router['accuracy']:.3f} | "
                  + " | ".join(f"{router['per_type'][t]:.3f}" if t in router["per_type"] else "-" for t in types)
                  + " |")
    h, w = first["speed"]["size"]
    side = f"{h}x{w}"
    print(f"\n# Speed: predict() on one uint8 RGB {side} image, 2 CPU threads (median of the runs after a "
          f"warm-up); peak RSS increase while restoring it in a fresh process that only loaded the model")
    print("| method | params | s / image | MP/s | runs | peak RSS delta MiB | RSS after load MiB | load avg |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        s, m = r["speed"], r.get("memory") or {}
        print(f"| {name} | {s['params'] / 1e6:.3f} M | {s['seconds']:.3f} | {s['mp_per_s']:.4f} | {s['runs']} | "
              f"{m.get('delta_mib', float('nan')):.1f} | {m.get('baseline_mib', float('nan')):.1f} | "
              f"{s['load_avg_1min']:.2f} |")
    for peer, s in (speed_peers or {}).items():
        print(f"| {_peer_label(peer, peers[peer])} | - | {s['seconds']:.3f} | {s['mp_per_s']:.4f} | {s['runs']} | "
              f"- | - | {s['load_avg_1min']:.2f} |")
    if peers:
        print(f"\nPeers tuned on {next(iter(peers.values()))['val_images']} validation image(s) at sigma "
              f"{PEER_SIGMA:g}: " + "; ".join(
                  f"{_peer_label(k, p)} val PSNR {p['val_psnr']:.2f} dB"
                  + (f" (grid edge: {', '.join(p['grid_edge'])})" if p["grid_edge"] else "") for k, p in peers.items()))
    print(f"\nresults: {out}")


def _peer_label(peer: str, p: dict) -> str:
    if peer == "opencv_nlm":
        return f"OpenCV NLM (h={p['params']['h']}, hColor={p['params']['h_color']})"
    return f"skimage NLM (h={p['params']['factor']}σ, σ true)"


# ------------------------------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    recipe_runs.add_recipe_arguments(parser, "restoration", DEFAULT, CONFIGS,
                                     smoke_help="tiny model/data, 4 steps, 96x96 test crops", results_help="--skip_train")
    parser.add_argument("--figure", default=None, help="also write the before/after figure here")
    parser.add_argument("--_memory_probe", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--_memory_side", type=int, default=SPEED_SIDE, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._memory_probe:
        memory_probe(args._memory_probe, args._memory_side)
        return
    import mmoe

    out = Path(args.run_dir) / "results.json"
    previous: dict = {}
    if args.skip_train:
        src = Path(args.results) if args.results else out
        if src.is_file():
            previous = json.loads(src.read_text())["configs"]
        elif args.results:
            raise SystemExit(f"--results: no such file {src}")
    names = args.configs or list(previous) or DEFAULT
    crop = SMOKE_CROP if args.smoke else None
    per_key = SMOKE_TEST_PER_KEY if args.smoke else None
    runs, side = (SMOKE_SPEED_RUNS, SMOKE_SPEED_SIDE) if args.smoke else (3, SPEED_SIDE)
    results: dict[str, dict] = {}
    figures: dict[str, dict] = {}
    peers = speed_peers = None
    dm_first = None
    for name in names:
        if args.skip_train:
            r = {k: v for k, v in previous[name].items()
                 if k not in ("test", "input", "router", "speed", "memory", "degradations")} \
                if name in previous else discover(name, args.run_dir)
        else:
            r = train(name, config_path(name, Path(args.config_dir)), args)
        model = mmoe.load(r["checkpoint"])
        dm = make_datamodule(r["data_args"])
        indices = test_indices(dm, per_key)
        ev = evaluate(model, dm, indices, crop)
        figures[name] = ev.pop("figure")
        r |= ev
        r["degradations"] = list(dm.degradations)
        if dm_first is None:
            dm_first = dm
            peers = run_peers(dm, indices, crop)
        start = time.perf_counter()
        r["speed"] = model_speed(model, speed_image(dm, side), runs)
        r["memory"] = model_memory(r["checkpoint"], side)
        r["speed_seconds"] = round(time.perf_counter() - start, 1)
        results[name] = r
        del model
        gc.collect()
        payload = {"configs": results, "peers": peers, "peer_speed": speed_peers, "peer_sigma": PEER_SIGMA,
                   "speed_side": side}
        _write_atomic(out, json.dumps(payload, indent=2).encode())
    if peers:
        speed_peers = peer_speed(peers, speed_image(dm_first, side), runs)
    payload = {"configs": results, "peers": peers, "peer_speed": speed_peers, "peer_sigma": PEER_SIGMA,
               "speed_side": side}
    _write_atomic(out, json.dumps(payload, indent=2).encode())
    paths = [Path(args.run_dir) / "restoration_examples.png"] + ([Path(args.figure)] if args.figure else [])
    save_figure(figures, names, paths)
    print_tables(results, peers, speed_peers, out)
    print(f"figure: {', '.join(str(p) for p in paths)}")


if __name__ == "__main__":
    main()
