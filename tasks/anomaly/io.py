"""What anomaly predict needs: the preprocessing config and the input/output functions."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from mmoe.datamodules.anomaly.bmad import to_unit_rgb
from mmoe.inputs.image import image_layout, read_dicom_series, read_image, to_nhwc

MODALITY_NAMES = ["brain_mri", "ct", "fundus", "histology"]


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


def read_path(path: str | os.PathLike, name: str = "images") -> np.ndarray:
    """A file (PNG/JPEG/TIFF/DICOM/NIfTI) or a DICOM series folder as a numpy array in the layout
    rule of :mod:`mmoe.inputs.image` (volumes and series as slices ``[N, H, W, 1]``)."""
    if Path(path).is_dir():
        return read_dicom_series(path, name)
    return read_image(path, name)


def _to_unit(a: np.ndarray, pre: AnomalyPreprocess, name: str) -> np.ndarray:
    """One image ``[H, W, C]`` -> float32 ``[H, W, 3]`` in [0, 1], as the data module does."""
    return to_unit_rgb(a, name, pre.low_percentile, pre.high_percentile)


def _split_batch(images: Any) -> tuple[list[np.ndarray], bool]:
    """``(list of single images as numpy [H, W, C], batched?)`` under the layout rule of
    :mod:`mmoe.inputs.image` (numpy channels last, torch channels first, C in 1, 3, 4)."""
    def images_of(x: Any, name: str) -> tuple[list[np.ndarray], bool]:
        if isinstance(x, (str, os.PathLike)):
            x = read_path(x, name)
        elif isinstance(x, torch.Tensor):
            x = x.detach().cpu()
            x = x.float() if x.dtype == torch.bfloat16 else x
        elif not isinstance(x, np.ndarray):
            raise TypeError(f"{name}: expected a numpy array, a torch.Tensor, a path or a list of them, "
                            f"got {type(x).__name__}")
        layout = image_layout(x, name)
        nhwc = to_nhwc(x, layout)
        return [np.asarray(nhwc[i]) for i in range(layout.n)], layout.batched

    if isinstance(images, (list, tuple)):
        if not images:
            raise ValueError("images: expected at least one image, got an empty list")
        out = []
        for i, x in enumerate(images):
            one, batched = images_of(x, f"images[{i}]")
            if batched:
                raise ValueError(f"images[{i}]: expected one image in a list, got a batch of {len(one)} "
                                 "(pass the batch itself, or its images one by one)")
            out += one
        return out, True
    return images_of(images, "images")


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
    if modality is None or isinstance(modality, str):
        mods = [modality] * len(xs)
    elif isinstance(modality, (list, tuple)) and all(m is None or isinstance(m, str) for m in modality):
        mods = list(modality)
    else:
        raise TypeError(f"modality: expected None, a name or a list of names (one per image), got {modality!r}")
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
