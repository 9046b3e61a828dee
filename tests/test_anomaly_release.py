"""The released anomaly model (checkpoints/anomaly-mtl-mad.safetensors, issue 32): the image score
follows the map (a simulated lesion on a held-out normal view raises it), in every modality of the
embedded data, for the test-set lesions and for the benchmark's other lesion types; predict's
decisions come from the thresholds stored in the file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import mmoe
from mmoe.datamodules.anomaly.lesions import LESION_TYPES, simulate_lesion
from mmoe.datamodules.anomaly.sources import MODALITIES, views_by_split

FILE = Path(__file__).resolve().parents[1] / "checkpoints" / "anomaly-mtl-mad.safetensors"


@pytest.fixture(scope="module")
def model():
    return mmoe.load(str(FILE))


def _held_out(modality: str) -> list[np.ndarray]:
    """The test split's normal views of ``modality`` (never trained on, nor calibrated on), and mirrored."""
    views = [v.image for v in views_by_split("test", (modality,))]
    return views + [np.ascontiguousarray(v[:, ::-1]) for v in views]


#: measured on the released file (see BENCHMARKS.md): CT lesions drawn at the body's edge or on air
#: (a dark mass in dark background) barely change the CT map, so the score does not rise there
CT_SHORTFALL = pytest.mark.xfail(strict=True, reason="issue 32: CT rise rate measured 0.85 (17/20) < 0.95")


@pytest.mark.parametrize("modality", [m if m != "ct" else pytest.param(m, marks=CT_SHORTFALL) for m in MODALITIES])
def test_a_simulated_lesion_raises_the_score(model, modality: str) -> None:
    """Two test-set lesions (a seed the test split never used) on each held-out normal view: the
    score rises in >= 95% of cases, and the map is higher inside the lesion than outside."""
    rng = np.random.default_rng(777)
    pairs = [(x, *simulate_lesion(x, modality, rng)) for x in _held_out(modality) for _ in range(2)]
    normal = model.predict([p[0] for p in pairs], modality=modality)
    lesion = model.predict([p[1] for p in pairs], modality=modality)
    rises = [b > a for a, b in zip(normal["score"], lesion["score"])]
    inside = [m[mask].mean() > m[~mask].mean() for m, (_, _, mask) in zip(lesion["map"], pairs)]
    assert np.mean(rises) >= 0.95, (np.mean(rises), len(rises))
    assert np.mean(inside) >= 0.9, np.mean(inside)


def test_other_lesion_types_raise_the_score_on_brain_mri(model) -> None:
    """Lesion types the training pseudo-anomalies do not imitate (rings, mass effect, diffuse,
    streaks...) on held-out brain MRI: the score rises for most of them (measured per type in
    BENCHMARKS.md); no type lowers the score on average."""
    views = _held_out("brain_mri")
    normal = np.asarray(model.predict(views, modality="brain_mri")["score"])
    rates = {}
    for kind in LESION_TYPES:
        rng = np.random.default_rng(778)
        scores = np.asarray(model.predict([simulate_lesion(x, "brain_mri", rng, kind=kind)[0] for x in views],
                                          modality="brain_mri")["score"])
        rates[kind] = float(np.mean(scores > normal))
        assert scores.mean() > normal.mean(), (kind, scores.mean(), normal.mean())
    assert np.mean(list(rates.values())) >= 0.85, rates


def test_decisions_come_from_the_stored_thresholds(model) -> None:
    """Every modality has thresholds in the file; lesion copies are flagged at least as often as their
    normal views, the mask covers more of the lesion than of the rest, and an fpr or a threshold
    given to predict moves the decision as it should."""
    assert model.model.table_ready.tolist() == [1.0] * len(MODALITIES)
    for modality in ("brain_mri", "histology"):
        rng = np.random.default_rng(779)
        pairs = [(x, *simulate_lesion(x, modality, rng)) for x in _held_out(modality)]
        normal = model.predict([p[0] for p in pairs], modality=modality)
        lesion = model.predict([p[1] for p in pairs], modality=modality)
        assert np.mean(lesion["is_anomalous"]) > np.mean(normal["is_anomalous"]), modality
        inside = np.mean([m[mask].mean() for m, (_, _, mask) in zip(lesion["mask"], pairs)])
        outside = np.mean([m[~mask].mean() for m, (_, _, mask) in zip(lesion["mask"], pairs)])
        assert inside > outside + 0.3, (modality, inside, outside)
        for s, t, flag in zip(lesion["score"], lesion["threshold"], lesion["is_anomalous"]):
            assert flag == (s > t)
    x = _held_out("ct")[0]
    strict, loose = model.predict(x, modality="ct", fpr=1e-3), model.predict(x, modality="ct", fpr=0.5)
    assert strict["threshold"] > loose["threshold"]
    assert model.predict(x, modality="ct", threshold=strict["score"] - 1e-3)["is_anomalous"]
    assert not model.predict(x, modality="ct", threshold=strict["score"] + 1e-3)["is_anomalous"]


# ---------------------------------------------------------------------------- manifest and baseline (issue 37)
#: measured on the test split (88 images; 2026-12-02): fundus pixel AUROC model 0.984, per-pixel
#: z-score 0.979 (fundus lesions are bright blobs on a dark, smooth fundus: the z-score sees them too)
FUNDUS_PIXEL_NEAR_ZSCORE = pytest.mark.xfail(strict=True, reason=(
    "issue 37: fundus pixel AUROC of the released model 0.984 vs a per-pixel z-score detector 0.979 "
    "on the same test split (needs >= 0.05 ahead)"))
AUROC_TOLERANCE = 0.01  # the same images and weights as the manifest: only float summation order differs
AUROC_MARGIN = 0.05


@pytest.fixture(scope="module")
def test_split_metrics() -> dict[str, dict[str, float]]:
    """Image and pixel AUROC per modality of the released model and of a per-pixel z-score detector
    (fitted per modality on the normal training views, resized and mirrored) on the manifest's inputs:
    the recipe's embedded test split, true modality given (as the manifest's benchmark does)."""
    import torch
    import yaml

    from baselines import PixelZScore
    from mmoe.datamodules.anomaly import AnomalyDataModule
    from mmoe.datamodules.anomaly.datamodule import resize
    from mmoe.tasks.anomaly.metrics import AnomalyMetrics

    cfg = yaml.safe_load((FILE.parents[1] / "configs" / "anomaly" / "default.yaml").read_text())
    dm = AnomalyDataModule(**{k: v for k, v in cfg["data"]["init_args"].items() if k != "num_workers"})
    dm.setup()
    samples = [dm.test_dataset[i] for i in range(len(dm.test_dataset))]
    images = torch.stack([s["image"] for s in samples]).float()
    modality = torch.stack([s["modality"] for s in samples])
    with torch.no_grad():
        out = mmoe.load(str(FILE)).float().eval().model.anomaly_maps(images, modality)
    zmaps = np.zeros((len(samples), *images.shape[2:]))
    for m, items in dm.train_dataset.items.items():
        views = [resize(it.load(), dm.hparams.image_size) for it in items]
        detector = PixelZScore(np.stack(views + [v[:, ::-1] for v in views]))
        sel = (modality == m).numpy()
        zmaps[sel] = detector.maps(images[sel].permute(0, 2, 3, 1).numpy())

    def metrics(maps, scores) -> dict[str, float]:
        metric = AnomalyMetrics(dm.modality_names)
        metric.update(torch.as_tensor(maps).float(), torch.as_tensor(scores).float(),
                      torch.stack([s["mask"][0] for s in samples]), torch.stack([s["label"] for s in samples]),
                      modality, torch.stack([s["has_mask"] for s in samples]))
        return {k: float(v) for k, v in metric.compute().items()}

    return {"model": metrics(out["map"], out["score"]), "zscore": metrics(zmaps, PixelZScore.scores(zmaps))}


@pytest.mark.parametrize("modality,metric", [
    pytest.param(m, k, marks=FUNDUS_PIXEL_NEAR_ZSCORE) if (m, k) == ("fundus", "pixel_auroc") else (m, k)
    for m in MODALITIES for k in ("image_auroc", "pixel_auroc")])
def test_test_split_auroc_matches_the_manifest_and_beats_a_pixel_zscore(test_split_metrics, modality: str,
                                                                        metric: str) -> None:
    """Every modality the released model covers: its image and pixel AUROC on the test split equal the
    manifest's (to 0.01) and are at least 0.05 above a per-pixel z-score detector's on the same images."""
    manifest = {m["name"]: m for m in json.loads((FILE.parent / "manifest.json").read_text())["models"]}
    want = manifest["anomaly-mtl-mad"]["metrics"][f"{metric}_{modality}"]
    got, zscore = (test_split_metrics[k][f"{metric}_{modality}"] for k in ("model", "zscore"))
    print(f"RESULT anomaly {modality} {metric}: manifest={want:.4f}, model={got:.4f}, zscore={zscore:.4f}")
    assert got >= want - AUROC_TOLERANCE, (got, want)
    assert got >= zscore + AUROC_MARGIN, (got, zscore)
