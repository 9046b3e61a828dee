"""The released zoo checkpoint loads by name from the repository, offline, and solves fresh problems."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import mmoe
from mmoe.datamodules.pde.datamodule import generate_family, unit_scales

ROOT = Path(__file__).resolve().parents[1]


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


@pytest.mark.parametrize("family,resolution,bound", [
    ("darcy", 64, 0.05), ("heat", 32, 0.02), ("allen_cahn", 48, 0.05), ("advection", 32, 0.03), ("advection", 64, 0.06)])
def test_pde_release_solves_new_problems(zoo_env: Path, family: str, resolution: int, bound: float) -> None:
    """Fresh samples (a seed the training never used), also at other resolutions than 32x32, in
    physical units in and out."""
    model = mmoe.load("pde-nested-moe-2d")
    data = generate_family(family, 6, resolution, seed=12345, progress=False)
    in_scale, target_scale = unit_scales(family)
    x = np.zeros((6, 5, resolution, resolution), dtype=np.float32)
    x[:, 0] = data["field"] * in_scale  # physical units (the stored field is divided by the scale)
    x[:, 1:] = data["params"][:, :, None, None]  # constant parameter channels
    pred = model.predict(x, family=family)[:, 0]
    target = data["target"] * target_scale
    rel = np.linalg.norm((pred - target).reshape(6, -1), axis=1) / np.linalg.norm(target.reshape(6, -1), axis=1)
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
    assert np.mean(hits) > 0.85, np.mean(hits)
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


@pytest.mark.parametrize("degradation,gain", [("denoise", 4.0), ("derain", 3.0), ("dehaze", 2.0)])
def test_restoration_release_restores_fresh_degradations(zoo_env: Path, degradation: str, gain: float) -> None:
    """A held-out photograph degraded with a seed the test split never used: the released model
    recognises the degradation and improves PSNR, through the public predict API (uint8 in and out)."""
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
    assert float(metric.compute()) > 2.5


@pytest.mark.parametrize("n", [32, 64, 128])
def test_pde_release_readme_example_matches_the_exact_solution(zoo_env: Path, n: int) -> None:
    """The README's example, at three grids: heat on sin(2 pi x) sin(2 pi y) by name (nu=), against
    its exact decay; and advection by velocity= against the exact shift."""
    model = mmoe.load("pde-nested-moe-2d")
    x = (np.arange(n) + 0.5) / n
    u0 = np.sin(2 * np.pi * x)[:, None] * np.sin(2 * np.pi * x)[None, :]
    u = model.predict(u0, family="heat", nu=0.01)
    exact = u0 * np.exp(-8 * np.pi**2 * 0.01)
    assert np.linalg.norm(u - exact) / np.linalg.norm(exact) < 0.02
    c, t = (0.6, -0.3), 0.5
    shifted = np.sin(2 * np.pi * (x - c[0] * t))[:, None] * np.sin(2 * np.pi * (x - c[1] * t))[None, :]
    u = model.predict(u0, family="advection", velocity=c)
    assert np.linalg.norm(u - shifted) / np.linalg.norm(shifted) < 0.03
