"""The test-set lesion simulator: realistic-looking anomalies with pixel masks, per modality.

This generator is used for the test set only. It is deliberately a different generator from the
pseudo-anomaly synthesis the model trains on (:mod:`mmoe.datamodules.anomaly.pseudo`: rectangles
and polygons with hard borders, filled from another place or image or with a flat intensity
change). Here the anomalies are:

* ``brain_mri`` and ``ct``: a tumour-like mass: a blob whose radius is perturbed by a few random
  Fourier harmonics, soft borders (a smooth ramp over a few pixels), a textured interior
  (low-pass filtered noise), hypo- or hyper-intense against the tissue around it, placed inside
  the body;
* ``fundus``: a cluster of small bright yellowish spots (exudate-like), soft-edged;
* ``histology``: a region where the tissue pattern changes: shifted stain colour, altered
  contrast and a denser granular (nuclei-like) texture, with a soft border.

The mask is the region where the blend weight exceeds one half. All randomness comes from the
``numpy.random.Generator`` passed in.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    n = gaussian_filter(rng.standard_normal(shape), sigma)
    return n / (n.std() + 1e-8)


def _blob(rng: np.random.Generator, shape: tuple[int, int], center: tuple[float, float], radius: float,
          softness: float) -> np.ndarray:
    """Soft blob weight in [0, 1]: radius modulated by 2-4 random harmonics, a ramp of ``softness`` px."""
    H, W = shape
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float64)
    dy, dx = yy - center[0], xx - center[1]
    theta, dist = np.arctan2(dy, dx), np.hypot(dy, dx)
    r = np.full_like(theta, radius)
    for k in range(2, 2 + int(rng.integers(2, 4))):
        r += radius * rng.uniform(0.05, 0.2) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    return np.clip(0.5 - (dist - r) / (2 * softness), 0.0, 1.0)


def _tissue_center(rng: np.random.Generator, image: np.ndarray, margin: int) -> tuple[float, float]:
    """A random centre on tissue (brighter than the background) away from the border."""
    gray = image.mean(-1)
    H, W = gray.shape
    inner = np.zeros_like(gray, dtype=bool)
    inner[margin: H - margin, margin: W - margin] = True
    candidates = np.argwhere(inner & (gray > max(0.1, np.percentile(gray, 40))))
    if len(candidates) == 0:
        candidates = np.argwhere(inner) if inner.any() else np.argwhere(np.ones_like(inner))
    y, x = candidates[rng.integers(len(candidates))]
    return float(y), float(x)


def _mass(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    H, W = image.shape[:2]
    side = min(H, W)
    radius = side * rng.uniform(0.07, 0.16)
    center = _tissue_center(rng, image, int(radius) + 2)
    alpha = _blob(rng, (H, W), center, radius, softness=max(1.0, side / 40))
    region = alpha > 0.5
    local = float(image.mean(-1)[region].mean()) if region.any() else 0.5
    hyper = bool(rng.random() < 0.5)
    delta = rng.uniform(0.3, 0.5)
    level = np.clip(local + delta, 0.7, 1.0) if hyper else np.clip(local - delta, 0.0, 0.3)
    texture = 0.08 * _smooth_noise(rng, (H, W), sigma=side / 32)
    lesion = np.clip(level + texture, 0.0, 1.0)[..., None]
    out = image * (1 - alpha[..., None]) + lesion * alpha[..., None]
    return out.astype(np.float32), region


def _bright_spots(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    H, W = image.shape[:2]
    side = min(H, W)
    cy, cx = _tissue_center(rng, image, int(side * 0.2))
    alpha = np.zeros((H, W))
    for _ in range(int(rng.integers(3, 7))):
        y = cy + rng.normal(0, side * 0.08)
        x = cx + rng.normal(0, side * 0.08)
        r = side * rng.uniform(0.025, 0.05)
        alpha = np.maximum(alpha, _blob(rng, (H, W), (y, x), r, softness=0.7))
    colour = np.array([1.0, rng.uniform(0.85, 1.0), rng.uniform(0.35, 0.6)])
    out = image * (1 - alpha[..., None]) + colour * alpha[..., None]
    return np.clip(out, 0, 1).astype(np.float32), alpha > 0.5


def _pattern_change(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    H, W = image.shape[:2]
    side = min(H, W)
    radius = side * rng.uniform(0.12, 0.2)
    center = _tissue_center(rng, image, int(radius) + 2)
    alpha = _blob(rng, (H, W), center, radius, softness=max(1.0, side / 32))
    mean = image.mean(axis=(0, 1), keepdims=True)
    changed = mean + rng.uniform(0.4, 0.7) * (image - mean)  # flatter contrast
    stain = np.array([rng.uniform(-0.25, -0.1), rng.uniform(-0.3, -0.15), rng.uniform(0.0, 0.15)])
    changed = changed + stain  # towards a denser, darker stain
    dots = (gaussian_filter(rng.random((H, W)), 0.6) > 0.56).astype(np.float64)  # granular nuclei-like texture
    changed = changed - 0.3 * gaussian_filter(dots, 0.5)[..., None]
    out = image * (1 - alpha[..., None]) + np.clip(changed, 0, 1) * alpha[..., None]
    return np.clip(out, 0, 1).astype(np.float32), alpha > 0.5


SIMULATORS = {"brain_mri": _mass, "ct": _mass, "fundus": _bright_spots, "histology": _pattern_change}


def simulate_lesion(image: np.ndarray, modality: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A lesion for the test set: ``(image with lesion float32 [H, W, 3], mask bool [H, W])``.

    Args:
        image: float32 ``[H, W, 3]`` in [0, 1].
        modality: ``brain_mri``, ``ct`` (tumour-like mass), ``fundus`` (bright spots) or
            ``histology`` (tissue-pattern change); any other name gets a mass.
        rng: the generator all randomness comes from.
    """
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"image: expected [H, W, 3], got shape {image.shape}")
    out, mask = SIMULATORS.get(modality, _mass)(image, rng)
    if not mask.any():  # a degenerate draw (tiny image): mark the centre pixel region so the mask is never empty
        out, mask = _mass(image, rng)
    return out, mask
