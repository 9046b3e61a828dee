"""Reader of the BMAD benchmark layout (Bao et al., 2024)::

    <dataset>/train/good/[img/]*.png
    <dataset>/{valid,val,test}/good/[img/]*.png
    <dataset>/{valid,val,test}/Ungood/img/*.png     masks: Ungood/label/ or Ungood/anomaly_mask/
                                                    (same file names)
    Camelyon16 variant: {valid,test}/{good,Ungood}/*.png, no img/, no masks (image labels only)

Folder names are matched case-insensitively (``ungood``, ``Ungood``, ``UNGOOD``), as the released
sub-datasets differ; two folders differing only in case (``test/`` and ``TEST/``), two masks of
one image (``u0.png`` and ``u0.jpg``) and files whose links lead outside ``root`` are refused
(ValueError naming ``root``): the reader never guesses which one is meant.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mmoe.datamodules.anomaly.sources import to_unit_range
from mmoe.inputs.image import IMAGE_SUFFIXES, check_float_values, inside_root, to_unit_float
from mmoe.inputs.image import read_image as read_image_file

MASK_FOLDERS = ("label", "anomaly_mask")
EVAL_SPLITS = {"val": ("valid", "val"), "test": ("test",)}


@dataclass(frozen=True)
class BMADRecord:
    """One image: its path, 0 normal / 1 anomalous, and its mask path (None: no pixel labels)."""

    image: str
    label: int
    mask: str | None


def _child(folder: Path, name: str) -> Path | None:
    """The sub-folder of ``folder`` named ``name`` in any letter case, or None; two of them
    (``test`` and ``TEST``) are refused."""
    if not folder.is_dir():
        return None
    found = [p for p in sorted(folder.iterdir()) if p.is_dir() and p.name.lower() == name.lower()]
    if len(found) > 1:
        raise ValueError(f"root: {str(folder)!r} holds {[p.name for p in found]}, folders that differ only in "
                         "letter case; keep one")
    return found[0] if found else None


def _images(folder: Path, root: Path) -> list[Path]:
    """Image files of ``folder``, sorted; a file linked from outside ``root`` is refused."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    for p in files:
        inside_root(p, root, "root")
    return files


def _class_folder(folder: Path, label: int, root: Path) -> list[BMADRecord]:
    img_dir = _child(folder, "img")
    if img_dir is None:  # Camelyon16 variant (or train/good): images directly, no masks
        return [BMADRecord(str(p), label, None) for p in _images(folder, root)]
    mask_dir = None
    for name in MASK_FOLDERS:
        mask_dir = mask_dir or _child(folder, name)
    masks: dict[str, list[Path]] = {}
    for m in _images(mask_dir, root) if mask_dir is not None else []:
        masks.setdefault(m.stem, []).append(m)
    records = []
    for p in _images(img_dir, root):
        found = masks.get(p.stem, [])
        if len(found) > 1:
            raise ValueError(f"root: image {str(p)!r} has {len(found)} masks of the same name "
                             f"{[m.name for m in found]} in {str(mask_dir)!r}; keep one")
        if label == 1 and mask_dir is not None and not found:
            raise ValueError(f"root: anomalous image {str(p)!r} has no mask of the same name in {str(mask_dir)!r}")
        records.append(BMADRecord(str(p), label, str(found[0]) if found else None))
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
        records = _class_folder(good, 0, root)
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
                records += _class_folder(sub, label, root)
    else:
        raise ValueError(f"split: expected 'train', 'val' or 'test', got {split!r}")
    if not records:
        raise ValueError(f"root: no images for split {split!r} under {str(root)!r}")
    return records


def to_unit_rgb(a: np.ndarray, name: str, low: float = 0.5, high: float = 99.5) -> np.ndarray:
    """One image ``[H, W]`` or ``[H, W, C]`` (C 1, 3 or 4, channels last) -> float32 ``[H, W, 3]`` in
    [0, 1]: greyscale of any integer or float dtype (scanner units) by its ``low``/``high``
    percentiles, as the embedded images; colour by :func:`mmoe.inputs.image.to_unit_float`
    (uint8, uint16 or float in [0, 1]; alpha dropped). Errors name ``name``."""
    if a.dtype == bool or not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
        raise TypeError(f"{name}: expected an integer or float dtype, got {a.dtype}")
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim == 2:  # greyscale: scanner units differ, percentiles as in training
        check_float_values(a, name)
        return np.repeat(to_unit_range(a, low, high)[..., None], 3, axis=-1)
    if a.ndim != 3 or a.shape[-1] not in (3, 4) or min(a.shape[:2]) == 0:
        raise ValueError(f"{name}: expected one image [H, W] or [H, W, C] with C in (1, 3, 4), got shape {a.shape}")
    return to_unit_float(a[..., :3], name)


def read_image(path: str) -> np.ndarray:
    """A BMAD image file as float32 ``[H, W, 3]`` in [0, 1] (:func:`to_unit_rgb`). An unreadable,
    oversized or multi-frame file raises ValueError naming ``root`` and the path."""
    return to_unit_rgb(read_image_file(path, "root"), f"root: {path!r}")


def read_mask(path: str | None, shape: tuple[int, int]) -> np.ndarray:
    """A mask file as bool ``[H, W]`` (nonzero = anomalous), resized to ``shape`` by nearest neighbour."""
    if path is None:
        return np.zeros(shape, dtype=bool)
    from PIL import Image

    a = read_image_file(path, "root")
    if a.ndim not in (2, 3):
        raise ValueError(f"root: mask {path!r} has shape {a.shape}; expected one image")
    m = (a if a.ndim == 2 else a[..., :3].max(-1)) > 0
    if m.shape != shape:
        m = np.asarray(Image.fromarray(m.astype(np.uint8)).resize((shape[1], shape[0]), Image.NEAREST)) > 0
    return m
