"""What restoration predict needs: the preprocessing config and the input/output functions."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

#: degradation types of the 3-task (first three) and 5-task all-in-one settings, in label order
DEGRADATIONS_3 = ["denoise", "derain", "dehaze"]
DEGRADATIONS_5 = ["denoise", "derain", "dehaze", "deblur", "lowlight"]


@dataclass
class RestorationPreprocess:
    """Data settings of a restoration model (provided by ``RestorationDataModule.preprocess``).

    Args:
        degradation_names: degradation types in label order (the per-image router's classes).
        multiple: image sides are padded (reflect) to a multiple of this before the model runs.
        tile: images larger than ``tile`` pixels on a side are restored in overlapping tiles of
            this size (bounded memory for any image size).
        overlap: overlap of neighbouring tiles in pixels (blended linearly).
    """

    degradation_names: list[str] = field(default_factory=lambda: list(DEGRADATIONS_3))
    multiple: int = 16
    tile: int = 256
    overlap: int = 32

    def __post_init__(self) -> None:
        names = self.degradation_names
        if (not isinstance(names, list) or not names or len(set(names)) != len(names)
                or not all(isinstance(n, str) for n in names)):
            raise ValueError(f"preprocess.degradation_names: expected distinct names, got {names!r}")
        for name in ("multiple", "tile", "overlap"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < (0 if name == "overlap" else 1):
                raise ValueError(f"preprocess.{name}: expected a positive int, got {v!r}")
        if self.tile % self.multiple or not 0 <= self.overlap < self.tile // 2:
            raise ValueError(f"preprocess.tile/overlap: expected tile a multiple of {self.multiple} and "
                             f"0 <= overlap < tile / 2, got tile={self.tile}, overlap={self.overlap}")


#: BT.601 luma weights: a restored grayscale image is the luma of the restored RGB
GRAY_WEIGHTS = (0.299, 0.587, 0.114)
_FLOAT_NP = (np.float16, np.float32, np.float64)
_FLOAT_TORCH = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Decode a PNG/JPEG (anything PIL reads) into ``[H, W]``, ``[H, W, 3]`` or ``[H, W, 4]`` uint8 (uint16
    for 16-bit grayscale PNGs); palette and other modes become RGB, or RGBA when transparent."""
    from PIL import Image, UnidentifiedImageError

    if not Path(path).is_file():
        raise FileNotFoundError(f"image: no such file {str(path)!r}")
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode.startswith("I;16"):
                return np.asarray(img).astype(np.uint16)
            if img.mode not in ("L", "RGB", "RGBA"):
                transparent = "A" in img.mode or "transparency" in img.info
                img = img.convert("RGBA" if transparent else "RGB")
            return np.asarray(img).copy()
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"image: cannot read {str(path)!r} as an image ({e})") from e


def reflect_pad(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Pad ``x [N, C, H, W]`` at the bottom and right to ``height`` x ``width`` by mirror reflection
    (repeated when the image is smaller than the padding; a 1-pixel side is replicated)."""
    while x.shape[-2] < height or x.shape[-1] < width:
        h, w = x.shape[-2:]
        ph, pw = height - h, width - w
        if (h == 1 and ph) or (w == 1 and pw):  # nothing to mirror
            x = F.pad(x, (0, min(pw, 1), 0, min(ph, 1)), mode="replicate")
        else:
            x = F.pad(x, (0, min(pw, w - 1), 0, min(ph, h - 1)), mode="reflect")
    return x


def prepare_image(pre: RestorationPreprocess, image: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """Check a predict input and bring it to the model's layout: ``({"input": [N, 3, H', W'],
    "tiled": True}, context)`` with H', W' the sides reflect-padded to multiples of ``pre.multiple``.

    ``image``: a numpy array ``[H, W]``, ``[H, W, C]`` or ``[N, H, W, C]`` (channels last); a torch
    tensor ``[H, W]``, ``[C, H, W]`` or ``[N, C, H, W]`` (channels first); or a path to an image
    file. C is 1 (grayscale: repeated to RGB, returned as the BT.601 luma of the result), 3 (RGB)
    or 4 (RGBA: the alpha channel is returned untouched). dtype uint8 (0..255), uint16
    (0..65535) or float in [0, 1]; NaN/inf and floats outside [0, 1] are refused.
    """
    if isinstance(image, (str, os.PathLike)):
        image = read_image(image)
    if isinstance(image, np.ndarray):
        kind = "numpy"
        if image.dtype == np.uint8 or image.dtype == np.uint16:
            scale = float(np.iinfo(image.dtype).max)
        elif image.dtype.type in _FLOAT_NP:
            scale = 1.0
        else:
            raise TypeError(f"image: expected dtype uint8, uint16 or float in [0, 1], got {image.dtype}")
        x = torch.from_numpy(image.astype(np.float64 if image.dtype == np.float64 else np.float32))
        channels_first = False
    elif isinstance(image, torch.Tensor):
        kind = "torch"
        if image.dtype == torch.uint8:
            scale = 255.0
        elif image.dtype in _FLOAT_TORCH:
            scale = 1.0
        else:
            raise TypeError(f"image: expected dtype uint8 or float in [0, 1], got {image.dtype}")
        x = image.detach().cpu()
        x = x.double() if x.dtype == torch.float64 else x.float()
        channels_first = True
    else:
        raise TypeError(f"image: expected a numpy array, a torch.Tensor or a path, got {type(image).__name__}")
    shape = tuple(image.shape)
    layouts = "[H, W], [C, H, W] or [N, C, H, W]" if channels_first else "[H, W], [H, W, C] or [N, H, W, C]"
    if x.ndim not in (2, 3, 4):
        raise ValueError(f"image: expected {layouts} with C in (1, 3, 4), got shape {shape}")
    if x.ndim == 2:
        x = x[..., None] if not channels_first else x[None]
    if x.ndim == 3:
        x = x[None]
    if channels_first:
        x = x.permute(0, 2, 3, 1)  # one layout from here on: [N, H, W, C]
    N, H, W, C = x.shape
    if C not in (1, 3, 4):
        raise ValueError(f"image: expected {layouts} with C in (1, 3, 4), got shape {shape}")
    if min(N, H, W) == 0:
        raise ValueError(f"image: expected a non-empty image, got shape {shape}")
    if scale == 1.0:
        if not bool(torch.isfinite(x).all()):
            raise ValueError(f"image: contains NaN or inf (shape {shape})")
        lo, hi = float(x.min()), float(x.max())
        if lo < 0 or hi > 1:
            raise ValueError(f"image: expected float values in [0, 1], got values in [{lo:.4g}, {hi:.4g}] "
                             "(divide 8-bit data by 255, or pass it as uint8)")
    alpha = None
    if C == 4:  # kept aside in the input's own dtype and values, re-attached unchanged
        alpha = image.detach().reshape(N, C, H, W)[:, 3:] if channels_first else image.reshape(N, H, W, C)[..., 3:]
    rgb = x[..., :3].expand(N, H, W, 3) if C == 1 else x[..., :3]
    rgb = rgb.permute(0, 3, 1, 2).float() / scale
    m = pre.multiple
    batch = reflect_pad(rgb.contiguous(), -(-H // m) * m, -(-W // m) * m)
    context = {"kind": kind, "dtype": image.dtype, "device": getattr(image, "device", None), "ndim": len(shape),
               "channels": C, "size": (H, W), "scale": scale, "alpha": alpha}
    return {"input": batch, "tiled": True}, context


def finish_image(pre: RestorationPreprocess, output: dict[str, Any], context: dict[str, Any]) -> dict[str, Any]:
    """Model output ``{"image": [N, 3, H', W'], "logits": [N, G] or None}`` -> the input's layout,
    size, dtype and range, plus the recognised degradation.

    Returns ``{"image", "degradation", "probability"}``: the restored image, and the name of the
    per-image degradation decision with its softmax probability (lists for a batch input; None
    for a dense model). The name is ``preprocess.degradation_names[g]`` when the model has one group per
    degradation type, else ``"group <g>"``.
    """
    H, W = context["size"]
    y = output["image"][..., :H, :W].float().clamp(0, 1).cpu().permute(0, 2, 3, 1)  # [N, H, W, 3]
    C, scale, batched = context["channels"], context["scale"], context["ndim"] == 4
    if C == 1:
        y = (y * torch.tensor(GRAY_WEIGHTS)).sum(-1, keepdim=True)
    if context["kind"] == "torch":
        y = y.permute(0, 3, 1, 2)  # back to channels first
    if scale != 1.0:
        y = (y * scale).round()
    if context["kind"] == "numpy":
        out: Any = y.numpy().astype(context["dtype"])
        if C == 4:
            out = np.concatenate([out, context["alpha"]], axis=-1)
    else:
        out = y.to(context["dtype"])
        if C == 4:
            out = torch.cat([out, context["alpha"].cpu()], dim=1)
        out = out.to(context["device"])
    if context["ndim"] == 2:
        out = out[0, ..., 0] if context["kind"] == "numpy" else out[0, 0]
    elif not batched:
        out = out[0]
    logits = output.get("logits")
    names: Any = None
    probs: Any = None
    if logits is not None:
        p, g = torch.softmax(logits.float(), dim=-1).max(dim=-1)
        known = logits.shape[-1] == len(pre.degradation_names)
        names = [pre.degradation_names[i] if known else f"group {i}" for i in g.tolist()]
        probs = p.tolist()
        if not batched:
            names, probs = names[0], probs[0]
    return {"image": out, "degradation": names, "probability": probs}
