"""Reader of the BMAD benchmark layout (Bao et al., 2024)::

    <dataset>/train/good/[img/]*.png
    <dataset>/{valid,val,test}/good/[img/]*.png
    <dataset>/{valid,val,test}/Ungood/img/*.png     masks: Ungood/label/ or Ungood/anomaly_mask/
                                                    (same file names)
    Camelyon16 variant: {valid,test}/{good,Ungood}/*.png, no img/, no masks (image labels only)

Folder names are matched case-insensitively (``ungood``, ``Ungood``, ``UNGOOD``), as the released
sub-datasets differ.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
MASK_FOLDERS = ("label", "anomaly_mask")
EVAL_SPLITS = {"val": ("valid", "val"), "test": ("test",)}


@dataclass(frozen=True)
class BMADRecord:
    """One image: its path, 0 normal / 1 anomalous, and its mask path (None: no pixel labels)."""

    image: str
    label: int
    mask: str | None


def _child(folder: Path, name: str) -> Path | None:
    """The sub-folder of ``folder`` named ``name`` in any letter case, or None."""
    if not folder.is_dir():
        return None
    for p in sorted(folder.iterdir()):
        if p.is_dir() and p.name.lower() == name.lower():
            return p
    return None


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _class_folder(folder: Path, label: int) -> list[BMADRecord]:
    img_dir = _child(folder, "img")
    if img_dir is None:  # Camelyon16 variant (or train/good): images directly, no masks
        return [BMADRecord(str(p), label, None) for p in _images(folder)]
    mask_dir = None
    for name in MASK_FOLDERS:
        mask_dir = mask_dir or _child(folder, name)
    records = []
    for p in _images(img_dir):
        mask = None
        if mask_dir is not None:
            candidates = [m for m in _images(mask_dir) if m.stem == p.stem]
            mask = str(candidates[0]) if candidates else None
            if label == 1 and mask is None:
                raise ValueError(f"root: anomalous image {str(p)!r} has no mask of the same name in {str(mask_dir)!r}")
        records.append(BMADRecord(str(p), label, mask))
    return records


def read_bmad(root: str | os.PathLike, split: str) -> list[BMADRecord]:
    """Records of ``split`` (``"train"``: ``train/good``; ``"val"``: ``valid`` or ``val``;
    ``"test"``) under the BMAD sub-dataset folder ``root``. A normal image of an evaluation split
    with masks elsewhere has ``mask=None`` (all normal). Raises ``ValueError`` when the split's
    folders are missing or hold no image."""
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"root: expected a BMAD dataset folder, got {str(root)!r} (not a folder)")
    if split == "train":
        good = _child(_child(root, "train") or root / "-", "good")
        if good is None:
            raise ValueError(f"root: expected {str(root / 'train' / 'good')!r} (BMAD layout)")
        records = _class_folder(good, 0)
    elif split in EVAL_SPLITS:
        folder = None
        for name in EVAL_SPLITS[split]:
            folder = folder or _child(root, name)
        if folder is None:
            raise ValueError(f"root: expected one of {list(EVAL_SPLITS[split])} under {str(root)!r} (BMAD layout)")
        records = []
        for name, label in (("good", 0), ("ungood", 1)):
            sub = _child(folder, name)
            if sub is not None:
                records += _class_folder(sub, label)
    else:
        raise ValueError(f"split: expected 'train', 'val' or 'test', got {split!r}")
    if not records:
        raise ValueError(f"root: no images for split {split!r} under {str(root)!r}")
    return records


def read_image(path: str) -> np.ndarray:
    """A PNG/JPEG/... as float32 ``[H, W, 3]`` in [0, 1] (greyscale via :func:`to_unit_range` of
    the sources, like the embedded greyscale images; colour divided by its dtype's maximum)."""
    from PIL import Image

    from mmoe.datamodules.anomaly.sources import to_unit_range

    with Image.open(path) as img:
        img.load()
        a = np.asarray(img)
    if a.ndim == 2:
        return np.repeat(to_unit_range(a)[..., None], 3, axis=-1)
    a = a[..., :3]
    scale = float(np.iinfo(a.dtype).max) if np.issubdtype(a.dtype, np.integer) else 1.0
    return (a.astype(np.float32) / scale).clip(0, 1)


def read_mask(path: str | None, shape: tuple[int, int]) -> np.ndarray:
    """A mask file as bool ``[H, W]`` (nonzero = anomalous), resized to ``shape`` by nearest neighbour."""
    if path is None:
        return np.zeros(shape, dtype=bool)
    from PIL import Image

    with Image.open(path) as img:
        m = np.asarray(img.convert("L"))
    if m.shape != shape:
        m = np.asarray(Image.fromarray(m).resize((shape[1], shape[0]), Image.NEAREST))
    return m > 0
