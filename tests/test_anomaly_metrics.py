"""Anomaly metrics against independent implementations: AUROC against scikit-learn, AUPRO against an
exact per-region, per-threshold loop written here."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.ndimage import label
from sklearn.metrics import roc_auc_score

from mmoe.tasks.anomaly.metrics import AnomalyMetrics, aupro, auroc


def reference_aupro(maps: np.ndarray, masks: np.ndarray, max_fpr: float = 0.3) -> float:
    """Exact PRO curve: at every distinct score t (descending), FPR over all normal pixels and the mean
    over all ground-truth regions of the share of the region's pixels with score >= t; trapezoid
    up to max_fpr (the point at max_fpr linearly interpolated), divided by max_fpr."""
    regions = []
    for i in range(len(masks)):
        lab, n = label(masks[i])
        regions += [(i, lab == r) for r in range(1, n + 1)]
    normal = ~masks
    points = [(0.0, 0.0)]
    for t in sorted(np.unique(maps), reverse=True):
        pred = maps >= t
        fpr = (pred & normal).sum() / normal.sum()
        pro = np.mean([(pred[i] & reg).sum() / reg.sum() for i, reg in regions])
        points.append((fpr, pro))
    area = 0.0
    for (x0, y0), (x1, y1) in zip(points[:-1], points[1:]):
        if x0 >= max_fpr:
            break
        if x1 > max_fpr:  # cut the segment at max_fpr
            y1 = y0 + (y1 - y0) * (max_fpr - x0) / (x1 - x0)
            x1 = max_fpr
        area += (x1 - x0) * (y0 + y1) / 2
    return area / max_fpr


def _blobs(rng: np.random.Generator, n: int, h: int, w: int) -> np.ndarray:
    masks = np.zeros((n, h, w), dtype=bool)
    for i in range(n):
        for _ in range(rng.integers(0, 3)):
            y, x = rng.integers(0, h - 3), rng.integers(0, w - 3)
            masks[i, y: y + rng.integers(1, 5), x: x + rng.integers(1, 6)] = True
    return masks


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_aupro_matches_exact_per_region_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    masks = _blobs(rng, 4, 13, 11)  # odd sizes, several regions per image, some images without any
    masks[0, 2:5, 2:6] = True
    # scores correlated with the mask, quantised so that many ties occur
    maps = np.round(rng.random(masks.shape) + 0.8 * masks, 1)
    assert aupro(maps, masks) == pytest.approx(reference_aupro(maps, masks), abs=1e-10)
    assert aupro(maps, masks, max_fpr=1.0) == pytest.approx(reference_aupro(maps, masks, 1.0), abs=1e-10)


def test_aupro_bounds_and_normalisation() -> None:
    rng = np.random.default_rng(0)
    masks = _blobs(rng, 30, 32, 32)
    masks[0, :4, :4] = True
    perfect = masks.astype(float) + 0.01 * rng.random(masks.shape)
    assert aupro(perfect, masks) == pytest.approx(1.0)
    # a random detector has PRO = FPR on average: area 0.3^2 / 2 over 0.3 = 0.15
    assert aupro(rng.random(masks.shape), masks) == pytest.approx(0.15, abs=0.02)
    assert math.isnan(aupro(rng.random((2, 5, 5)), np.zeros((2, 5, 5), dtype=bool)))
    with pytest.raises(ValueError, match="max_fpr"):
        aupro(perfect, masks, max_fpr=0)


@pytest.mark.parametrize("seed", [0, 1])
def test_auroc_matches_sklearn_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.random(500) < 0.3
    scores = np.round(rng.random(500) + 0.5 * labels, 1)  # many ties
    assert auroc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-6)  # torchmetrics: float32
    assert math.isnan(auroc(scores, np.zeros(500, dtype=bool)))


def test_anomaly_metrics_per_modality_and_mean() -> None:
    rng = np.random.default_rng(3)
    N, H, W = 12, 9, 10
    masks = _blobs(rng, N, H, W)
    labels = masks.reshape(N, -1).any(1)
    masks[0] = False
    labels[0] = False
    maps = rng.random((N, H, W)) + masks
    scores = maps.reshape(N, -1).max(1)
    modality = np.array([0, 1] * 6)
    has_mask = np.ones(N, dtype=bool)
    has_mask[3] = False  # image label only: left out of the pixel metrics
    metric = AnomalyMetrics(["a", "b", "c"])
    for chunk in (slice(0, 5), slice(5, N)):  # two updates
        metric.update(torch.tensor(maps[chunk]), torch.tensor(scores[chunk]), torch.tensor(masks[chunk]).float(),
                      torch.tensor(labels[chunk]).long(), torch.tensor(modality[chunk]), torch.tensor(has_mask[chunk]))
    out = metric.compute()
    for m, name in enumerate(["a", "b"]):
        sel = modality == m
        px = sel & has_mask
        assert float(out[f"image_auroc_{name}"]) == pytest.approx(roc_auc_score(labels[sel], scores[sel]), abs=1e-6)
        assert float(out[f"pixel_auroc_{name}"]) == pytest.approx(
            roc_auc_score(masks[px].ravel(), maps[px].ravel()), abs=1e-6)
        assert float(out[f"aupro_{name}"]) == pytest.approx(reference_aupro(maps[px], masks[px]), abs=1e-6)
    assert "image_auroc_c" not in out  # no image of that modality
    assert float(out["aupro"]) == pytest.approx((float(out["aupro_a"]) + float(out["aupro_b"])) / 2, abs=1e-6)
    with pytest.raises(ValueError, match="maps"):
        metric.update(torch.zeros(2, 3), torch.zeros(2), torch.zeros(2, 3), torch.zeros(2), torch.zeros(2),
                      torch.ones(2, dtype=torch.bool))
