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

Lesion types (:data:`LESION_TYPES`, ``simulate_lesion(..., kind=...)``; the benchmark reports each
on every modality, issue 32 item 5), chosen to be unlike the training pseudo-anomalies (hard-edged
rectangles/polygons with pasted content or a flat intensity change):

* ``bright_mass`` / ``dark_mass``: the textured soft-edged mass above, always above / below the tissue;
* ``ring``: a ring-enhancing lesion: a bright rim around a dark (necrotic) core;
* ``mass_effect``: a mass that pushes the tissue around it outwards (a radial displacement field
  falling off with distance), so the anatomy is deformed beyond the mask;
* ``diffuse``: a large faint region (edema-like): +/-0.12 over a wide, very soft blob;
* ``streak``: a thin curved bright line (a few pixels wide), a shape no rectangle imitates;
* ``spots`` and ``pattern``: the fundus and histology lesions above, on any modality.
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


def _mass_of(image: np.ndarray, rng: np.random.Generator, hyper: bool, radius_range=(0.07, 0.16),
             delta_range=(0.3, 0.5)) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[float, float], float]:
    """A mass as :func:`_mass`, with its side fixed: ``(image, mask, alpha, centre, radius)``."""
    H, W = image.shape[:2]
    side = min(H, W)
    radius = side * rng.uniform(*radius_range)
    center = _tissue_center(rng, image, int(radius) + 2)
    alpha = _blob(rng, (H, W), center, radius, softness=max(1.0, side / 40))
    region = alpha > 0.5
    local = float(image.mean(-1)[region].mean()) if region.any() else 0.5
    delta = rng.uniform(*delta_range)
    level = np.clip(local + delta, 0.7, 1.0) if hyper else np.clip(local - delta, 0.0, 0.3)
    lesion = np.clip(level + 0.08 * _smooth_noise(rng, (H, W), sigma=side / 32), 0.0, 1.0)[..., None]
    out = image * (1 - alpha[..., None]) + lesion * alpha[..., None]
    return out.astype(np.float32), region, alpha, center, radius


def _bright_mass(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    return _mass_of(image, rng, True)[:2]


def _dark_mass(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    return _mass_of(image, rng, False)[:2]


def _ring(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    H, W = image.shape[:2]
    side = min(H, W)
    radius = side * rng.uniform(0.09, 0.16)
    center = _tissue_center(rng, image, int(radius) + 2)
    outer = _blob(rng, (H, W), center, radius, softness=max(0.7, side / 64))
    inner = _blob(rng, (H, W), center, radius * rng.uniform(0.5, 0.65), softness=max(0.7, side / 64))
    rim, core = np.clip(outer - inner, 0, 1), inner
    out = image * (1 - outer[..., None]) + rng.uniform(0.85, 1.0) * rim[..., None] + rng.uniform(0.0, 0.15) * core[..., None]
    return np.clip(out, 0, 1).astype(np.float32), outer > 0.5


def _mass_effect(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    from scipy.ndimage import map_coordinates

    H, W = image.shape[:2]
    side = min(H, W)
    radius = side * rng.uniform(0.08, 0.13)
    cy, cx = _tissue_center(rng, image, int(2 * radius) + 2)
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float64)
    dy, dx = yy - cy, xx - cx
    dist = np.hypot(dy, dx) + 1e-6
    push = radius * np.exp(-((dist / (2.5 * radius)) ** 2))  # tissue at distance d came from d - push
    src = np.clip(dist - push, 0, None) / dist
    warped = np.stack([map_coordinates(image[..., c], [cy + dy * src, cx + dx * src], order=1, mode="nearest")
                       for c in range(image.shape[-1])], -1)
    hyper = bool(rng.random() < 0.5)
    level = rng.uniform(0.75, 0.95) if hyper else rng.uniform(0.05, 0.2)
    alpha = _blob(rng, (H, W), (cy, cx), radius, softness=max(1.0, side / 40))
    lesion = np.clip(level + 0.06 * _smooth_noise(rng, (H, W), sigma=side / 32), 0, 1)[..., None]
    out = warped * (1 - alpha[..., None]) + lesion * alpha[..., None]
    return np.clip(out, 0, 1).astype(np.float32), alpha > 0.5


def _diffuse(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    H, W = image.shape[:2]
    side = min(H, W)
    radius = side * rng.uniform(0.15, 0.22)
    center = _tissue_center(rng, image, int(radius) + 2)
    alpha = _blob(rng, (H, W), center, radius, softness=max(2.0, side / 12))
    delta = rng.choice([-1.0, 1.0]) * rng.uniform(0.1, 0.15)
    out = image + delta * alpha[..., None]
    return np.clip(out, 0, 1).astype(np.float32), alpha > 0.5


def _streak(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    H, W = image.shape[:2]
    side = min(H, W)
    cy, cx = _tissue_center(rng, image, int(side * 0.2))
    length, width = side * rng.uniform(0.25, 0.4), max(1.0, side * rng.uniform(0.02, 0.035))
    theta, bend = rng.uniform(0, np.pi), rng.uniform(-1.5, 1.5) / length
    t = np.linspace(-length / 2, length / 2, 200)
    py = cy + t * np.sin(theta) + bend * t ** 2 * np.cos(theta)
    px = cx + t * np.cos(theta) - bend * t ** 2 * np.sin(theta)
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float64)
    dist = np.full((H, W), np.inf)
    for y, x in zip(py[::4], px[::4]):
        dist = np.minimum(dist, np.hypot(yy - y, xx - x))
    alpha = np.clip(0.5 - (dist - width / 2) / 1.5, 0, 1)
    out = image * (1 - alpha[..., None]) + rng.uniform(0.85, 1.0) * alpha[..., None]
    return np.clip(out, 0, 1).astype(np.float32), alpha > 0.5


SIMULATORS = {"brain_mri": _mass, "ct": _mass, "fundus": _bright_spots, "histology": _pattern_change}
#: the lesion types of the benchmark's generalisation table (every type on every modality)
LESION_TYPES = {"bright_mass": _bright_mass, "dark_mass": _dark_mass, "ring": _ring, "mass_effect": _mass_effect,
                "diffuse": _diffuse, "streak": _streak, "spots": _bright_spots, "pattern": _pattern_change}


def simulate_lesion(image: np.ndarray, modality: str, rng: np.random.Generator,
                    kind: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A lesion for the test set: ``(image with lesion float32 [H, W, 3], mask bool [H, W])``.

    Args:
        image: float32 ``[H, W, 3]`` in [0, 1].
        modality: ``brain_mri``, ``ct`` (tumour-like mass), ``fundus`` (bright spots) or
            ``histology`` (tissue-pattern change); any other name gets a mass.
        rng: the generator all randomness comes from.
        kind: a name from :data:`LESION_TYPES` instead of the modality's own lesion (None).
    """
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"image: expected [H, W, 3], got shape {image.shape}")
    if kind is not None and kind not in LESION_TYPES:
        raise ValueError(f"kind: expected None or one of {list(LESION_TYPES)}, got {kind!r}")
    out, mask = (LESION_TYPES[kind] if kind is not None else SIMULATORS.get(modality, _mass))(image, rng)
    if not mask.any():  # a degenerate draw (tiny image): mark the centre pixel region so the mask is never empty
        out, mask = _mass(image, rng)
    return out, mask
