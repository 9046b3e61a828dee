"""What anomaly predict needs: the preprocessing config and the input/output functions."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

MODALITY_NAMES = ["brain_mri", "ct", "fundus", "histology"]
_INT_TYPES = (np.uint8, np.uint16, np.int16, np.int32, np.uint32, np.int64)
_FLOAT_NP = (np.float16, np.float32, np.float64)


@dataclass
class AnomalyPreprocess:
    """Data settings of an anomaly model (provided by ``AnomalyDataModule.preprocess``).

    Args:
        image_size: side S the model sees; inputs are resized to S x S and maps resized back.
        modality_names: modalities in label order (calibration and the modality head follow it).
        low_percentile, high_percentile: greyscale inputs are mapped to [0, 1] by these
            percentiles (as the training data were); colour inputs are divided by their dtype's
            maximum (float colour must be in [0, 1]).
    """

    image_size: int = 64
    modality_names: list[str] = field(default_factory=lambda: list(MODALITY_NAMES))
    low_percentile: float = 0.5
    high_percentile: float = 99.5

    def __post_init__(self) -> None:
        if isinstance(self.image_size, bool) or not isinstance(self.image_size, int) or self.image_size < 16 \
                or self.image_size % 8:
            raise ValueError(f"preprocess.image_size: expected an int >= 16, a multiple of 8, got {self.image_size!r}")
        names = self.modality_names
        if (not isinstance(names, list) or not names or len(set(names)) != len(names)
                or not all(isinstance(n, str) and n for n in names)):
            raise ValueError(f"preprocess.modality_names: expected distinct names, got {names!r}")
        if not 0 <= self.low_percentile < self.high_percentile <= 100:
            raise ValueError(f"preprocess.low_percentile/high_percentile: expected 0 <= low < high <= 100, got "
                             f"{self.low_percentile!r}, {self.high_percentile!r}")


def read_path(path: str | os.PathLike) -> np.ndarray:
    """A DICOM file (pydicom) or a PNG/JPEG (PIL) as an array (greyscale ``[H, W]`` or ``[H, W, 3]``)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"images: no such file {str(path)!r}")
    with open(p, "rb") as f:
        head = f.read(132)
    if p.suffix.lower() in (".dcm", ".dicom") or head[128:132] == b"DICM":
        import pydicom

        try:
            ds = pydicom.dcmread(p)
            a = ds.pixel_array
        except Exception as e:  # unreadable, or compressed without a decoder
            raise ValueError(f"images: cannot read {str(path)!r} as DICOM pixel data ({e})") from e
        if a.ndim == 3 and a.shape[-1] != 3:
            raise ValueError(f"images: {str(path)!r} holds {a.shape[0]} frames; pass one frame as an array")
        return a
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(p) as img:
            img.load()
            if img.mode not in ("L", "RGB", "I;16", "I;16B", "I"):
                img = img.convert("RGB")
            return np.asarray(img).copy()
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"images: cannot read {str(path)!r} as an image ({e})") from e


def _to_unit(a: np.ndarray, pre: AnomalyPreprocess, name: str) -> np.ndarray:
    """One image ``[H, W]`` or ``[H, W, 3]`` -> float32 ``[H, W, 3]`` in [0, 1], as the data module does."""
    if a.dtype == bool or not (a.dtype.type in _INT_TYPES or a.dtype.type in _FLOAT_NP):
        raise TypeError(f"{name}: expected an integer or float dtype, got {a.dtype}")
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[-1] not in (1, 3, 4)):
        raise ValueError(f"{name}: expected [H, W] or [H, W, C] with C in (1, 3, 4), got shape {a.shape}")
    if min(a.shape[:2]) == 0:
        raise ValueError(f"{name}: expected a non-empty image, got shape {a.shape}")
    if a.dtype.type in _FLOAT_NP and not np.isfinite(a).all():
        raise ValueError(f"{name}: contains NaN or inf (shape {a.shape})")
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim == 2:  # greyscale: scanner units differ, percentiles as in training
        from mmoe.datamodules.anomaly.sources import to_unit_range

        g = to_unit_range(a, pre.low_percentile, pre.high_percentile)
        return np.repeat(g[..., None], 3, axis=-1)
    a = a[..., :3]
    if a.dtype.type in _FLOAT_NP:
        lo, hi = float(a.min()), float(a.max())
        if lo < 0 or hi > 1:
            raise ValueError(f"{name}: expected colour float values in [0, 1], got [{lo:.4g}, {hi:.4g}] "
                             "(pass 8-bit colour as uint8)")
        return a.astype(np.float32)
    return (a.astype(np.float64) / float(np.iinfo(a.dtype).max)).astype(np.float32)


def _split_batch(images: Any) -> tuple[list[np.ndarray], bool]:
    """``(list of single images as numpy, batched?)``."""
    if isinstance(images, (str, os.PathLike)):
        return [read_path(images)], False
    if isinstance(images, (list, tuple)):
        if not images:
            raise ValueError("images: expected at least one image, got an empty list")
        out = []
        for i, x in enumerate(images):
            if isinstance(x, (str, os.PathLike)):
                out.append(read_path(x))
            elif isinstance(x, torch.Tensor):
                t = x.detach().cpu()
                out.append(t.permute(1, 2, 0).numpy() if t.ndim == 3 and t.shape[0] in (1, 3) else t.numpy())
            elif isinstance(x, np.ndarray):
                out.append(x)
            else:
                raise TypeError(f"images[{i}]: expected an array, a tensor or a path, got {type(x).__name__}")
        return out, True
    if isinstance(images, torch.Tensor):
        t = images.detach().cpu()
        if t.dtype == torch.bfloat16:
            t = t.float()
        if t.ndim == 2:
            return [t.numpy()], False
        if t.ndim == 3:
            if t.shape[0] in (1, 3):
                return [t.permute(1, 2, 0).numpy()], False
            return list(t.numpy()), True  # [N, H, W]
        if t.ndim == 4:
            return list(t.permute(0, 2, 3, 1).numpy()), True
        raise ValueError(f"images: expected a tensor [H, W], [C, H, W], [N, H, W] or [N, C, H, W], "
                         f"got shape {tuple(t.shape)}")
    if isinstance(images, np.ndarray):
        if images.ndim == 2:
            return [images], False
        if images.ndim == 3:
            if images.shape[-1] in (3, 4):
                return [images], False
            return list(images), True  # [N, H, W]
        if images.ndim == 4:
            return list(images), True
        raise ValueError(f"images: expected an array [H, W], [H, W, 3], [N, H, W] or [N, H, W, C], "
                         f"got shape {images.shape}")
    raise TypeError(f"images: expected a numpy array, a torch.Tensor, a path or a list of them, "
                    f"got {type(images).__name__}")


def prepare_images(pre: AnomalyPreprocess, images: Any, modality: str | list[str] | None
                   ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Check predict's inputs and bring them to ``{"image": [N, 3, S, S], "modality": [N] (-1 = infer)}``."""
    arrays, batched = _split_batch(images)
    S = pre.image_size
    xs, sizes = [], []
    for i, a in enumerate(arrays):
        name = f"images[{i}]" if batched else "images"
        if not isinstance(a, np.ndarray):
            raise TypeError(f"{name}: expected an array, got {type(a).__name__}")
        u = _to_unit(a, pre, name)
        sizes.append(u.shape[:2])
        t = torch.from_numpy(u).permute(2, 0, 1)[None]
        xs.append(F.interpolate(t, size=(S, S), mode="area") if min(u.shape[:2]) >= S
                  else F.interpolate(t, size=(S, S), mode="bilinear", align_corners=False))
    mods = [modality] * len(xs) if modality is None or isinstance(modality, str) else list(modality)
    if len(mods) != len(xs):
        raise ValueError(f"modality: expected one name per image ({len(xs)}), got {len(mods)}")
    ids = []
    for m in mods:
        if m is None:
            ids.append(-1)
        elif m in pre.modality_names:
            ids.append(pre.modality_names.index(m))
        else:
            raise ValueError(f"modality: expected None or one of {pre.modality_names}, got {m!r}")
    batch = {"image": torch.cat(xs).float(), "modality": torch.tensor(ids, dtype=torch.long)}
    return batch, {"sizes": sizes, "batched": batched}


def finish_maps(pre: AnomalyPreprocess, output: dict[str, torch.Tensor], context: dict[str, Any]) -> dict[str, Any]:
    """``{"score": float, "map": float32 [H, W] at the input's size, "modality": name}`` per image
    (lists for a batch: ``score`` and ``modality`` lists, ``map`` a list of arrays)."""
    maps, scores, mods = output["map"].float().cpu(), output["score"].float().cpu(), output["modality"].cpu()
    out_maps = []
    for i, (H, W) in enumerate(context["sizes"]):
        m = F.interpolate(maps[i][None, None], size=(H, W), mode="bilinear", align_corners=False)[0, 0]
        out_maps.append(m.numpy().astype(np.float32))
    names = [pre.modality_names[int(k)] for k in mods.tolist()]
    if not context["batched"]:
        return {"score": float(scores[0]), "map": out_maps[0], "modality": names[0]}
    return {"score": [float(s) for s in scores.tolist()], "map": out_maps, "modality": names}
