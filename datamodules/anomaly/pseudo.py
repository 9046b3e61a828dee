"""Training pseudo-anomaly synthesis (the self-supervised segmentation proxy task's labels).

Deliberately unlike the test-set lesion simulator (:mod:`mmoe.datamodules.anomaly.lesions`):
the shapes here are rectangles and random polygons with hard borders, and the content is one of

* ``cutpaste``: a rectangle of the same image, flipped and moved elsewhere (CutPaste);
* ``foreign``: a polygon filled with the same place of another normal image (foreign patch);
* ``intensity``: a polygon whose intensity is shifted, scaled, or replaced by noise.

All randomness comes from the ``numpy.random.Generator`` passed in.
"""

from __future__ import annotations

import numpy as np

KINDS = ("cutpaste", "foreign", "intensity")


def _polygon_mask(rng: np.random.Generator, H: int, W: int, min_frac: float, max_frac: float) -> np.ndarray:
    from skimage.draw import polygon

    cy, cx = rng.uniform(0.15, 0.85) * H, rng.uniform(0.15, 0.85) * W
    r = rng.uniform(min_frac, max_frac) * min(H, W)
    n = int(rng.integers(3, 8))
    angles = np.sort(rng.uniform(0, 2 * np.pi, n))
    radii = r * rng.uniform(0.5, 1.0, n)
    rr, cc = polygon(cy + radii * np.sin(angles), cx + radii * np.cos(angles), (H, W))
    mask = np.zeros((H, W), dtype=bool)
    mask[rr, cc] = True
    return mask


def _rect(rng: np.random.Generator, H: int, W: int, min_frac: float, max_frac: float) -> tuple[int, int, int, int]:
    h = max(2, int(rng.uniform(min_frac, max_frac) * H))
    w = max(2, int(rng.uniform(min_frac, max_frac) * W))
    return int(rng.integers(0, H - h + 1)), int(rng.integers(0, W - w + 1)), h, w


def synthesize(image: np.ndarray, rng: np.random.Generator, other: np.ndarray | None = None,
               kind: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A pseudo-anomaly: ``(image float32 [H, W, 3], mask float32 [H, W] in {0, 1})``.

    Args:
        image: float32 ``[H, W, 3]`` in [0, 1].
        rng: the generator all randomness comes from.
        other: another normal image of the same size for ``foreign`` (None: ``foreign`` falls
            back to ``cutpaste``).
        kind: one of :data:`KINDS`; None draws one.
    """
    H, W = image.shape[:2]
    kind = KINDS[rng.integers(len(KINDS))] if kind is None else kind
    if kind not in KINDS:
        raise ValueError(f"kind: expected one of {KINDS}, got {kind!r}")
    out = image.copy()
    if kind == "foreign" and (other is None or other.shape != image.shape):
        kind = "cutpaste"
    if kind == "cutpaste":
        y, x, h, w = _rect(rng, H, W, 0.1, 0.3)
        sy, sx = int(rng.integers(0, H - h + 1)), int(rng.integers(0, W - w + 1))
        patch = image[sy: sy + h, sx: sx + w]
        if rng.random() < 0.5:
            patch = patch[:, ::-1]
        if rng.random() < 0.5:
            patch = patch[::-1]
        patch = np.clip(patch * rng.uniform(0.8, 1.2), 0, 1)
        out[y: y + h, x: x + w] = patch
        mask = np.zeros((H, W), dtype=bool)
        mask[y: y + h, x: x + w] = np.abs(patch - image[y: y + h, x: x + w]).max(-1) > 0.02
    elif kind == "foreign":
        mask = _polygon_mask(rng, H, W, 0.08, 0.3)
        out[mask] = other[mask]
    else:
        mask = _polygon_mask(rng, H, W, 0.06, 0.3)
        mode = rng.integers(3)
        region = out[mask]
        if mode == 0:
            region = region + rng.choice([-1, 1]) * rng.uniform(0.15, 0.5)
        elif mode == 1:
            region = region * rng.uniform(0.3, 0.7) if rng.random() < 0.5 else 1 - (1 - region) * rng.uniform(0.3, 0.7)
        else:
            region = region + rng.normal(0, rng.uniform(0.1, 0.25), region.shape)
        out[mask] = np.clip(region, 0, 1)
    mask &= np.abs(out - image).max(-1) > 0.02  # only pixels that changed are anomalous
    return out.astype(np.float32), mask.astype(np.float32)
