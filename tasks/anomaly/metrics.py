"""Anomaly detection metrics as torchmetrics ``Metric``s: image AUROC, pixel AUROC and AUPRO.

* AUROC (image and pixel) is the Mann-Whitney statistic with tied scores counted one half
  (average ranks), i.e. the exact area under the ROC curve with ties.
* AUPRO (Bergmann et al., MVTec AD): the per-region overlap (PRO) curve is the mean, over every
  connected region of every ground-truth mask (``scipy.ndimage.label``, 4-connectivity), of the
  share of the region's pixels scored at or above a threshold, against the false-positive rate on
  the normal pixels of all images at the same threshold. The curve is computed exactly at every
  distinct score (one sort, no threshold grid), integrated with the trapezoid rule from FPR 0 up
  to ``max_fpr`` (interpolating the point at ``max_fpr``) and divided by ``max_fpr``: a perfect
  detector scores 1. (anomalib's older implementation divided by the largest FPR the curve
  reached instead, which inflates the value when the curve stops short of ``max_fpr``.)
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.ndimage import label as label_regions
from torchmetrics import Metric
from torchmetrics.functional.classification import binary_auroc
from torchmetrics.utilities import dim_zero_cat


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` for binary ``labels`` (ties count one half); NaN when one class is missing."""
    scores, labels = np.asarray(scores, dtype=np.float64).ravel(), np.asarray(labels).ravel().astype(bool)
    if labels.all() or not labels.any():
        return math.nan  # torchmetrics would return 0 with a warning
    return float(binary_auroc(torch.from_numpy(scores), torch.from_numpy(labels).long()))


def aupro(maps: np.ndarray, masks: np.ndarray, max_fpr: float = 0.3) -> float:
    """Normalised area under the PRO curve up to ``max_fpr`` (see the module docstring).

    Args:
        maps: anomaly maps ``[N, H, W]`` (higher is more anomalous).
        masks: ground truth ``[N, H, W]`` (nonzero = anomalous).
        max_fpr: upper FPR limit of the integral, in (0, 1].

    Returns NaN when there is no anomalous region or no normal pixel.
    """
    maps = np.asarray(maps, dtype=np.float64)
    masks = np.asarray(masks).astype(bool)
    if maps.shape != masks.shape or maps.ndim != 3:
        raise ValueError(f"maps/masks: expected equal shapes [N, H, W], got {maps.shape} and {masks.shape}")
    if not 0 < max_fpr <= 1:
        raise ValueError(f"max_fpr: expected a value in (0, 1], got {max_fpr!r}")
    weights = np.zeros(maps.shape, dtype=np.float64)
    sizes: list[np.ndarray] = []
    labelled = []
    for i in range(len(masks)):
        lab, n = label_regions(masks[i])
        labelled.append((lab, n))
        if n:
            sizes.append(np.bincount(lab.ravel(), minlength=n + 1)[1:])
    num_regions = sum(len(s) for s in sizes)
    n_normal = int((~masks).sum())
    if num_regions == 0 or n_normal == 0:
        return math.nan
    for i, (lab, n) in enumerate(labelled):
        if n:
            size = np.bincount(lab.ravel(), minlength=n + 1).astype(np.float64)
            w = np.where(lab > 0, 1.0 / (num_regions * size[lab]), 0.0)
            weights[i] = w
    scores = maps.ravel()
    order = np.argsort(-scores, kind="stable")
    s_sorted = scores[order]
    fp = np.cumsum((~masks.ravel())[order]) / n_normal
    pro = np.cumsum(weights.ravel()[order])
    # one curve point per distinct score: the last index of each run of equal scores
    last = np.r_[np.nonzero(np.diff(s_sorted))[0], len(s_sorted) - 1]
    fpr = np.r_[0.0, fp[last]]
    pro = np.r_[0.0, pro[last]]
    inside = fpr <= max_fpr
    x, y = fpr[inside], pro[inside]
    if x[-1] < max_fpr and len(x) < len(fpr):  # interpolate the curve at max_fpr
        x1, y1 = fpr[len(x)], pro[len(x)]
        y_end = y[-1] + (y1 - y[-1]) * (max_fpr - x[-1]) / (x1 - x[-1])
        x, y = np.r_[x, max_fpr], np.r_[y, y_end]
    area = float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2))
    return area / max_fpr


class AnomalyMetrics(Metric):
    """Image AUROC, pixel AUROC and AUPRO@``max_fpr``, per modality and averaged over modalities.

    ``update(maps [B, H, W], scores [B], masks [B, H, W], labels [B], modality [B], has_mask [B])``;
    images without pixel labels (``has_mask`` False) count for the image AUROC only.
    ``compute()`` returns ``{"image_auroc", "pixel_auroc", "aupro"}`` (means over the modalities
    where the metric is defined) and ``"<metric>_<modality name>"`` per modality.

    Args:
        modality_names: names in modality-id order.
        max_fpr: the AUPRO integration limit.
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, modality_names: list[str], max_fpr: float = 0.3) -> None:
        super().__init__()
        self.modality_names, self.max_fpr = list(modality_names), max_fpr
        for name in ("maps", "scores", "masks", "labels", "modality", "has_mask"):
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(self, maps: torch.Tensor, scores: torch.Tensor, masks: torch.Tensor, labels: torch.Tensor,
               modality: torch.Tensor, has_mask: torch.Tensor) -> None:
        if maps.ndim != 3 or masks.shape != maps.shape or scores.shape != maps.shape[:1]:
            raise ValueError(f"maps/masks/scores: expected [B, H, W], [B, H, W], [B], got {tuple(maps.shape)}, "
                             f"{tuple(masks.shape)}, {tuple(scores.shape)}")
        self.maps.append(maps.detach().float())
        self.scores.append(scores.detach().float())
        self.masks.append(masks.detach() > 0.5)
        self.labels.append(labels.detach().long())
        self.modality.append(modality.detach().long())
        self.has_mask.append(has_mask.detach().bool())

    def compute(self) -> dict[str, torch.Tensor]:
        maps, scores = dim_zero_cat(self.maps).cpu().numpy(), dim_zero_cat(self.scores).cpu().numpy()
        masks, labels = dim_zero_cat(self.masks).cpu().numpy(), dim_zero_cat(self.labels).cpu().numpy()
        mods, has = dim_zero_cat(self.modality).cpu().numpy(), dim_zero_cat(self.has_mask).cpu().numpy()
        out: dict[str, float] = {}
        per: dict[str, list[float]] = {"image_auroc": [], "pixel_auroc": [], "aupro": []}
        for m, name in enumerate(self.modality_names):
            sel = mods == m
            if not sel.any():
                continue
            px = sel & has
            values = {"image_auroc": auroc(scores[sel], labels[sel]),
                      "pixel_auroc": auroc(maps[px], masks[px]) if px.any() else math.nan,
                      "aupro": aupro(maps[px], masks[px], self.max_fpr) if px.any() else math.nan}
            for key, v in values.items():
                out[f"{key}_{name}"] = v
                if not math.isnan(v):
                    per[key].append(v)
        for key, vs in per.items():
            out[key] = float(np.mean(vs)) if vs else math.nan
        return {k: torch.tensor(v, dtype=torch.float32) for k, v in out.items()}
