"""The released zoo checkpoint loads by name from the repository, offline, and solves fresh problems."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import baselines as B
import mmoe
from mmoe.datamodules.pde.datamodule import generate_family, unit_scales

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = {m["name"]: m for m in json.loads((ROOT / "checkpoints" / "manifest.json").read_text())["models"]}


@pytest.fixture
def zoo_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MMOE_HOME", str(tmp_path))
    monkeypatch.delenv("MMOE_ZOO_URL", raising=False)  # default: this repository's checkpoints/
    monkeypatch.delenv("MMOE_OFFLINE", raising=False)
    return tmp_path


def test_pde_release_is_listed_and_loads_by_name(zoo_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    names = [m["name"] for m in mmoe.list_models()]
    assert "pde-nested-moe-2d" in names
    model = mmoe.load("pde-nested-moe-2d")  # copied into the cache, sha256 checked
    assert not model.training
    monkeypatch.setenv("MMOE_OFFLINE", "1")  # now from the cache only
    again = mmoe.load("pde-nested-moe-2d")
    field = torch.randn(1, 5, 32, 32)
    torch.testing.assert_close(model.predict(field, family="heat"), again.predict(field, family="heat"))
    row = next(m for m in mmoe.list_models() if m["name"] == "pde-nested-moe-2d")
    assert row["preprocess"]["target_scale"] == {"darcy": 0.01}  # predict's units travel with the entry


@pytest.mark.parametrize("family,resolution", [
    ("darcy", 64), ("heat", 32), ("allen_cahn", 48), ("advection", 32), ("advection", 64)])
def test_pde_release_solves_new_problems(zoo_env: Path, family: str, resolution: int) -> None:
    """Fresh samples (a seed the training never used), also at other resolutions than 32x32, in
    physical units in and out, within 1.1x the manifest's error at that grid (48x48: the 32x32 number).
    Measured on these 6 samples: darcy 64 0.0153, heat 32 0.0028, allen_cahn 48 0.0147, advection 32
    0.0089, advection 64 0.0088."""
    key = f"rel_l2_{family}" + (f"_{resolution}x{resolution}" if resolution in (64, 128) else "")
    bound = 1.1 * MANIFEST["pde-nested-moe-2d"]["metrics"][key]
    model = mmoe.load("pde-nested-moe-2d")
    data = generate_family(family, 6, resolution, seed=12345, progress=False)
    in_scale, target_scale = unit_scales(family)
    x = np.zeros((6, 5, resolution, resolution), dtype=np.float32)
    x[:, 0] = data["field"] * in_scale  # physical units (the stored field is divided by the scale)
    x[:, 1:] = data["params"][:, :, None, None]  # constant parameter channels
    pred = model.predict(x, family=family)[:, 0]
    target = data["target"] * target_scale
    rel = np.linalg.norm((pred - target).reshape(6, -1), axis=1) / np.linalg.norm(target.reshape(6, -1), axis=1)
    print(f"RESULT pde fresh {family} {resolution}: rel_l2={rel.mean():.5f}")
    assert rel.mean() < bound, rel


def test_emotion_release_predicts_new_conversations(zoo_env: Path) -> None:
    """Fresh conversations (a seed the training never used), through the public predict API."""
    from mmoe.datamodules.emotion.synthetic import CLASSES, UTTERANCE_TYPES, generate_conversations

    assert "emotion-mister-e" in [m["name"] for m in mmoe.list_models()]
    model = mmoe.load("emotion-mister-e")
    hits, gates = [], {t: [] for t in UTTERANCE_TYPES}
    for conv in generate_conversations(12, seed=4242):
        out = model.predict([{"audio": u["audio"], "sample_rate": u["sample_rate"], "text": u["text"]} for u in conv])
        for u, r in zip(conv, out):
            hits.append(r["label"] == CLASSES[u["label"]])
            gates[UTTERANCE_TYPES[u["type"]]].append(r["gate"])
    print(f"RESULT emotion fresh predict: accuracy={np.mean(hits):.4f}")
    assert np.mean(hits) >= 0.98 * MANIFEST["emotion-mister-e"]["metrics"]["accuracy"], np.mean(hits)  # measured 1.0
    # on text-cued utterances the gate trusts the text expert more than the speech expert
    text_gate = {e: np.mean([g[e] for g in gates["text"]]) for e in ("speech", "text")}
    assert text_gate["text"] > text_gate["speech"], text_gate


def test_zoo_load_uses_the_verified_bytes(zoo_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading by name reads the cached file once, hashes those bytes and builds from them: the
    file is never reopened by path after the check (no window to swap it)."""
    import safetensors

    mmoe.load("pde-nested-moe-2d")  # warm the cache

    def no_reopen(*args, **kwargs):
        raise AssertionError("the weights file was reopened by path")

    monkeypatch.setattr(safetensors, "safe_open", no_reopen)
    monkeypatch.setattr("safetensors.torch.load_file", no_reopen)
    model = mmoe.load("pde-nested-moe-2d")
    assert model.pre.family_names == ["darcy", "heat", "advection", "allen_cahn"]


#: measured on this crop (sigma 25): model 27.19 dB, Gaussian blur 27.12 dB, median 26.41 dB (input 21.08)
FRESH_DENOISE_BEHIND_BLUR = pytest.mark.xfail(strict=True, reason=(
    "issue 37: on a fresh sigma-25 crop the released restoration model is 0.07 dB ahead of a Gaussian blur "
    "(27.19 vs 27.12 dB; needs >= 1 dB)"))


@pytest.mark.parametrize("degradation,gain", [pytest.param("denoise", 4.0, marks=FRESH_DENOISE_BEHIND_BLUR),
                                              ("derain", 3.0), ("dehaze", 2.0)])
def test_restoration_release_restores_fresh_degradations(zoo_env: Path, degradation: str, gain: float) -> None:
    """A held-out photograph degraded with a seed the test split never used: the released model
    recognises the degradation and improves PSNR, through the public predict API (uint8 in and out),
    by at least 1 dB more than a Gaussian blur or a median filter at their best settings (measured:
    derain 25.62 vs median 23.90, dehaze 19.11 vs 15.04 dB)."""
    from skimage.data import coffee

    from mmoe.datamodules.restoration.degradations import degrade

    model = mmoe.load("restoration-all-in-one-3")
    clean = coffee()[100:292, 150:406].astype(np.float32) / 255  # 192x256 crop of a test image
    degraded, _ = degrade(degradation, clean, np.random.default_rng(777), sigma=25.0 if degradation == "denoise" else None)
    out = model.predict(np.round(degraded * 255).astype(np.uint8))
    assert out["image"].dtype == np.uint8 and out["image"].shape == clean.shape
    assert out["degradation"] == degradation and 0 < out["probability"] <= 1

    def psnr(x: np.ndarray) -> float:
        return float(10 * np.log10(1 / np.mean((x.astype(np.float64) - clean) ** 2)))

    assert psnr(out["image"] / 255) > psnr(degraded) + gain
    # the same fresh crop through the baselines of the test-split test below (same inputs, same margin)
    blur, median = B.best_blur_psnr(degraded, clean), B.best_median_psnr(degraded, clean)
    print(f"RESULT restoration fresh {degradation}: model={psnr(out['image'] / 255):.4f}, input={psnr(degraded):.4f}, "
          f"blur={blur:.4f}, median={median:.4f}")
    assert psnr(out["image"] / 255) >= max(blur, median) + BASELINE_MARGIN_DB, (blur, median)


@pytest.mark.parametrize("modality", ["fundus", "histology"])
def test_anomaly_release_finds_fresh_lesions(zoo_env: Path, modality: str) -> None:
    """Held-out normal views with lesions drawn by a seed the test split never used: the released
    model scores each lesion copy above its normal view, and its map is higher inside the lesion."""
    from mmoe.datamodules.anomaly.lesions import simulate_lesion
    from mmoe.datamodules.anomaly.sources import views_by_split

    model = mmoe.load("anomaly-mtl-mad")
    views = views_by_split("test", (modality,))[:4]
    assert views
    rng = np.random.default_rng(4242)
    pairs = [(v.image, *simulate_lesion(v.image, modality, rng)) for v in views]
    normal = model.predict([p[0] for p in pairs], modality=modality)
    lesion = model.predict([p[1] for p in pairs], modality=modality)
    for (_, _, mask), s_normal, s_lesion, m in zip(pairs, normal["score"], lesion["score"], lesion["map"]):
        assert s_lesion > s_normal
        assert m.shape == mask.shape and m[mask].mean() > m[~mask].mean()


def test_tracking_release_follows_fresh_targets(zoo_env: Path) -> None:
    """Six sequences rendered from the test split's photographs with seeds the test split never
    used, tracked through the public predict API from the first box: the released tracker's mean
    IoU is far above a box that stays where it started, and above its own RGB-only run (X is used)."""
    from mmoe.datamodules.tracking.synthetic import render_sequence
    from mmoe.tasks.tracking.metrics import box_iou

    model = mmoe.load("tracking-rgbd-moe")
    tracked, still, rgb_only = [], [], []
    for k in range(6):
        s = render_sequence(9_000 + k, "test", "depth")
        scored = s.present.copy()
        scored[0] = False
        truth = torch.tensor(s.boxes[scored])

        def mean_iou(boxes: np.ndarray) -> float:
            return float(box_iou(torch.as_tensor(boxes, dtype=torch.float64), truth.double()).mean())

        out = model.predict(list(s.frames), s.boxes[0], x_frames=list(s.x))
        assert out["boxes"].shape == (len(s.frames), 4)
        np.testing.assert_allclose(out["boxes"][0], s.boxes[0], atol=1e-6)
        tracked.append(mean_iou(out["boxes"][scored]))
        still.append(mean_iou(np.repeat(s.boxes[:1], int(scored.sum()), 0)))
        rgb_only.append(mean_iou(model.predict(list(s.frames), s.boxes[0])["boxes"][scored]))
    assert np.mean(tracked) > np.mean(still) + 0.25, (tracked, still)
    assert np.mean(tracked) > np.mean(rgb_only) + 0.25, (tracked, rgb_only)


def test_separation_release_separates_fresh_mixtures(zoo_env: Path) -> None:
    """Eight mixtures of the test split's held-out voices and sentences, paired with a seed the test
    split never used and separated through the public predict API (whole utterances, chunked as predict
    does): the released separator's SI-SNR improvement is clearly positive on average, where an even split
    of the mixture is 0 dB by definition."""
    from mmoe.datamodules.separation.datamodule import FixedMixtures, SeparationDataModule
    from mmoe.tasks.separation.metrics import SISNRi

    model = mmoe.load("separation-tfmoe-8k")
    dm = SeparationDataModule(test_mixtures=100, progress=False)  # the released model's test utterances
    fresh = FixedMixtures(dm.utterances("test"), 8, None, (-5.0, 5.0), seed=987_654, noise_snr=None)
    metric = SISNRi()
    for k in range(len(fresh)):
        item = fresh[k]
        out = model.predict(item["mixture"].numpy(), sample_rate=8000)
        assert out.shape == tuple(item["sources"].shape) and np.isfinite(out).all()
        metric.update(torch.from_numpy(out)[None], item["sources"][None], item["mixture"][None])
    print(f"RESULT separation fresh: si_snri={float(metric.compute()):.4f}")
    assert float(metric.compute()) > 0.9 * MANIFEST["separation-tfmoe-8k"]["metrics"]["test_si_snri_db"]  # 5.12 dB


@pytest.mark.parametrize("n", [32, 64, 128])
def test_pde_release_readme_example_matches_the_exact_solution(zoo_env: Path, n: int) -> None:
    """The README's example, at three grids: heat on sin(2 pi x) sin(2 pi y) by name (nu=), against
    its exact decay; and advection by velocity= against the exact shift; within 1.1x the manifest's
    64x64 errors at every grid (measured 0.0039 / 0.0085 at 32, 0.0039 / 0.0083 at 64 and 128)."""
    metrics = MANIFEST["pde-nested-moe-2d"]["metrics"]
    model = mmoe.load("pde-nested-moe-2d")
    x = (np.arange(n) + 0.5) / n
    u0 = np.sin(2 * np.pi * x)[:, None] * np.sin(2 * np.pi * x)[None, :]
    u = model.predict(u0, family="heat", nu=0.01)
    exact = u0 * np.exp(-8 * np.pi**2 * 0.01)
    print(f"RESULT readme heat {n}: {np.linalg.norm(u - exact) / np.linalg.norm(exact):.5f}")
    assert np.linalg.norm(u - exact) / np.linalg.norm(exact) < 1.1 * metrics["readme_heat_exact_rel_l2_64x64"]
    c, t = (0.6, -0.3), 0.5
    shifted = np.sin(2 * np.pi * (x - c[0] * t))[:, None] * np.sin(2 * np.pi * (x - c[1] * t))[None, :]
    u = model.predict(u0, family="advection", velocity=c)
    print(f"RESULT readme advection {n}: {np.linalg.norm(u - shifted) / np.linalg.norm(shifted):.5f}")
    assert np.linalg.norm(u - shifted) / np.linalg.norm(shifted) < 1.1 * metrics["readme_advection_exact_rel_l2_64x64"]


# ==================================================================================================
# Bounds tied to the manifest's measurements and to cheap baselines on the same inputs (issue 37
# item 1). Each test evaluates the released file on the inputs its manifest metric was measured on
# (or, where regenerating those costs too much, a documented fresh subset, with the factor between
# the manifest number and the bound stated), asserts the metric is within a small tolerance of the
# manifest, and that the model beats baselines from tests/baselines.py on the same inputs by a
# margin. Each test prints one "RESULT" line (pytest -s) with what it measured. Numbers in the
# comments: 2-core CI machine, 2026-12-02.
# ==================================================================================================



def released(name: str):
    """The released file of ``name`` (loaded from the checkout's checkpoints/ by path), float32, eval mode."""
    return mmoe.load(str(ROOT / "checkpoints" / MANIFEST[name]["file"])).float().eval()


def recipe_data_args(name: str) -> dict:
    """The datamodule arguments of the recipe the released ``name`` was trained and measured with."""
    cfg = yaml.safe_load((ROOT / "configs" / MANIFEST[name]["config"]).read_text())
    return {k: v for k, v in cfg["data"]["init_args"].items() if k != "num_workers"}


def result(task: str, **values: float) -> None:
    print(f"RESULT {task}: " + ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
                                         for k, v in values.items()))


# ------------------------------------------------------------------------------------ restoration
#: measured on the 6 denoise images of the test split (sigma 15/25/50 on chelsea and coffee): the
#: released model 26.55 dB; a Gaussian blur (best of sigma 0.5-2 per image) 27.74 dB, a median filter
#: (best of 3x3/5x5 per image) 26.64 dB. A fixed sigma-1 blur alone gives 27.15 dB.
DENOISE_BEHIND_BLUR = pytest.mark.xfail(strict=True, reason=(
    "issue 37: on its own test split the released restoration model denoises no better than a blur: "
    "26.55 dB vs Gaussian blur 27.74 dB and median 26.64 dB (needs >= 1 dB ahead of both)"))
PSNR_TOLERANCE_DB = 0.1  # the same images, seeds and weights: only float summation order differs
BASELINE_MARGIN_DB = 1.0


@pytest.fixture(scope="module")
def restoration_split() -> dict[str, dict[str, list[float]]]:
    """Per degradation: PSNR of the released model (its test path: whole images), of the best Gaussian
    blur and of the best median filter, on the manifest's inputs: the recipe's embedded test split."""
    from mmoe.datamodules.restoration.datamodule import RestorationDataModule

    model = released("restoration-all-in-one-3")
    dm = RestorationDataModule(**recipe_data_args("restoration-all-in-one-3"))
    dm.setup("test")
    names = list(dm.degradations)
    out: dict[str, dict[str, list[float]]] = {n: {"model": [], "blur": [], "median": [], "input": []} for n in names}
    for i, item in enumerate(dm.test_dataset.items):
        s = dm.test_dataset[i]
        with torch.no_grad():
            pred = model({k: s[k][None] for k in ("input", "target", "degradation", "sigma")})["image"].clamp(0, 1)
        clean, degraded = (s[k].permute(1, 2, 0).double().numpy() for k in ("target", "input"))
        row = out[names[item.label]]
        row["model"].append(B.psnr(pred[0].permute(1, 2, 0).double().numpy(), clean))
        row["blur"].append(B.best_blur_psnr(degraded, clean))
        row["median"].append(B.best_median_psnr(degraded, clean))
        row["input"].append(B.psnr(degraded, clean))
    return out


@pytest.mark.parametrize("degradation", [pytest.param("denoise", marks=DENOISE_BEHIND_BLUR), "derain", "dehaze"])
def test_restoration_release_reproduces_its_manifest_and_beats_filters(restoration_split: dict,
                                                                       degradation: str) -> None:
    """The manifest's psnr_<degradation> (mean over the test split's images of that degradation) to
    0.1 dB, and at least 1 dB ahead of a Gaussian blur and of a median filter, each at its best
    setting per image."""
    r = {k: float(np.mean(v)) for k, v in restoration_split[degradation].items()}
    manifest = MANIFEST["restoration-all-in-one-3"]["metrics"][f"psnr_{degradation}"]
    result(f"restoration {degradation}", manifest=manifest, **r)
    assert r["model"] >= manifest - PSNR_TOLERANCE_DB, (r, manifest)
    assert r["model"] >= r["blur"] + BASELINE_MARGIN_DB, r
    assert r["model"] >= r["median"] + BASELINE_MARGIN_DB, r


# ------------------------------------------------------------------------------------ pde
PDE_SPLIT_FAMILIES = ("darcy", "heat", "advection")
#: (family, resolution, source, factor): bound = factor x the manifest's rel_l2_<family>[_64x64].
#: "split": the manifest's own inputs (seed 0, 1024 samples per family, its last 205 = the test
#: split), factor 1.1. "fresh": 16 samples of seed 12345 (regenerating allen_cahn's 1024 costs 50 s;
#: the manifest's 64x64 numbers come from benchmarks/pde_resolution.py's resampling). Measured on
#: those 16: darcy 64 0.0201 (manifest 0.0225), heat 64 0.0026 (0.0033), advection 64 0.0091
#: (0.0094), allen_cahn 32 0.0172 (0.0142: 1.21x) and 64 0.0171 (0.0141: 1.21x), hence 1.35 there.
PDE_CASES = [("darcy", 32, "split", 1.1), ("heat", 32, "split", 1.1), ("advection", 32, "split", 1.1),
             ("allen_cahn", 32, "fresh", 1.35), ("darcy", 64, "fresh", 1.1), ("heat", 64, "fresh", 1.1),
             ("advection", 64, "fresh", 1.1), ("allen_cahn", 64, "fresh", 1.35)]


@pytest.fixture(scope="module")
def pde_model():
    return released("pde-nested-moe-2d")


@pytest.mark.parametrize("family,resolution,source,factor", PDE_CASES)
def test_pde_release_reproduces_its_manifest_and_beats_blur_and_identity(pde_model, family: str, resolution: int,
                                                                         source: str, factor: float) -> None:
    """Mean relative L2 within ``factor`` x the manifest's, in physical units through predict; a copy
    of the prediction blurred by one 32-grid cell (sigma = resolution / 32 px) and the identity (the
    input field as the answer) are both outside the bound and at least 1.5x the model's error."""
    from mmoe.datamodules.pde.datamodule import split_indices

    if source == "split":
        data = generate_family(family, 1024, resolution, seed=0, progress=False)
        fid = ["darcy", "heat", "advection", "allen_cahn"].index(family)
        take = split_indices(1024, 0.2, 0.1, 0, fid)[2]  # the datamodule's test split of the recipe
    else:
        data = generate_family(family, 16, resolution, seed=12345, progress=False)
        take = np.arange(16)
    in_scale, target_scale = unit_scales(family)
    x = np.zeros((len(take), 5, resolution, resolution), dtype=np.float32)
    x[:, 0] = data["field"][take] * in_scale
    x[:, 1:] = data["params"][take][:, :, None, None]
    target = data["target"][take] * target_scale
    pred = pde_model.predict(x, family=family)[:, 0]
    key = f"rel_l2_{family}" + ("" if resolution == 32 else f"_{resolution}x{resolution}")
    bound = factor * MANIFEST["pde-nested-moe-2d"]["metrics"][key]
    err = float(B.rel_l2(pred, target).mean())
    blurred = float(B.rel_l2(B.blur_fields(pred, resolution / 32, periodic=family != "darcy"), target).mean())
    identity = float(B.rel_l2(x[:, 0], target).mean())
    result(f"pde {family} {resolution}", source=source, n=len(take), manifest=bound / factor, bound=bound,
           model=err, blurred=blurred, identity=identity)
    assert err < bound, (err, bound)
    for name, base in (("blurred prediction", blurred), ("identity", identity)):
        assert base > bound and base > 1.5 * err, (name, base, err, bound)


# ------------------------------------------------------------------------------------ tracking
TRACKING_TOLERANCE = 0.95  # the same 24 sequences measure 0.700 here against the manifest's 0.6922
TRACKING_MARGIN = 0.1  # success AUC ahead of each baseline


def test_tracking_release_reproduces_its_manifest_and_beats_still_box_and_template_matching() -> None:
    """The recipe's 24 test sequences tracked from their first true box as the manifest's benchmark
    does: success AUC and precision@20 within 5% of the manifest, and the success AUC 0.1 ahead of a
    box that stays where it started and of OpenCV template matching (the first frame's box searched
    over each whole frame). Measured: model 0.700, template matching 0.548, still box 0.300."""
    from mmoe.datamodules.tracking.datamodule import TrackingDataModule
    from mmoe.tasks.tracking.metrics import PrecisionAt, SuccessAUC

    model = released("tracking-rgbd-moe")
    dm = TrackingDataModule(**recipe_data_args("tracking-rgbd-moe"))
    dm.setup("test")
    prompt = bool(model.hparams.get("modality_prompt", False))
    aucs = {k: SuccessAUC() for k in ("model", "still", "template")}
    p20 = PrecisionAt(20)
    for i in range(len(dm.test_dataset)):
        item = dm.test_dataset[i]
        gt, present = item["boxes"].double(), item["present"].bool()
        with torch.no_grad():
            boxes = model.track_sequence(item["frames"], item.get("x"), item["boxes"][0],
                                         item.get("modality") if prompt else None)["boxes"].double()
        frames = [np.asarray(f) for f in item["frames"].numpy()]
        init = item["boxes"][0].numpy()
        for name, pred in (("model", boxes), ("still", torch.from_numpy(B.still_box(frames, init))),
                           ("template", torch.from_numpy(B.template_matching(frames, init)))):
            aucs[name].update(pred, gt, present)
        p20.update(boxes, gt, present)
    got = {k: float(v.compute()) for k, v in aucs.items()}
    manifest = MANIFEST["tracking-rgbd-moe"]["metrics"]
    result("tracking", sequences=len(dm.test_dataset), manifest_auc=manifest["success_auc"], auc=got["model"],
           still=got["still"], template=got["template"], precision_20=float(p20.compute()),
           manifest_p20=manifest["precision_20"])
    assert got["model"] >= TRACKING_TOLERANCE * manifest["success_auc"], (got, manifest)
    assert float(p20.compute()) >= TRACKING_TOLERANCE * manifest["precision_20"], (float(p20.compute()), manifest)
    assert got["model"] >= got["still"] + TRACKING_MARGIN, got
    assert got["model"] >= got["template"] + TRACKING_MARGIN, got


# ------------------------------------------------------------------------------------ separation
SEPARATION_TOLERANCE = 0.95  # the same 100 mixtures measure 4.89 dB here against the manifest's 4.857
SEPARATION_MARGIN_DB = 3.0


def test_separation_release_reproduces_its_manifest_and_beats_mixture_and_spectral_split() -> None:
    """The manifest's 100 test mixtures, separated as its benchmark does (the model's forward on the
    whole mixture): SI-SNRi within 5% of the manifest and 3 dB ahead of the mixture itself (0 dB by
    definition) and of two oracle-free spectral masks: a binary split of each frame at its median-energy
    frequency (measured -2.68 dB) and a two-component NMF soft mask (+0.94 dB)."""
    from mmoe.datamodules.separation.datamodule import SeparationDataModule
    from mmoe.tasks.separation.metrics import SISNRi

    model = released("separation-tfmoe-8k")
    dm = SeparationDataModule(**recipe_data_args("separation-tfmoe-8k"), progress=False)
    dm.setup("test")
    metrics = {k: SISNRi() for k in ("model", "mixture", "spectral_split", "nmf")}
    for k in range(len(dm.test_set)):
        item = dm.test_set[k]
        mix, src = item["mixture"][None], item["sources"][None]
        with torch.no_grad():
            est = model({"mixture": mix})["sources"]
        split = torch.from_numpy(B.spectral_split(item["mixture"].numpy())).to(mix.dtype)[None]
        nmf = torch.from_numpy(B.nmf_masks(item["mixture"].numpy())).to(mix.dtype)[None]
        for name, e in (("model", est), ("mixture", torch.stack([mix, mix], 1)), ("spectral_split", split),
                        ("nmf", nmf)):
            metrics[name].update(e, src, mix)
    got = {k: float(v.compute()) for k, v in metrics.items()}
    manifest = MANIFEST["separation-tfmoe-8k"]["metrics"]["test_si_snri_db"]
    result("separation", mixtures=len(dm.test_set), manifest=manifest, **got)
    assert got["model"] >= SEPARATION_TOLERANCE * manifest, (got, manifest)
    assert abs(got["mixture"]) < 1e-6, got  # the metric itself: the mixture improves nothing
    assert got["model"] >= max(got["mixture"], got["spectral_split"], got["nmf"]) + SEPARATION_MARGIN_DB, got


# ------------------------------------------------------------------------------------ emotion
def test_emotion_release_accuracy_and_gate_on_fresh_conversations() -> None:
    """The recipe's data settings with a fresh seed (the manifest's split needs all 2000 training
    conversations generated, 54 s; 96 test conversations here): weighted F1 and per-type accuracy
    within the stated fractions of the manifest's, far ahead of always answering the most frequent
    class, and the gate target of BENCHMARKS.md: on speech-cued turns the speech expert, on text-cued
    turns the text expert, gets the largest mean gate weight."""
    from torchmetrics.functional.classification import multiclass_f1_score

    from mmoe.datamodules.emotion.datamodule import EmotionDataModule
    from mmoe.datamodules.emotion.synthetic import UTTERANCE_TYPES

    model = released("emotion-mister-e")
    args = recipe_data_args("emotion-mister-e") | {"num_conversations": 120, "seed": 4242, "test_fraction": 0.8}
    dm = EmotionDataModule(**args)
    dm.setup("test")
    logits, labels, types, gates = [], [], [], []
    with torch.no_grad():
        for batch in dm.test_dataloader():
            out = model(batch)
            valid = batch["utterance_index"] >= 0
            logits.append(out["logits"])
            gates.append(out["gate"])
            labels.append(batch["labels"][valid])
            types.append(batch["types"][valid])
    preds = torch.cat(logits).argmax(-1)
    labels, types, gates = torch.cat(labels), torch.cat(types), torch.cat(gates).float()
    experts = list(model.model.experts)
    f1 = float(multiclass_f1_score(preds, labels, dm.num_classes, average="weighted"))
    majority = float((labels == labels.mode().values).float().mean())
    per_type = {name: float((preds[types == t] == labels[types == t]).float().mean())
                for t, name in enumerate(UTTERANCE_TYPES)}
    gate = {name: dict(zip(experts, gates[types == t].mean(0).tolist())) for t, name in enumerate(UTTERANCE_TYPES)}
    manifest = MANIFEST["emotion-mister-e"]["metrics"]
    result("emotion", utterances=len(labels), manifest_f1=manifest["weighted_f1"], f1=f1, majority=majority,
           **{f"acc_{k}": v for k, v in per_type.items()},
           **{f"gate_{t}_{e}": w for t in ("speech", "text") for e, w in gate[t].items()})
    assert f1 >= 0.98 * manifest["weighted_f1"], (f1, manifest["weighted_f1"])
    for name in UTTERANCE_TYPES:
        assert per_type[name] >= 0.98 * manifest[f"accuracy_{name}"], (name, per_type, manifest)
    assert f1 >= majority + 0.5, (f1, majority)
    assert max(gate["speech"], key=gate["speech"].get) == "speech", gate["speech"]
    assert max(gate["text"], key=gate["text"].get) == "text", gate["text"]
