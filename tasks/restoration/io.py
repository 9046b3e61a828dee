"""What restoration predict needs: input checks, tiling, and the outputs in the input's form (the
preprocessing config is the data's: :mod:`mmoe.datamodules.restoration.preprocess`)."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from mmoe.datamodules.restoration.preprocess import RestorationPreprocess
from mmoe.inputs.image import check_float_values, image_layout, read_image, to_nhwc, unit_scale

#: BT.601 luma weights: a restored grayscale image is the luma of the restored RGB
GRAY_WEIGHTS = (0.299, 0.587, 0.114)
#: most pixels (all images of one call together) predict restores: tiles bound the model's
#: activations, but the input, padded input, blended output and weights are full-size float32
#: buffers, about 60 bytes per pixel at the peak (4096 x 4096: about 1 GB). Larger inputs are
#: refused (split them, or restore in parts): the memory of a call stays known.
MAX_PREDICT_PIXELS = 4096 * 4096


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

    ``image``: an array or tensor in the layout rule of :mod:`mmoe.inputs.image` (numpy ``[H, W]``,
    ``[H, W, C]`` or ``[N, H, W, C]``; torch ``[H, W]``, ``[C, H, W]`` or ``[N, C, H, W]``), or a path
    to an image file (read by :func:`mmoe.inputs.image.read_image`). C is 1 (grayscale: repeated to
    RGB, returned as the BT.601 luma of the result), 3 (RGB) or 4 (RGBA: the alpha channel is
    returned untouched). dtype uint8 (0..255), uint16 (0..65535) or float in [0, 1]; NaN/inf and
    floats outside [0, 1] are refused, and so are more than :data:`MAX_PREDICT_PIXELS` pixels.
    """
    if isinstance(image, (str, os.PathLike)):
        image = read_image(image, "image", max_pixels=MAX_PREDICT_PIXELS)
    if isinstance(image, np.ndarray):
        kind = "numpy"
    elif isinstance(image, torch.Tensor):
        kind = "torch"
    else:
        raise TypeError(f"image: expected a numpy array, a torch.Tensor or a path, got {type(image).__name__}")
    scale = unit_scale(image.dtype, "image")
    layout = image_layout(image, "image")
    N, H, W, C = layout.n, layout.h, layout.w, layout.c
    if N * H * W > MAX_PREDICT_PIXELS:
        raise ValueError(f"image: {N} x {H} x {W} = {N * H * W} pixels, more than restoration predict's limit of "
                         f"{MAX_PREDICT_PIXELS} (about 60 bytes per pixel); restore it in parts")
    check_float_values(image, "image", unit=True)
    x = to_nhwc(image if kind == "torch" else torch.from_numpy(np.ascontiguousarray(image)), layout)
    x = x.detach().cpu()
    alpha = x[..., 3:].clone() if C == 4 else None  # kept aside in the input's own dtype and values
    rgb = x[..., :3].expand(N, H, W, 3) if C == 1 else x[..., :3]
    wide = str(image.dtype).endswith("float64")  # float64 input is restored and returned in float64
    rgb = rgb.permute(0, 3, 1, 2).to(torch.float64 if wide else torch.float32)
    if scale != 1.0:
        rgb = rgb.div_(scale)  # a fresh tensor here (an integer input was just converted)
    m = pre.multiple
    batch = reflect_pad(rgb.contiguous(), -(-H // m) * m, -(-W // m) * m)
    if kind == "torch" and alpha is not None:
        alpha = alpha.permute(0, 3, 1, 2)
    context = {"kind": kind, "dtype": image.dtype, "device": getattr(image, "device", None), "ndim": image.ndim,
               "channels": C, "size": (H, W), "scale": scale, "alpha": alpha.numpy() if kind == "numpy"
               and alpha is not None else alpha}
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
        y = y.mul_(scale).round_()  # in place: y is the fresh clamped copy (full-size buffers add up)
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
