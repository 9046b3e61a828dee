"""The embedded medical images: files that ship inside installed wheels (no download), grouped by
modality as the BMAD sub-datasets are.

* ``brain_mri``: dipy's ``S0_10slices.nii.gz`` (10 axial b0 slices) and ``t1_coronal_slice.npy``;
  nibabel's test volume ``example4d.nii.gz`` (first volume, slices 4..19); pydicom's
  ``MR_small.dcm``; matplotlib's ``s1045.ima.gz`` (a 256 x 256 big-endian uint16 head MRI slice).
* ``ct``: pydicom's ``CT_small.dcm`` and ``693_J2KI.dcm`` (a 512 x 512 CT slice, JPEG 2000; left
  out when no JPEG 2000 decoder is installed), cut into tiles.
* ``fundus``: scikit-image's ``retina`` (cut into tiles, background tiles dropped) and
  ``microaneurysms`` (a small greyscale fundus crop).
* ``histology``: scikit-image's ``immunohistochemistry``, cut into tiles.

Every file is opened by its path inside the installed package: pydicom's ``get_testdata_file`` and
the dipy / scikit-image fetchers are never called for files they would download (scikit-image's
``brain``, ``kidney`` and ``skin`` are downloads and are not used).

Each image becomes one or more *views* (a slice, or a tile of a large image). Splits are by view:
slices of a volume go round-robin to train / val / test (index mod 4: 0 test, 2 val, 1 and 3
train), tiles likewise by tile index; single small slices go to training. No test pixel is seen
in training. Intensities: greyscale images are mapped to [0, 1] by their 0.5 and 99.5
percentiles (:func:`to_unit_range`), colour uint8 images are divided by 255.
"""

from __future__ import annotations

import gzip
import importlib.util
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal

import numpy as np

from mmoe.inputs.image import read_image

MODALITIES: tuple[str, ...] = ("brain_mri", "ct", "fundus", "histology")
Split = Literal["train", "val", "test"]


@dataclass(frozen=True)
class View:
    """One embedded normal image.

    Args:
        modality: one of :data:`MODALITIES`.
        name: readable id, e.g. ``dipy_S0/slice3``.
        image: float32 ``[H, W, 3]`` in [0, 1] (greyscale repeated to three channels).
        split: ``"train"``, ``"val"`` or ``"test"``.
    """

    modality: str
    name: str
    image: np.ndarray
    split: Split


def _package_file(package: str, *parts: str) -> Path:
    """A data file inside an installed package (never downloaded)."""
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(f"package {package!r} is not installed")
    return Path(spec.origin).parent.joinpath(*parts)


def to_unit_range(image: np.ndarray, low: float = 0.5, high: float = 99.5) -> np.ndarray:
    """Greyscale ``[H, W]`` of any numeric dtype -> float32 in [0, 1] by its ``low``/``high``
    percentiles (scanner units differ between files; a flat image becomes zeros)."""
    a = np.asarray(image, dtype=np.float64)
    lo, hi = np.percentile(a, [low, high])
    if not hi > lo:
        return np.zeros(a.shape, dtype=np.float32)
    return np.clip((a - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def _gray3(a: np.ndarray) -> np.ndarray:
    return np.repeat(to_unit_range(a)[..., None], 3, axis=-1)


def _split_of(index: int) -> Split:
    return ("test", "train", "val", "train")[index % 4]


def _tiles(image: np.ndarray, tile: int) -> list[np.ndarray]:
    H, W = image.shape[:2]
    return [image[r: r + tile, c: c + tile] for r in range(0, H - tile + 1, tile) for c in range(0, W - tile + 1, tile)]


def _read_dicom(name: str) -> np.ndarray | None:
    import pydicom

    path = _package_file("pydicom", "data", "test_files", name)
    if not path.is_file():
        return None
    try:
        return pydicom.dcmread(path).pixel_array
    except Exception:  # a compressed file without an installed decoder: the view is left out
        return None


def _brain_views() -> list[View]:
    import nibabel as nib

    views: list[View] = []
    s0 = np.asarray(nib.load(_package_file("dipy", "data", "files", "S0_10slices.nii.gz")).dataobj)[..., 0]
    for k in range(s0.shape[2]):
        views.append(View("brain_mri", f"dipy_S0/slice{k}", _gray3(np.rot90(s0[:, :, k])), _split_of(k)))
    vol = np.asarray(nib.load(_package_file("nibabel", "tests", "data", "example4d.nii.gz")).dataobj)[..., 0]
    for i, k in enumerate(range(4, 20)):
        views.append(View("brain_mri", f"nibabel_example4d/slice{k}", _gray3(np.rot90(vol[:, :, k])), _split_of(i)))
    t1 = np.load(_package_file("dipy", "data", "files", "t1_coronal_slice.npy"))
    views.append(View("brain_mri", "dipy_t1_coronal", _gray3(t1), "train"))
    raw = gzip.open(_package_file("matplotlib", "mpl-data", "sample_data", "s1045.ima.gz")).read()
    s1045 = np.frombuffer(raw, dtype=">u2").reshape(256, 256)
    views.append(View("brain_mri", "matplotlib_s1045", _gray3(s1045), "train"))
    mr = _read_dicom("MR_small.dcm")
    if mr is not None:
        views.append(View("brain_mri", "pydicom_MR_small", _gray3(mr), "train"))
    return views


def _ct_views() -> list[View]:
    views: list[View] = []
    ct_small = _read_dicom("CT_small.dcm")
    if ct_small is not None:
        img = _gray3(ct_small)
        for i, t in enumerate(_tiles(img, 64)):
            views.append(View("ct", f"pydicom_CT_small/tile{i}", t, _split_of(i)))
    big = _read_dicom("693_J2KI.dcm")
    if big is not None:
        img = _gray3(big)
        for i, t in enumerate(_tiles(img, 128)):
            if t.mean() > 0.05:  # air outside the body is no tissue
                views.append(View("ct", f"pydicom_693_J2KI/tile{i}", t, _split_of(i)))
    return views


def _fundus_views() -> list[View]:
    views: list[View] = []
    retina = read_image(_package_file("skimage", "data", "retina.jpg"), "retina.jpg").astype(np.float32) / 255.0
    kept = [t for t in _tiles(retina, 235) if (t.mean(-1) > 0.12).mean() > 0.9]  # inside the fundus disc
    for i, t in enumerate(kept):
        views.append(View("fundus", f"skimage_retina/tile{i}", np.ascontiguousarray(t), _split_of(i)))
    micro = read_image(_package_file("skimage", "data", "microaneurysms.png"), "microaneurysms.png")
    views.append(View("fundus", "skimage_microaneurysms", _gray3(micro), "train"))
    return views


def _histology_views() -> list[View]:
    ihc = read_image(_package_file("skimage", "data", "ihc.png"), "ihc.png")[..., :3].astype(np.float32) / 255.0
    return [View("histology", f"skimage_ihc/tile{i}", np.ascontiguousarray(t), _split_of(i))
            for i, t in enumerate(_tiles(ihc, 128))]


@lru_cache(maxsize=1)
def load_views() -> tuple[View, ...]:
    """Every embedded view, in a fixed order (modality, then file, then slice / tile)."""
    views = [*_brain_views(), *_ct_views(), *_fundus_views(), *_histology_views()]
    return tuple(View(v.modality, v.name, np.ascontiguousarray(v.image, dtype=np.float32), v.split) for v in views)


def views_by_split(split: Split, modalities: tuple[str, ...] = MODALITIES) -> list[View]:
    return [v for v in load_views() if v.split == split and v.modality in modalities]
