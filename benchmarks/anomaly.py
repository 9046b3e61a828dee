"""Quality of the shipped anomaly configs (issue 13, item 5) beside simple baselines, on the embedded test set.

    python benchmarks/anomaly.py                                   # default + dense recipes, then baselines
    python benchmarks/anomaly.py --configs default dense only_inpaint only_denoise only_pseudo_seg only_rotation
    python benchmarks/anomaly.py --skip_train --configs default    # re-evaluate the runs under --run_dir
    python benchmarks/anomaly.py --release --configs default       # also export the default run to the zoo
    python benchmarks/anomaly.py --smoke --configs default --run_dir /tmp/bench   # tiny, < 1 minute
    python benchmarks/anomaly.py --configs default --recalibrate checkpoints/anomaly-mtl-mad.safetensors --release

``--recalibrate FILE`` takes a released file's trained weights instead of training, and gives them
today's scoring (issue 32): the feature bank (``bank_size``, ``bank_tasks``, ``knn_share`` from
configs/anomaly/default.yaml) is filled from the embedded normal training images, then the map
calibration and the decision thresholds come from the normal validation images; the trained
weights are unchanged. The result is evaluated (and released with ``--release``) like a trained run.

Each config (configs/anomaly/<name>.yaml) is trained with ``mmoe fit`` semantics (LightningCLI, the
config's seed), the fit is timed, and the best-validation checkpoint (its anomaly-map calibration
is from that validation's normal images) is loaded with ``mmoe.load`` and evaluated on the
datamodule's test split: held-out normal views and as many copies with simulated lesions (the
test-set lesion simulator, not the training synthesis). Metrics (:class:`AnomalyMetrics`): image
AUROC, pixel AUROC, AUPRO up to FPR 0.3 (normalised by 0.3), per modality and averaged over
modalities. Baselines on the same test images, fitted on the same normal training views (the
views resized, mirrored, plus 200 augmented training samples per modality): a per-pixel Gaussian
(per modality, pixel and channel mean and standard deviation; map = mean absolute z-score over
channels) and PCA reconstruction error (per modality, 95% of the variance, at most 32
components; map = mean squared residual over channels); both maps get the model's Gaussian
smoothing (sigma 2 px) and the same image score (mean of the top 1% pixels). A figure (image, true
mask, predicted map per modality and method) goes to ``<run_dir>/anomaly_examples.png``; results
to stdout (markdown) and ``<run_dir>/results.json``.

``--release`` exports the default run's best checkpoint to ``<run_dir>/release/anomaly-mtl-mad.safetensors``
(with a manifest.json there), loads the exported file with ``mmoe.load``, evaluates it as above,
and prints the manifest row (with those metrics) as JSON; copying the file into checkpoints/ and
the row into checkpoints/manifest.json is left to the maintainers.
"""

from __future__ import annotations

import argparse
import sys
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
if __name__ == "__main__" and not __package__:  # run as a file (python benchmarks/anomaly.py): siblings import
    sys.path[0] = str(Path(__file__).resolve().parents[1])  # as the benchmarks package, like `python -m benchmarks.anomaly`

from benchmarks import recipe_runs

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs" / "anomaly"
DEFAULT = ["default", "dense"]
SMOKE_MODEL = {"dim": 16, "depth": 1, "num_heads": 2, "hidden_dim": 16}
SMOKE_DATA = {"image_size": 32, "samples_per_epoch": 8, "batch_size": 4}
SMOKE_STEPS = 4
KEYS = ("image_auroc", "pixel_auroc", "aupro")
RELEASE_NAME = "anomaly-mtl-mad"


def train(name: str, args: argparse.Namespace) -> dict:
    return recipe_runs.train(name, CONFIGS / f"{name}.yaml", args, SMOKE_MODEL, SMOKE_DATA, SMOKE_STEPS, ROOT)


def discover(name: str, run_dir: str) -> dict:
    """The latest run of ``name`` under ``run_dir`` (for --skip_train)."""
    runs = sorted((Path(run_dir) / name).glob("version_*"), key=lambda p: int(p.name.split("_")[1]))
    if not runs:
        raise SystemExit(f"--skip_train: no run of {name!r} under {run_dir}")
    ckpts = sorted((runs[-1] / "checkpoints").glob("*.ckpt"))
    best = [c for c in ckpts if c.name != "last.ckpt"] or ckpts
    cfg = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())
    return {"config": f"anomaly/{name}.yaml", "checkpoint": str(best[0]), "train_seconds": None,
            "steps": int(torch.load(best[0], map_location="cpu", weights_only=True)["global_step"]),
            "seed": cfg.get("seed_everything"), "data_args": dict(cfg["data"]["init_args"]), "run_kind": "re-evaluated"}


SCORING_ARGS = ("bank_size", "bank_tasks", "knn_share")


def recalibrate(path: str, run_dir: str, train_seconds: float | None) -> dict:
    """A released file's weights with the default recipe's scoring: bank from the normal training
    images, calibration and thresholds from the normal validation images (see the module docstring);
    written as a Lightning-style checkpoint under ``run_dir`` for the export."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    from mmoe.loading import _construct, check_init_args, import_class

    with safe_open(path, "pt") as f:
        meta = f.metadata()
    class_path, state = meta["class_path"], load_file(path)
    cls = import_class(class_path)
    cfg = yaml.safe_load((CONFIGS / "default.yaml").read_text())
    init_args = cls.upgrade_init_args(json.loads(meta["init_args"]))
    init_args.update({k: cfg["model"]["init_args"][k] for k in SCORING_ARGS})
    model = _construct(cls, check_init_args(cls, init_args, path), path)
    old = {k: v for k, v in state.items() if not k.endswith(("calib_mean", "calib_std"))}  # recomputed below
    result = model.load_state_dict(old, strict=False)
    new = {"model.calib_mean", "model.calib_std", "model.bank", "model.bank_ready", "model.score_table",
           "model.pixel_table", "model.table_ready"}
    if result.unexpected_keys or not set(result.missing_keys) <= new:
        raise SystemExit(f"--recalibrate: {path} does not fit today's model: {result}")
    data_args = dict(cfg["data"]["init_args"])
    dm = make_datamodule(data_args)
    model.float().calibrate(dm.val_dataloader(), reference=dm.reference_dataloader())
    ckpt = Path(run_dir) / "recalibrated" / "default.ckpt"
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    steps = int(cfg["trainer"]["max_steps"])
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": init_args, "mmoe_class_path": class_path,
                "global_step": steps}, ckpt)
    return {"config": "anomaly/default.yaml", "checkpoint": str(ckpt), "train_seconds": train_seconds, "steps": steps,
            "seed": cfg.get("seed_everything"), "data_args": data_args, "run_kind": f"recalibrated {path}"}


def make_datamodule(data_args: dict):
    from mmoe.datamodules.anomaly import AnomalyDataModule

    dm = AnomalyDataModule(**{k: v for k, v in data_args.items() if k != "num_workers"})
    dm.setup()
    return dm


def _metrics(maps: np.ndarray, scores: np.ndarray, dm, ds=None) -> dict[str, float]:
    from mmoe.tasks.anomaly.metrics import AnomalyMetrics

    ds = dm.test_dataset if ds is None else ds
    samples = [ds[i] for i in range(len(ds))]
    metric = AnomalyMetrics(dm.modality_names)
    metric.update(torch.as_tensor(maps), torch.as_tensor(scores), torch.stack([s["mask"][0] for s in samples]),
                  torch.stack([s["label"] for s in samples]), torch.stack([s["modality"] for s in samples]),
                  torch.stack([s["has_mask"] for s in samples]))
    return {k: round(float(v), 4) for k, v in metric.compute().items()}


@torch.no_grad()
def model_maps(model, dm, ds=None) -> tuple[np.ndarray, np.ndarray]:
    """Anomaly maps and scores of the test split, or of ``ds`` (true modality given, as in the datamodule's test)."""
    from torch.utils.data import DataLoader

    model.eval()
    maps, scores = [], []
    loader = dm.test_dataloader() if ds is None else DataLoader(ds, batch_size=dm.hparams.batch_size)
    for batch in loader:
        out = model.model.anomaly_maps(batch["image"].float(), batch["modality"])
        maps.append(out["map"].float().numpy())
        scores.append(out["score"].float().numpy())
    return np.concatenate(maps), np.concatenate(scores)


# ------------------------------------------------------------------------------ baselines
def normal_training_images(dm, per_modality: int = 200) -> dict[int, np.ndarray]:
    """Per modality: the training views resized and mirrored, plus augmented training samples ``[n, 3, S, S]``."""
    from mmoe.datamodules.anomaly.datamodule import resize

    ds, S = dm.train_dataset, dm.hparams.image_size
    out: dict[int, list[np.ndarray]] = {}
    for m, items in ds.items.items():
        for it in items:
            img = resize(it.load(), S).transpose(2, 0, 1)
            out.setdefault(m, []).extend([img, img[..., ::-1]])
    counts = {m: 0 for m in out}
    i = 0
    while min(counts.values()) < per_modality and i < 50 * per_modality * len(counts):
        s = ds[(10_000, i)]  # an epoch no recipe reaches: samples independent of the training draws
        m = int(s["modality"])
        if counts[m] < per_modality:
            out[m].append(s["image"].numpy())
            counts[m] += 1
        i += 1
    return {m: np.stack(v).astype(np.float32) for m, v in out.items()}


def _score(maps: torch.Tensor, top_fraction: float = 0.01) -> np.ndarray:
    k = max(1, int(round(top_fraction * maps[0].numel())))
    return maps.flatten(1).topk(k, dim=1).values.mean(1).numpy()


def baseline_maps(dm, normals: dict[int, np.ndarray], kind: str, ds=None) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.decomposition import PCA

    from mmoe.tasks.anomaly.model import gaussian_blur

    ds = dm.test_dataset if ds is None else ds
    images = torch.stack([ds[i]["image"] for i in range(len(ds))]).numpy()
    mods = np.array([int(ds[i]["modality"]) for i in range(len(ds))])
    maps = np.zeros(images.shape[:1] + images.shape[2:], dtype=np.float32)
    for m, X in normals.items():
        sel = mods == m
        if not sel.any():
            continue
        if kind == "gaussian":
            mu, sd = X.mean(0), X.std(0) + 1e-3
            maps[sel] = (np.abs(images[sel] - mu) / sd).mean(1)
        else:
            flat = X.reshape(len(X), -1)
            pca = PCA(n_components=0.95, svd_solver="full").fit(flat)
            if pca.n_components_ > 32:
                pca = PCA(n_components=32).fit(flat)
            t = images[sel].reshape(int(sel.sum()), -1)
            rec = pca.inverse_transform(pca.transform(t))
            maps[sel] = ((t - rec) ** 2).reshape(images[sel].shape).mean(1)
    smoothed = gaussian_blur(torch.from_numpy(maps)[:, None], 2.0)[:, 0]
    return smoothed.numpy(), _score(smoothed)


# ------------------------------------------------------------------------------ lesion types (issue 32 item 5)
LESION_SEED = 3_000_033


def lesion_type_dataset(dm, kind: str):
    """The test split's normal images and, instead of its lesions, copies with lesion type ``kind``
    (:data:`mmoe.datamodules.anomaly.lesions.LESION_TYPES`) on every modality, fixed seeds."""
    from dataclasses import replace

    from mmoe.datamodules.anomaly.datamodule import EvalDataset
    from mmoe.datamodules.anomaly.lesions import LESION_TYPES

    k = list(LESION_TYPES).index(kind)
    items = [e if e.anomaly == "none" else replace(e, lesion=kind, seed=(LESION_SEED, k, *e.seed[1:]),
                                                   name=f"{e.name}:{kind}")
             for e in dm.test_dataset.items]
    return EvalDataset(items, dm.hparams.image_size, dm.modality_names)


def lesion_type_table(dm, methods: dict[str, Any]) -> dict[str, dict[str, dict[str, float]]]:
    """``{kind: {method: metrics}}``; ``methods``: name -> function(ds) giving (maps, scores)."""
    from mmoe.datamodules.anomaly.lesions import LESION_TYPES

    out: dict[str, dict[str, dict[str, float]]] = {}
    for kind in LESION_TYPES:
        ds = lesion_type_dataset(dm, kind)
        out[kind] = {name: _metrics(*fn(ds), dm, ds) for name, fn in methods.items()}
        print(json.dumps({kind: {n: {k: m[k] for k in KEYS} for n, m in out[kind].items()}}), flush=True)
    return out


def print_lesion_types(table: dict, modalities: list[str]) -> None:
    methods = list(next(iter(table.values())))
    print("\nlesion types (image AUROC / pixel AUROC, mean over modalities; per modality image AUROC)\n")
    print("| lesion type | " + " | ".join(methods) + " | " + " | ".join(f"{methods[0]} {m}" for m in modalities) + " |")
    print("|---" * (1 + len(methods) + len(modalities)) + "|")
    for kind, rows in table.items():
        cells = [f"{rows[n]['image_auroc']:.3f} / {rows[n]['pixel_auroc']:.3f}" for n in methods]
        per = [f"{rows[methods[0]].get(f'image_auroc_{m}', float('nan')):.3f}" for m in modalities]
        print(f"| {kind} | " + " | ".join(cells) + " | " + " | ".join(per) + " |")


# ------------------------------------------------------------------------------ output
def save_figure(dm, rows: dict[str, np.ndarray], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ds = dm.test_dataset
    picks = {}
    for i in range(len(ds)):
        s = ds[i]
        m = int(s["modality"])
        if int(s["label"]) == 1 and m not in picks:
            picks[m] = (i, s)
    methods = list(rows)
    fig, axes = plt.subplots(len(picks), 2 + len(methods), figsize=(2.0 * (2 + len(methods)), 2.1 * len(picks)),
                             squeeze=False)
    for r, m in enumerate(sorted(picks)):
        i, s = picks[m]
        axes[r, 0].imshow(s["image"].permute(1, 2, 0).numpy())
        axes[r, 0].set_title(f"{dm.modality_names[m]}", fontsize=8)
        axes[r, 1].imshow(s["mask"][0].numpy(), cmap="gray")
        axes[r, 1].set_title("true mask", fontsize=8)
        for c, name in enumerate(methods):
            axes[r, 2 + c].imshow(rows[name][i], cmap="inferno")
            axes[r, 2 + c].set_title(name, fontsize=8)
    for ax in axes.flat:
        ax.axis("off")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)


def print_tables(results: dict, modalities: list[str]) -> None:
    print("\n| method | steps | train s | image AUROC | pixel AUROC | AUPRO@0.3 |")
    print("|---|---|---|---|---|---|")
    for name, r in results.items():
        m = r["metrics"]
        secs = "-" if r.get("train_seconds") is None else f"{r['train_seconds']:.0f}"
        print(f"| {name} | {r.get('steps', '-')} | {secs} | " + " | ".join(f"{m[k]:.3f}" for k in KEYS) + " |")
    for key in KEYS:
        print(f"\n{key} per modality\n")
        print("| method | " + " | ".join(modalities) + " | mean |")
        print("|---" * (len(modalities) + 2) + "|")
        for name, r in results.items():
            m = r["metrics"]
            cells = [f"{m.get(f'{key}_{mod}', float('nan')):.3f}" for mod in modalities]
            print(f"| {name} | " + " | ".join(cells) + f" | {m[key]:.3f} |")


def release(result: dict, out_dir: Path) -> dict:
    import mmoe
    from mmoe.zoo_cli import export_checkpoint

    cfg = yaml.safe_load((CONFIGS / "default.yaml").read_text())
    data_args = cfg["data"]["init_args"]
    training = (f"embedded AnomalyDataModule {json.dumps(data_args, sort_keys=True)} (normal images only); recipe of "
                f"{cfg['trainer']['max_steps']} steps ({result['train_seconds']:.0f} s on 2 CPU cores), best validation "
                f"checkpoint at step {result['steps']}, seed {cfg['seed_everything']}")
    if result.get("run_kind", "").startswith("recalibrated"):
        training += ("; the trained weights of the previous release, with the feature bank filled from the normal "
                     "training images and the map calibration and thresholds from the normal validation images "
                     "(benchmarks/anomaly.py --recalibrate)")
    common = dict(ckpt=Path(result["checkpoint"]), name=RELEASE_NAME, config="anomaly/default.yaml", task="anomaly",
                  training_data=training, out_dir=out_dir, dtype="float32",
                  description="medical anomaly detection after MTL-MAD: 4 proxy tasks routed to their own experts, "
                              "anomaly map (proxy-task errors and feature distance to normal training tokens) "
                              "calibrated on normal validation images, thresholds at a false-positive rate "
                              "(default 1% of normal images, 1% of normal pixels for the mask); "
                              "predict(images, modality=None, fpr=None, threshold=None)")
    row = export_checkpoint(metrics={}, **common)
    model = mmoe.load(out_dir / row["file"])
    dm = make_datamodule(data_args)
    maps, scores = model_maps(model.float(), dm)
    metrics = _metrics(maps, scores, dm)
    return export_checkpoint(metrics=metrics, **common)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=DEFAULT)
    parser.add_argument("--run_dir", default="runs/bench_anomaly")
    parser.add_argument("--max_steps", type=int, default=None, help="a shorter trial (not the recipe)")
    parser.add_argument("--skip_train", action="store_true")
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--no_baselines", action="store_true")
    parser.add_argument("--release", action="store_true", help="export the default run to <run_dir>/release/")
    parser.add_argument("--train_seconds", type=float, default=None,
                        help="with --skip_train/--recalibrate --release: the measured wall time of the default fit")
    parser.add_argument("--lesion_types", action="store_true",
                        help="also the per-lesion-type table (every type of LESION_TYPES on every modality)")
    parser.add_argument("--recalibrate", default=None, metavar="FILE",
                        help="default: a released file's weights with today's scoring, instead of training")
    args = parser.parse_args()
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    import mmoe

    results: dict[str, Any] = {}
    maps_for_figure: dict[str, np.ndarray] = {}
    dm = None
    for name in args.configs:
        if args.recalibrate and name == "default":
            r = recalibrate(args.recalibrate, args.run_dir, args.train_seconds)
        else:
            r = discover(name, args.run_dir) if args.skip_train else train(name, args)
        if r["train_seconds"] is None and args.train_seconds is not None and name == "default":
            r["train_seconds"] = args.train_seconds
        dm = make_datamodule(r["data_args"])
        model = mmoe.load(r["checkpoint"])
        start = time.perf_counter()
        maps, scores = model_maps(model, dm)
        r["eval_seconds"] = round(time.perf_counter() - start, 1)
        r["metrics"] = _metrics(maps, scores, dm)
        results[name] = r
        maps_for_figure[name] = maps
        print(json.dumps({name: {k: r[k] for k in ("steps", "train_seconds", "eval_seconds", "metrics")}}), flush=True)
    normals = None
    if dm is not None and not args.no_baselines:
        normals = normal_training_images(dm, 20 if args.smoke else 200)
        for kind, label in (("gaussian", "per-pixel Gaussian z-score"), ("pca", "PCA reconstruction")):
            maps, scores = baseline_maps(dm, normals, kind)
            results[label] = {"metrics": _metrics(maps, scores, dm), "steps": "-", "train_seconds": None}
            maps_for_figure[label] = maps
    if dm is not None and args.lesion_types:
        methods = {name: (lambda ds, m=mmoe.load(results[name]["checkpoint"]): model_maps(m, dm, ds))
                   for name in args.configs}
        if normals is not None:
            methods["PCA reconstruction"] = lambda ds: baseline_maps(dm, normals, "pca", ds)
            methods["per-pixel Gaussian z-score"] = lambda ds: baseline_maps(dm, normals, "gaussian", ds)
        results["lesion_types"] = lesion_type_table(dm, methods)
    if dm is not None:
        print_tables({k: v for k, v in results.items() if k != "lesion_types"}, dm.modality_names)
        if "lesion_types" in results:
            print_lesion_types(results["lesion_types"], dm.modality_names)
        save_figure(dm, maps_for_figure, Path(args.run_dir) / "anomaly_examples.png")
    out = Path(args.run_dir) / "results.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=str))
    if args.release and "default" in results and not args.smoke:
        row = release(results["default"], Path(args.run_dir) / "release")
        print("\nmanifest row:\n" + json.dumps(row, indent=2))


if __name__ == "__main__":
    main()
