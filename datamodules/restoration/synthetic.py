"""The embedded image set: photographs bundled in the scikit-image wheel (no download).

Splits are by whole image, so no test pixel is ever seen in training:

* test: ``chelsea``, ``coffee`` (colour photographs);
* validation: ``rocket`` (colour photograph);
* train: ``astronaut`` and ``motorcycle`` (the left view of ``stereo_motorcycle``, whose
  Middlebury disparity gives a real depth map for haze) are colour photographs;
  ``immunohistochemistry`` and ``hubble_deep_field`` are colour but not photographs of
  scenes; ``camera``, ``coins``, ``grass``, ``gravel`` are greyscale photographs stacked to
  three equal channels, added for texture variety (the wheel holds only five colour
  photographs, and the three held out leave two for training).

Left out: ``cat`` (the same picture as ``chelsea``), the right view of ``stereo_motorcycle``
(the same scene as the left), ``retina``/``colorwheel``/``page``/``text`` (mostly flat),
``moon``/``brick`` (more greyscale would outweigh the colour images), and
the images that scikit-image downloads on first use (``brain``, ``kidney``, ``cells3d``, ...).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy.ndimage import distance_transform_edt

from mmoe.datamodules.restoration.degradations import DEGRADATION_NAMES, NOISE_SIGMAS

TRAIN_IMAGES: tuple[str, ...] = (
    "astronaut", "motorcycle", "immunohistochemistry", "hubble_deep_field",
    "camera", "coins", "grass", "gravel",
)
VAL_IMAGES: tuple[str, ...] = ("rocket",)
TEST_IMAGES: tuple[str, ...] = ("chelsea", "coffee")
#: seeds of the fixed validation crops and test degradations; independent of the training
#: seed, so every run is validated and tested on the same samples
VAL_SEED = 1_000_003
TEST_SEED = 2_000_003


@dataclass(frozen=True)
class EmbeddedImage:
    """One bundled image.

    Args:
        name: the name in the split lists above.
        image: float32 ``[H, W, 3]`` in [0, 1].
        depth: float32 ``[H, W]`` in [0, 1] (larger is farther) where the image has a real
            depth map, else None.
    """

    name: str
    image: np.ndarray
    depth: np.ndarray | None = None


@dataclass(frozen=True)
class SyntheticTestSample:
    """One test sample: a whole image, a degradation, its noise level and the seed of its draw."""

    image: str
    degradation: str
    sigma: float
    seed: tuple[int, ...]


def disparity_to_depth(disparity: np.ndarray) -> np.ndarray:
    """Depth ~ 1 / disparity, holes (non-finite or <= 0 disparity) filled with the nearest valid
    value, rescaled to [0, 1] (larger is farther)."""
    valid = np.isfinite(disparity) & (disparity > 0)
    depth = np.zeros(disparity.shape, dtype=np.float64)
    depth[valid] = 1.0 / disparity[valid]
    # nearest valid pixel for every hole (occlusions and the unmatched left border)
    _, (rows, cols) = distance_transform_edt(~valid, return_indices=True)
    depth = depth[rows, cols]
    return ((depth - depth.min()) / max(float(np.ptp(depth)), 1e-12)).astype(np.float32)


def _load(name: str) -> EmbeddedImage:
    import skimage.data  # here: only the embedded set needs scikit-image

    if name == "motorcycle":
        left, _, disparity = skimage.data.stereo_motorcycle()
        return EmbeddedImage(name, left.astype(np.float32) / 255.0, disparity_to_depth(disparity))
    pixels = getattr(skimage.data, name)()
    if pixels.ndim == 2:  # greyscale photograph: the same values in R, G and B
        pixels = np.repeat(pixels[:, :, None], 3, axis=2)
    return EmbeddedImage(name, pixels[:, :, :3].astype(np.float32) / 255.0)


@lru_cache(maxsize=1)
def load_images() -> dict[str, EmbeddedImage]:
    """All embedded images by name, loaded once per process (about 30 MB as float32)."""
    return {name: _load(name) for name in TRAIN_IMAGES + VAL_IMAGES + TEST_IMAGES}


def split_images() -> dict[str, list[EmbeddedImage]]:
    """``{"train": [...], "val": [...], "test": [...]}`` of the embedded images."""
    images = load_images()
    names = {"train": TRAIN_IMAGES, "val": VAL_IMAGES, "test": TEST_IMAGES}
    return {split: [images[n] for n in split_names] for split, split_names in names.items()}


def synthetic_test_samples(
    degradations: list[str], sigmas: tuple[float, ...] = NOISE_SIGMAS
) -> list[SyntheticTestSample]:
    """Every test image x every degradation, and denoise once per noise level in ``sigmas``.

    Args:
        degradations: degradation names, in label order.
        sigmas: noise levels (0-255 scale) of the denoise samples.

    Each sample's seed depends only on (image, degradation, sigma), so a test sample is the
    same whichever other degradations are configured.
    """
    out = []
    for i, image in enumerate(TEST_IMAGES):
        for name in degradations:
            for sigma in (sigmas if name == "denoise" else (0.0,)):
                seed = (TEST_SEED, i, DEGRADATION_NAMES.index(name), int(round(float(sigma) * 100)))
                out.append(SyntheticTestSample(image, name, float(sigma), seed))
    return out

