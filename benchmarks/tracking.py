"""Quality and speed of the shipped tracking configs (issue 11, items 5 and 6), beside OpenCV's trackers.

    python benchmarks/tracking.py                                   # rgbd_moe + rgb_only + dense recipes
    python benchmarks/tracking.py --configs rgbd_moe --max_steps 300   # a shorter trial, not a recipe
    python benchmarks/tracking.py --skip_train --run_dir runs/bench_tracking   # evaluate runs trained with
        # mmoe fit --config tracking/<name> --run_dir runs/bench_tracking --run_name <name>
    python benchmarks/tracking.py --macs --run_dir runs/bench_tracking   # capacity: dropless/static/MACS
    python benchmarks/tracking.py --macs --macs_model path/to/best.ckpt --macs_config rgbd_moe
    python benchmarks/tracking.py --smoke --run_dir /tmp/bench      # tiny, < 1 minute (then --smoke --macs)

(--smoke: dim 16, depth 2, 4 training steps, 3 test sequences of 24 frames; speed: one run after the warm-up.)

Each config (configs/tracking/<name>.yaml) is trained with ``mmoe fit`` semantics (LightningCLI, the
config's seed unless --seed), the fit is timed, and the best-validation checkpoint is loaded with
``mmoe.load`` and run over every sequence of the datamodule's test split with the task's tracking
loop (``TrackingTask.track_sequence``, from the first frame's true box). Scores (``mmoe.tasks.tracking.metrics``,
see their docstrings: frame 0 not scored, absent frames not scored, per-sequence means):
success AUC, precision at 20 px, normalised precision and, on RGB-D test data, the VOT-RGBD
F-score from the per-frame confidence (for every method, RGB-only ones included). Per attribute (occlusion, out_of_view, dark, overexposed, camouflage,
fast_motion, distractor, and ``rgb_fails`` = dark | overexposed | camouflage | fast_motion |
occlusion): the same metric classes with ``present`` restricted to the frames where the attribute
is on, i.e. per sequence over its attribute frames, then averaged over the sequences that have
any; the tables give the frames where the attribute is on and how many of them are scored
(target present). Speed: frames/s of the public ``model.predict(frames, init_box, x_frames)`` on
the first test sequence (uint8 RGB and uint8 X frames), N frames / seconds with N counting the
initialisation frame, median of 3 runs after a warm-up, loading excluded, on the default torch
threads. Parameters: total, and active per token (a token-level MoE layer's unused ``E - k``
experts left out; a soft-MoE layer counts one expert: each slot passes through exactly one
expert, which is also the width of its dense twin in the dense baseline).

Peers on the same test sequences, RGB only, from the first frame's box: OpenCV's CSRT and KCF
(opencv-contrib, ``pip install opencv-contrib-python-headless==<the installed
opencv-python-headless version>``; skipped with that message when missing) and MIL (in every
OpenCV build). A peer's box when its ``update`` reports failure is its previous box; its
confidence is 1 when ``update`` succeeds, else 0 (for the F-score). Peer speed is frames/s of
init + update over the same sequence (BGR uint8), median of 3 after a warm-up.

``--macs``: the capacity comparison on one trained tracker (``--macs_model`` or the rgbd_moe
checkpoint of ``--run_dir``): the test split tracked with every token-level MoE layer at
``capacity_factor = cf`` (soft-MoE layers have no capacity), static, MACS (token value from the
router's entropy) and ``macs_output`` (MACS with a pair valued by gate x expert-output norm, the
issue's alternative rule), for each cf of ``--factors``, and dropless. Per setting: AUC and its retention vs dropless, the busiest expert's
routed pairs over the mean (per token-level layer and frame, averaged), the share of pairs dropped
per modality (z_rgb, z_x, s_rgb, s_x), and the smallest cf keeping >= ``--retention`` of the dropless
AUC per mode (it and every larger cf in the grid), with the static/MACS ratio.

Results: markdown tables on stdout, ``<run_dir>/results.json`` (``<run_dir>/macs.json`` for --macs).
"""

from __future__ import annotations

import argparse
import sys
import gc
import importlib.metadata
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import yaml
if __name__ == "__main__" and not __package__:  # run as a file (python benchmarks/tracking.py): siblings import
    sys.path[0] = str(Path(__file__).resolve().parents[1])  # as the benchmarks package, like `python -m benchmarks.tracking`

from benchmarks import recipe_runs

# albumentations (training crops) asks PyPI for a newer version on import unless this is set
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs" / "tracking"
DEFAULT = ["rgbd_moe", "rgb_only", "dense"]
ATTRIBUTES = ("occlusion", "out_of_view", "dark", "overexposed", "camouflage", "fast_motion", "distractor")
#: frames where an RGB-only tracker is expected to fail and X still sees the target
RGB_FAILS = ("dark", "overexposed", "camouflage", "fast_motion", "occlusion")
ATTRIBUTE_ROWS = (*ATTRIBUTES, "rgb_fails")
#: --smoke: a tiny model and data (depth 2: one token-level and one soft-MoE block, for --macs)
SMOKE_MODEL = {"dim": 16, "depth": 2, "num_heads": 2, "hidden_dim": 16, "moe.num_experts": 4, "slots": 2}
SMOKE_DATA = {"train_sequences": 2, "val_sequences": 1, "test_sequences": 3, "sequence_length": 24,
              "samples_per_epoch": 8, "batch_size": 4}
SMOKE_STEPS, SMOKE_RUNS = 4, 1
SMOKE_FACTORS = [1.0, 0.5]
FACTORS = [2.0, 1.5, 1.25, 1.0, 0.75, 0.5, 0.35, 0.25]
CONTRIB_PEERS = ("CSRT", "KCF")
PEERS = (*CONTRIB_PEERS, "MIL")


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _f(x: Any) -> float | None:
    """A JSON-safe float (NaN -> None)."""
    v = float(x)
    return None if not np.isfinite(v) else round(v, 6)


# ------------------------------------------------------------------------------------- training
config_path = recipe_runs.config_path


def train(name: str, config: Path, args: argparse.Namespace) -> dict:
    return recipe_runs.train(name, config, args, SMOKE_MODEL, SMOKE_DATA, SMOKE_STEPS, ROOT)


def discover(name: str, run_dir: str) -> dict:
    """A run of ``name`` trained outside this script (``mmoe fit ... --run_dir RUN_DIR --run_name NAME``,
    or without ``--run_name``: the config's own run_name, e.g. ``tracking_rgbd_moe``); see
    :func:`recipe_runs.discover`."""
    names = [name]
    if (CONFIGS / f"{name}.yaml").is_file():
        names.append(yaml.safe_load((CONFIGS / f"{name}.yaml").read_text()).get("run_name") or name)
    return recipe_runs.discover(names, run_dir)


# ----------------------------------------------------------------------------------- evaluation
def make_datamodule(data_args: dict):
    from mmoe.datamodules.tracking.datamodule import TrackingDataModule

    dm = TrackingDataModule(**data_args)
    dm.setup("test")
    return dm


def test_items(dm) -> list[dict[str, Any]]:
    return [dm.test_dataset[i] for i in range(len(dm.test_dataset))]


def attribute_masks(item: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Per-frame bool ``[N]`` for each row of :data:`ATTRIBUTE_ROWS` (all False where the data has no such
    attribute, e.g. real datasets)."""
    n = len(item["boxes"])
    masks = {a: item.get(f"attr/{a}", torch.zeros(n, dtype=torch.bool)).bool() for a in ATTRIBUTES}
    fails = torch.zeros(n, dtype=torch.bool)
    for a in RGB_FAILS:
        fails |= masks[a]
    masks["rgb_fails"] = fails
    return masks


class TrackScores:
    """Every score of the benchmark over a set of tracked sequences: the whole split, per attribute."""

    def __init__(self, rgbd: bool) -> None:
        from mmoe.tasks.tracking.metrics import NormalizedPrecision, PrecisionAt, RGBDFScore, SuccessAUC

        self.auc, self.p20, self.norm = SuccessAUC(), PrecisionAt(20), NormalizedPrecision()
        self.rgbd = RGBDFScore() if rgbd else None
        self.attr = {a: (SuccessAUC(), PrecisionAt(20)) for a in ATTRIBUTE_ROWS}
        self.frames = {a: 0 for a in ATTRIBUTE_ROWS}  # attribute on, frame 0 excluded
        self.scored = {a: 0 for a in ATTRIBUTE_ROWS}  # ... and the target present (what the metrics score)
        self.sequences, self.total_frames = 0, 0

    def update(self, item: dict[str, Any], boxes: torch.Tensor, confidence: torch.Tensor) -> None:
        gt, present = item["boxes"].double(), item["present"].bool()
        pred = boxes.double()
        self.auc.update(pred, gt, present)
        self.p20.update(pred, gt, present)
        self.norm.update(pred, gt, present)
        if self.rgbd is not None:
            self.rgbd.update(pred, gt, confidence.double(), present)
        for a, mask in attribute_masks(item).items():
            mask = mask.clone()
            mask[0] = False  # the initialisation frame is never scored
            # absent frames stay unscored, as in the metric classes: present & attribute
            self.attr[a][0].update(pred, gt, present & mask)
            self.attr[a][1].update(pred, gt, present & mask)
            self.frames[a] += int(mask.sum())
            self.scored[a] += int((present & mask).sum())
        self.sequences += 1
        self.total_frames += len(gt)

    def compute(self) -> dict[str, Any]:
        out: dict[str, Any] = {"success_auc": _f(self.auc.compute()), "precision_20": _f(self.p20.compute()),
                               "norm_precision": _f(self.norm.compute()), "sequences": self.sequences,
                               "frames": self.total_frames}
        if self.rgbd is not None:
            out["rgbd"] = {k: _f(v) for k, v in self.rgbd.compute().items()}
        out["attributes"] = {a: {"success_auc": _f(self.attr[a][0].compute()),
                                 "precision_20": _f(self.attr[a][1].compute()),
                                 "frames": self.frames[a], "scored_frames": self.scored[a],
                                 "sequences": len(self.attr[a][0].curves)} for a in ATTRIBUTE_ROWS}
        return out


def depth_data(dm) -> bool:
    """Whether the test sequences are RGB-D (then every method, RGB-only ones too, gets the VOT-RGBD F-score)."""
    from mmoe.datamodules.tracking.datamodule import REAL_MODALITY

    hp = dm.hparams
    return (hp.modality if hp.dataset == "synthetic" else REAL_MODALITY[hp.dataset]) == "depth"


@torch.no_grad()
def evaluate(model, items: list[dict[str, Any]], rgbd: bool) -> dict:
    """Track every test sequence with the task's loop from the first frame's true box, and score."""
    model.eval()
    scores = TrackScores(rgbd=rgbd)
    start = time.perf_counter()
    prompt = bool(model.hparams.get("modality_prompt", False))  # one model for every X: told which X it gets
    for item in items:
        out = model.track_sequence(item["frames"], item.get("x"), item["boxes"][0],
                                   item.get("modality") if prompt else None)
        scores.update(item, out["boxes"], out["confidence"])
    seconds = time.perf_counter() - start
    return {"test": scores.compute(), "eval_seconds": round(seconds, 1)}


# ---------------------------------------------------------------------------------------- speed
def count_params(model) -> tuple[int, int]:
    """``(total, active per token)`` of the tracker (see the module docstring for soft-MoE layers)."""
    from mmoe.moe_layer import MoELayer

    total = sum(p.numel() for p in model.model.parameters())
    inactive = 0
    for m in model.model.modules():
        if isinstance(m, MoELayer):
            per_expert = sum(p.numel() for p in m.experts.parameters()) // m.num_experts
            used = 1 if m.router_kind == "soft" else m.top_k
            inactive += (m.num_experts - used) * per_expert
    return total, total - inactive


def _timed(fn: Callable[[], Any], runs: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def speed_inputs(dm, item: dict[str, Any]) -> tuple[list[np.ndarray], np.ndarray, list[np.ndarray] | None]:
    """uint8 RGB frames, the first box and uint8 X frames (None without X) of the first test sequence."""
    seq = dm.test_dataset.sequences[0]
    frames = [np.ascontiguousarray(f) for f in item["frames"].numpy()]
    x = None
    if "x" in item:
        x = [np.ascontiguousarray(f) for f in seq.x] if isinstance(seq.x, np.ndarray) and seq.x.dtype == np.uint8 \
            else [np.round(f * 255).astype(np.uint8) for f in item["x"].numpy()]
    return frames, item["boxes"][0].numpy(), x


def model_speed(model, frames: list[np.ndarray], box: np.ndarray, x: list[np.ndarray] | None, runs: int) -> dict:
    n = len(frames)
    seconds = _timed(lambda: model.predict(frames, box, x if model.pre.modality is not None else None), runs)
    total, active = count_params(model)
    return {"seconds": round(seconds, 3), "fps": round(n / seconds, 2), "frames": n, "runs": runs,
            "torch_threads": torch.get_num_threads(), "size": list(frames[0].shape[:2]),
            "search_size": model.pre.search_size, "with_x": x is not None and model.pre.modality is not None,
            "params": total, "active_params": active, "load_avg_1min": round(os.getloadavg()[0], 2)}


# ------------------------------------------------------------------------------------------ peers
def opencv_distribution() -> str:
    """The installed OpenCV wheels (several may share the one cv2 module)."""
    found = []
    for dist in ("opencv-python-headless", "opencv-contrib-python-headless", "opencv-python",
                 "opencv-contrib-python"):
        try:
            found.append(f"{dist} {importlib.metadata.version(dist)}")
        except importlib.metadata.PackageNotFoundError:
            continue
    return " + ".join(found) or "opencv (unknown distribution)"


def contrib_command() -> str:
    try:
        version = importlib.metadata.version("opencv-python-headless")
    except importlib.metadata.PackageNotFoundError:
        import cv2

        version = cv2.__version__
    return f"pip install opencv-contrib-python-headless=={version}"


def tracker_factory(name: str) -> Callable[[], Any] | None:
    """A constructor of OpenCV's ``name`` tracker (``CSRT``, ``KCF``, ``MIL``), or None when this
    OpenCV build lacks it (CSRT and KCF are in opencv-contrib only)."""
    import cv2

    for ns in (cv2, getattr(cv2, "legacy", None)):
        if ns is None:
            continue
        fn = getattr(ns, f"Tracker{name}_create", None)
        if fn is None and hasattr(getattr(ns, f"Tracker{name}", None), "create"):
            fn = getattr(ns, f"Tracker{name}").create
        if fn is not None:
            return fn
    return None


def peer_track(factory: Callable[[], Any], frames_bgr: list[np.ndarray], init_box: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray]:
    """OpenCV tracker from ``init_box`` (xywh, rounded to whole pixels as OpenCV's Rect needs):
    ``(boxes [N, 4], confidence [N])``; a failed update keeps the previous box at confidence 0."""
    H, W = frames_bgr[0].shape[:2]
    x, y, w, h = (float(v) for v in init_box)
    x0, y0 = int(np.clip(round(x), 0, W - 1)), int(np.clip(round(y), 0, H - 1))
    rect = (x0, y0, max(1, min(int(round(w)), W - x0)), max(1, min(int(round(h)), H - y0)))
    tracker = factory()
    tracker.init(frames_bgr[0], rect)
    boxes, conf = [np.asarray(init_box, dtype=np.float64)], [1.0]
    for f in frames_bgr[1:]:
        ok, r = tracker.update(f)
        ok = bool(ok) and r[2] > 0 and r[3] > 0
        boxes.append(np.asarray(r, dtype=np.float64) if ok else boxes[-1].copy())
        conf.append(1.0 if ok else 0.0)
    return np.stack(boxes), np.asarray(conf)


def _bgr(item: dict[str, Any]) -> list[np.ndarray]:
    return [np.ascontiguousarray(f[:, :, ::-1]) for f in item["frames"].numpy()]


def run_peers(items: list[dict[str, Any]], rgbd: bool, speed_frames: list[np.ndarray], speed_box: np.ndarray,
              runs: int) -> dict:
    """Each available OpenCV tracker over the test sequences (RGB only): scores and speed; the missing
    ones listed under ``"missing"`` with the pip command that adds them."""
    import cv2

    out: dict[str, Any] = {"opencv": f"{opencv_distribution()} (cv2 {cv2.__version__})",
                           "cv2_threads": cv2.getNumThreads(), "trackers": {}, "missing": []}
    for name in PEERS:
        factory = tracker_factory(name)
        if factory is None:
            out["missing"].append(name)
            continue
        scores = TrackScores(rgbd=rgbd)
        start = time.perf_counter()
        for item in items:
            boxes, conf = peer_track(factory, _bgr(item), item["boxes"][0].numpy())
            scores.update(item, torch.from_numpy(boxes), torch.from_numpy(conf))
        eval_seconds = time.perf_counter() - start
        bgr = [np.ascontiguousarray(f[:, :, ::-1]) for f in speed_frames]
        seconds = _timed(lambda: peer_track(factory, bgr, speed_box), runs)
        out["trackers"][name] = {"test": scores.compute(), "eval_seconds": round(eval_seconds, 1),
                                 "speed": {"seconds": round(seconds, 3), "fps": round(len(bgr) / seconds, 2),
                                           "frames": len(bgr), "runs": runs,
                                           "load_avg_1min": round(os.getloadavg()[0], 2)}}
    if out["missing"]:
        out["message"] = (f"OpenCV trackers {', '.join(out['missing'])} are not in this OpenCV build "
                          f"({out['opencv']}): they come with opencv-contrib. To run them: "
                          f"{contrib_command()} (the same version as opencv-python-headless; both "
                          f"packages write the same cv2 module, so uninstalling either one later removes cv2: "
                          f"reinstall with pip install --force-reinstall --no-deps <the other one>). Skipped.")
    return out


# ------------------------------------------------------------------------------------------- MACS
class _MoERecorder:
    """Forward hooks on the token-level MoE layers: demand imbalance and dropped/total pairs per modality,
    accumulated over every forward (the tracking loop runs one forward per frame)."""

    def __init__(self, model) -> None:
        from mmoe.moe_layer import MoELayer

        self.layers = [m for m in model.model.modules() if isinstance(m, MoELayer) and m.router_kind != "soft"]
        if not self.layers:
            raise SystemExit("--macs: the model has no token-level MoE layer (a dense baseline?)")
        M = self.layers[0].num_modalities
        self.dropped, self.pairs, self.imbalance = torch.zeros(M), torch.zeros(M), []
        self.handles = [m.register_forward_hook(self._hook) for m in self.layers]

    def _hook(self, module, inputs, output) -> None:
        s = module.stats
        drop = s.dropped_per_modality.float().cpu()
        self.dropped += drop
        self.pairs += s.tokens_per_expert_per_modality.float().sum(1).cpu() + drop  # kept + dropped pairs
        demand = s.routed_per_expert.float()
        self.imbalance.append(float(demand.max() / demand.mean().clamp_min(1e-9)))

    def close(self) -> None:
        for h in self.handles:
            h.remove()


@torch.no_grad()
def macs_setting(model, items: list[dict[str, Any]], modalities: list[str]) -> dict:
    rec = _MoERecorder(model)
    try:
        start = time.perf_counter()
        ev = evaluate(model, items, rgbd=False)
        seconds = time.perf_counter() - start
    finally:
        rec.close()
    frames = sum(len(it["boxes"]) for it in items)
    return {"success_auc": ev["test"]["success_auc"], "precision_20": ev["test"]["precision_20"],
            "rgb_fails_auc": ev["test"]["attributes"]["rgb_fails"]["success_auc"],
            "max_over_mean_load": sum(rec.imbalance) / max(1, len(rec.imbalance)),
            **{f"dropped_{m}": (float(rec.dropped[i] / rec.pairs[i]) if rec.pairs[i] > 0 else None)
               for i, m in enumerate(modalities)},
            "dropped_all": float(rec.dropped.sum() / rec.pairs.sum().clamp_min(1)),
            "fps": round(frames / seconds, 2)}


def run_macs(args: argparse.Namespace) -> None:
    import mmoe
    from benchmarks.macs import set_capacity, smallest_retaining  # benchmarks/macs.py: the emotion comparison's helpers

    from mmoe.tasks.tracking.model import MODALITIES

    out = Path(args.out) if args.out else Path(args.run_dir) / "macs.json"
    name = args.macs_config
    if args.macs_model:
        cfg = yaml.safe_load(config_path(name, Path(args.config_dir)).read_text())
        data_args = dict(cfg["data"].get("init_args") or {}) | (SMOKE_DATA if args.smoke else {})
        source = {"checkpoint": args.macs_model, "data_args": data_args}
    else:
        results = Path(args.results) if args.results else Path(args.run_dir) / "results.json"
        previous = json.loads(results.read_text())["configs"] if results.is_file() else {}
        if name in previous:
            source = previous[name]
        else:
            try:
                source = discover(name, args.run_dir)
            except SystemExit:
                if not args.smoke:
                    raise SystemExit(f"--macs: no {name!r} checkpoint in {results} or under {args.run_dir}/{name}; "
                                     f"give --macs_model PATH") from None
                source = train(name, config_path(name, Path(args.config_dir)), args)
    model = mmoe.load(source["checkpoint"])
    model.eval()
    dm = make_datamodule(source["data_args"])
    items = test_items(dm)
    factors = SMOKE_FACTORS if args.smoke else args.factors
    modalities = list(MODALITIES)
    macs_setting(model, items[:1], modalities)  # warm-up, untimed
    rows: dict[tuple[str, float | None], dict] = {("dropless", None): macs_setting(model, items, modalities)}
    for cf in factors:
        for mode in ("static", "macs", "macs_output"):  # macs_output: the output-norm value rule (a study)
            set_capacity(model, cf, mode)  # soft-MoE layers ignore it: they have no capacity
            rows[(mode, cf)] = macs_setting(model, items, modalities)
    set_capacity(model, None, "macs")
    base = rows[("dropless", None)]["success_auc"]
    floor = args.retention * base if base is not None else float("inf")
    # macs.smallest_retaining reads "weighted_f1": the same rule on the AUC
    view = {k: {"weighted_f1": r["success_auc"] if r["success_auc"] is not None else -1.0} for k, r in rows.items()}
    s_cf, m_cf = smallest_retaining(view, "static", floor), smallest_retaining(view, "macs", floor)
    o_cf = smallest_retaining(view, "macs_output", floor)
    ratio = (s_cf / m_cf) if (s_cf and m_cf) else None
    frames = sum(len(it["boxes"]) for it in items)
    print(f"\n# MACS vs static capacity, tracker {source['checkpoint']} ({name} data), test split "
          f"({len(items)} sequences, {frames} frames, one frame per forward); token-level MoE layers only")
    print("| capacity | cf | success AUC | retention | AUC rgb_fails | P@20 | busiest/mean demand | "
          + " | ".join(f"dropped {m}" for m in modalities) + " | frames/s |")
    print("|---|---|---|---|---|---|---|" + "---|" * len(modalities) + "---|")
    for (mode, cf), r in rows.items():
        drops = " | ".join("-" if r[f"dropped_{m}"] is None else f"{100 * r[f'dropped_{m}']:.1f}%" for m in modalities)
        ret = "-" if (r["success_auc"] is None or not base) else f"{r['success_auc'] / base:.4f}"
        print(f"| {mode} | {'-' if cf is None else cf} | {_num(r['success_auc'])} | {ret} | {_num(r['rgb_fails_auc'])} | "
              f"{_num(r['precision_20'])} | {r['max_over_mean_load']:.2f} | {drops} | {r['fps']:.1f} |")
    print(f"\nsmallest cf keeping >= {args.retention:.0%} of dropless AUC ({floor:.4f}): static {s_cf}, MACS {m_cf}; "
          f"static/MACS = {'n/a' if ratio is None else f'{ratio:.2f}'}; MACS with the output-norm value (macs_output) {o_cf}")
    payload = {"model": source["checkpoint"], "data": name, "smoke": args.smoke, "sequences": len(items),
               "frames": frames, "retention": args.retention,
               "rows": [{"mode": m, "cf": cf, **r} for (m, cf), r in rows.items()],
               "smallest_cf": {"static": s_cf, "macs": m_cf, "macs_output": o_cf}, "ratio": ratio,
               "threads": torch.get_num_threads()}
    _write_atomic(out, json.dumps(payload, indent=2).encode())
    print(f"results: {out}")


# ----------------------------------------------------------------------------------------- tables
def _num(v: float | None, fmt: str = ".3f") -> str:
    return "-" if v is None else format(v, fmt)


def _methods(results: dict, peers: dict | None) -> list[tuple[str, dict]]:
    rows = [(name, r["test"]) for name, r in results.items()]
    for name, p in ((peers or {}).get("trackers") or {}).items():
        rows.append((f"OpenCV {name} (RGB)", p["test"]))
    return rows


def print_tables(results: dict, peers: dict | None, out: Path) -> None:
    first = next(iter(results.values()))
    steps = {"smoke": "smoke: tiny model, 4 steps", "trial": "trial: --max_steps", "recipe": "the recipes' steps",
             "run_folder": "checkpoints of the run folders under --run_dir"}.get(first.get("run_kind"), "?")
    t = first["test"]
    print(f"\n# Tracking quality, embedded test split ({t['sequences']} sequences, {t['frames']} frames; {steps})")
    print("| method | steps | train s | success AUC | precision@20 | norm. precision | RGBD F-score (Pr / Re) |")
    print("|---|---|---|---|---|---|---|")
    for name, r in results.items():
        secs = "-" if r.get("train_seconds") is None else f"{r['train_seconds']:.0f}"
        print(f"| {name} | {r['steps']} | {secs} | " + _quality_cells(r["test"]) + " |")
    for name, p in ((peers or {}).get("trackers") or {}).items():
        print(f"| OpenCV {name} (RGB) | - | - | " + _quality_cells(p["test"]) + " |")
    methods = _methods(results, peers)
    for key, label in (("success_auc", "success AUC"), ("precision_20", "precision@20")):
        print(f"\n# Per attribute: {label} on the frames where the attribute is on (absent frames unscored; "
              f"per-sequence means over the sequences that have such frames)")
        print("| attribute | frames (scored) | " + " | ".join(m for m, _ in methods) + " |")
        print("|---|---|" + "---|" * len(methods))
        for a in ATTRIBUTE_ROWS:
            ref = first["test"]["attributes"][a]
            label_a = a if a != "rgb_fails" else "rgb_fails (" + " or ".join(RGB_FAILS) + ")"
            print(f"| {label_a} | {ref['frames']} ({ref['scored_frames']}) | "
                  + " | ".join(_num(m["attributes"][a][key]) for _, m in methods) + " |")
    sp = first["speed"]
    print(f"\n# Speed: predict() on one test sequence ({sp['frames']} frames of {sp['size'][0]}x{sp['size'][1]}, "
          f"uint8; frames/s counts the initialisation frame), median of {sp['runs']} run(s) after a warm-up, "
          f"torch threads {sp['torch_threads']}")
    print("| method | params (active per token) | search size | X | s / sequence | frames/s | load avg |")
    print("|---|---|---|---|---|---|---|")
    for name, r in results.items():
        s = r["speed"]
        print(f"| {name} | {s['params'] / 1e6:.3f} M ({s['active_params'] / 1e6:.3f} M) | {s['search_size']} | "
              f"{'yes' if s['with_x'] else 'no'} | {s['seconds']:.3f} | {s['fps']:.1f} | {s['load_avg_1min']:.2f} |")
    for name, p in ((peers or {}).get("trackers") or {}).items():
        s = p["speed"]
        print(f"| OpenCV {name} (cv2 threads {peers['cv2_threads']}) | - | - | no | {s['seconds']:.3f} | "
              f"{s['fps']:.1f} | {s['load_avg_1min']:.2f} |")
    if peers and peers.get("message"):
        print(f"\n{peers['message']}")
    print(f"\nresults: {out}")


def _quality_cells(t: dict) -> str:
    rgbd = t.get("rgbd")
    f = "-" if not rgbd else f"{_num(rgbd['f_score'])} ({_num(rgbd['precision'])} / {_num(rgbd['recall'])})"
    return f"{_num(t['success_auc'])} | {_num(t['precision_20'])} | {_num(t['norm_precision'])} | {f}"


# ------------------------------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    recipe_runs.add_recipe_arguments(parser, "tracking", DEFAULT, CONFIGS,
                                     smoke_help="tiny model/data, 4 steps, 3 short test sequences", results_help="--skip_train, --macs")
    parser.add_argument("--no_peers", action="store_true", help="skip the OpenCV trackers")
    parser.add_argument("--macs", action="store_true",
                        help="the capacity comparison (dropless, static, MACS) instead of the quality benchmark")
    parser.add_argument("--macs_model", default=None,
                        help="--macs: checkpoint or zoo name (default: the --macs_config run of --run_dir)")
    parser.add_argument("--macs_config", default="rgbd_moe", help="--macs: the config whose run and test data to use")
    parser.add_argument("--factors", nargs="+", type=float, default=FACTORS, help="--macs: capacity factors")
    parser.add_argument("--retention", type=float, default=0.99, help="--macs: AUC retention that counts as kept")
    parser.add_argument("--out", default=None,
                        help="where to write the results (default <run_dir>/results.json; --macs: <run_dir>/macs.json)")
    args = parser.parse_args()
    if args.macs:
        run_macs(args)
        return
    import mmoe

    out = Path(args.out) if args.out else Path(args.run_dir) / "results.json"
    previous: dict = {}
    if args.skip_train:
        src = Path(args.results) if args.results else Path(args.run_dir) / "results.json"
        if src.is_file():
            previous = json.loads(src.read_text())["configs"]
        elif args.results:
            raise SystemExit(f"--results: no such file {src}")
    names = args.configs or list(previous) or DEFAULT
    runs = SMOKE_RUNS if args.smoke else 3
    results: dict[str, dict] = {}
    peers = None
    for name in names:
        if args.skip_train:
            r = {k: v for k, v in previous[name].items() if k not in ("test", "speed", "eval_seconds")} \
                if name in previous else discover(name, args.run_dir)
        else:
            r = train(name, config_path(name, Path(args.config_dir)), args)
        model = mmoe.load(r["checkpoint"])
        dm = make_datamodule(r["data_args"])
        items = test_items(dm)
        r |= evaluate(model, items, depth_data(dm))
        frames, box, x = speed_inputs(dm, items[0])
        r["speed"] = model_speed(model, frames, box, x, runs)
        results[name] = r
        if peers is None and not args.no_peers:  # the configs share the test sequences (RGB); peers once
            peers = run_peers(items, rgbd=depth_data(dm), speed_frames=frames, speed_box=box, runs=runs)
            if peers.get("message"):
                print(peers["message"], flush=True)
        del model
        gc.collect()
        _write_atomic(out, json.dumps({"configs": results, "peers": peers}, indent=2).encode())
    print_tables(results, peers, out)


if __name__ == "__main__":
    main()
