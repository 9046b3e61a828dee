"""What anomaly predict needs: the preprocessing config and the input/output functions."""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from mmoe.datamodules.anomaly.bmad import to_unit_rgb
from mmoe.datamodules.anomaly.preprocess import AnomalyPreprocess

from mmoe.inputs.image import Volume, image_layout, read_volume, to_nhwc

#: CT display windows (low, high) in Hounsfield units: ``window=CT_WINDOWS["brain"]`` (DICOM read with its
#: RescaleSlope/Intercept; NIfTI with its header scaling)
CT_WINDOWS: dict[str, tuple[float, float]] = {
    "brain": (0.0, 80.0),  # level 40, width 80
    "subdural": (-100.0, 200.0),  # level 50, width 300
    "soft_tissue": (-160.0, 240.0),  # level 40, width 400 (abdomen, mediastinum)
    "liver": (-45.0, 105.0),  # level 30, width 150
    "lung": (-1350.0, 150.0),  # level -600, width 1500
    "bone": (-450.0, 1050.0),  # level 300, width 1500
}


def read_path(path: str | os.PathLike, name: str = "images", rescale: bool = False) -> Volume:
    """A file (PNG/JPEG/TIFF/DICOM/NIfTI) or a DICOM series folder as a :class:`Volume` of slices in
    the layout rule of :mod:`mmoe.inputs.image` (``rescale``: DICOM modality LUT, Hounsfield units)."""
    return read_volume(path, name, rescale=rescale)


def check_window(window: Any) -> tuple[float, float] | None:
    """``window``: None or ``(low, high)`` finite with low < high (or a name from :data:`CT_WINDOWS`)."""
    if window is None:
        return None
    if isinstance(window, str):
        if window not in CT_WINDOWS:
            raise ValueError(f"window: expected (low, high) or a name from {sorted(CT_WINDOWS)}, got {window!r}")
        return CT_WINDOWS[window]
    if (not isinstance(window, (tuple, list)) or len(window) != 2
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in window)
            or not window[0] < window[1]):
        raise ValueError(f"window: expected (low, high), finite numbers with low < high, got {window!r}")
    return float(window[0]), float(window[1])


def _to_unit(a: np.ndarray, pre: AnomalyPreprocess, name: str, window: tuple[float, float] | None = None) -> np.ndarray:
    """One image ``[H, W, C]`` -> float32 ``[H, W, 3]`` in [0, 1], as the data module does (greyscale by
    its percentiles), or greyscale by a fixed ``window``."""
    if window is None:
        return to_unit_rgb(a, name, pre.low_percentile, pre.high_percentile)
    g = a[..., 0] if a.ndim == 3 and a.shape[-1] == 1 else a
    if g.ndim != 2:
        raise ValueError(f"window: applies to greyscale images only, {name} has shape {a.shape}")
    unit = to_unit_rgb(g, name, 0, 100)  # the dtype and value checks; the percentile mapping is replaced
    del unit
    lo, hi = window
    w = np.clip((g.astype(np.float64) - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)
    return np.repeat(w[..., None], 3, axis=-1)


def _split_batch(images: Any, rescale: bool = False) -> tuple[list[np.ndarray], bool, Volume | None]:
    """``(list of single images as numpy [H, W, C], batched?, the volume of a volume path or None)``
    under the layout rule of :mod:`mmoe.inputs.image` (numpy channels last, torch channels first, C in 1, 3, 4)."""
    def images_of(x: Any, name: str) -> tuple[list[np.ndarray], bool, Volume | None]:
        volume = None
        if isinstance(x, (str, os.PathLike)):
            volume = read_path(x, name, rescale)
            if not volume.is_volume:
                x, volume = volume.slices[0], None
                x = x[..., 0] if x.shape[-1] == 1 else x
            else:
                x = volume.slices
        elif isinstance(x, torch.Tensor):
            x = x.detach().cpu()
            x = x.float() if x.dtype == torch.bfloat16 else x
        elif not isinstance(x, np.ndarray):
            raise TypeError(f"{name}: expected a numpy array, a torch.Tensor, a path or a list of them, "
                            f"got {type(x).__name__}")
        layout = image_layout(x, name)
        nhwc = to_nhwc(x, layout)
        return [np.asarray(nhwc[i]) for i in range(layout.n)], layout.batched, volume

    if isinstance(images, (list, tuple)):
        if not images:
            raise ValueError("images: expected at least one image, got an empty list")
        out = []
        for i, x in enumerate(images):
            one, batched, volume = images_of(x, f"images[{i}]")
            if batched:
                what = "a volume" if volume is not None else f"a batch of {len(one)}"
                raise ValueError(f"images[{i}]: expected one image in a list, got {what} "
                                 "(pass the batch or volume itself, or its images one by one)")
            out += one
        return out, True, None
    return images_of(images, "images")


def check_rate(name: str, value: Any) -> float | None:
    """A false-positive rate: None or a number in (0, 1)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
        raise ValueError(f"{name}: expected a false-positive rate in (0, 1), got {value!r}")
    return float(value)


def check_threshold(name: str, value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name}: expected a finite number (in the map's units), got {value!r}")
    return float(value)


def check_decision(fpr: Any, pixel_fpr: Any, threshold: Any, pixel_threshold: Any) -> dict[str, float | None]:
    """predict's decision arguments, checked: a rate or a threshold per level, not both."""
    out = {"fpr": check_rate("fpr", fpr), "pixel_fpr": check_rate("pixel_fpr", pixel_fpr),
           "threshold": check_threshold("threshold", threshold),
           "pixel_threshold": check_threshold("pixel_threshold", pixel_threshold)}
    for rate, thr in (("fpr", "threshold"), ("pixel_fpr", "pixel_threshold")):
        if out[rate] is not None and out[thr] is not None:
            raise ValueError(f"{thr}: give {rate}= or {thr}=, not both (got {rate}={fpr if rate == 'fpr' else pixel_fpr!r}, "
                             f"{thr}={out[thr]!r})")
    return out


def prepare_images(pre: AnomalyPreprocess, images: Any, modality: str | list[str] | None,
                   window: Any = None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Check predict's inputs and bring them to ``{"image": [N, 3, S, S], "modality": [N] (-1 = infer)}``."""
    window = check_window(window)
    arrays, batched, volume = _split_batch(images, rescale=window is not None)
    S = pre.image_size
    xs, sizes = [], []
    for i, a in enumerate(arrays):
        name = f"images[{i}]" if batched else "images"
        if not isinstance(a, np.ndarray):
            raise TypeError(f"{name}: expected an array, got {type(a).__name__}")
        u = _to_unit(a, pre, name, window)
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
    return batch, {"sizes": sizes, "batched": batched, "volume": volume}


def finish_maps(pre: AnomalyPreprocess, output: dict[str, torch.Tensor], context: dict[str, Any],
                thresholds: tuple[torch.Tensor, torch.Tensor]) -> dict[str, Any]:
    """Per image ``{"score", "map" float32 [H, W] at the input's size, "is_anomalous", "mask" bool [H, W],
    "modality", "threshold", "pixel_threshold"}`` (see ``AnomalyTask.predict``); a batch gives lists, a
    volume per-slice arrays and the map and mask in the file's axes. ``thresholds``: image and pixel
    thresholds per image (NaN: none, so no decision)."""
    maps, scores, mods = output["map"].float().cpu(), output["score"].float().cpu(), output["modality"].cpu()
    thr, pix_thr = (t.double().cpu().tolist() for t in thresholds)
    out_maps, out_masks, decisions = [], [], []
    for i, (H, W) in enumerate(context["sizes"]):
        m = F.interpolate(maps[i][None, None], size=(H, W), mode="bilinear", align_corners=False)[0, 0]
        m = m.numpy().astype(np.float32)
        out_maps.append(m)
        out_masks.append(None if math.isnan(pix_thr[i]) else m > pix_thr[i])
        decisions.append(None if math.isnan(thr[i]) else bool(scores[i] > thr[i]))
    names = [pre.modality_names[int(k)] for k in mods.tolist()]
    score_list = [float(s) for s in scores.tolist()]
    thr_list = [None if math.isnan(t) else float(t) for t in thr]
    pix_list = [None if math.isnan(t) else float(t) for t in pix_thr]
    volume: Volume | None = context.get("volume")
    if volume is not None:
        decided = all(d is not None for d in decisions)
        masked = all(k is not None for k in out_masks)
        return {"score": np.asarray(score_list, dtype=np.float32), "map": volume.to_file_axes(np.stack(out_maps)),
                "is_anomalous": np.asarray(decisions, dtype=bool) if decided else None,
                "mask": volume.to_file_axes(np.stack(out_masks)) if masked else None,
                "modality": names, "threshold": thr_list, "pixel_threshold": pix_list,
                "volume_score": float(max(score_list)),
                "volume_is_anomalous": bool(any(decisions)) if decided else None}
    if not context["batched"]:
        return {"score": score_list[0], "map": out_maps[0], "is_anomalous": decisions[0], "mask": out_masks[0],
                "modality": names[0], "threshold": thr_list[0], "pixel_threshold": pix_list[0]}
    return {"score": score_list, "map": out_maps, "is_anomalous": decisions, "mask": out_masks, "modality": names,
            "threshold": thr_list, "pixel_threshold": pix_list}
