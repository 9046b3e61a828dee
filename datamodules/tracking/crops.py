"""Template and search crops around a box, as one-stream trackers train and track.

A crop is the square of side ``factor * sqrt(w * h)`` centred on the box's centre, resized to
``out_size`` x ``out_size``; what falls outside the frame is filled with the frame's mean colour
(a constant the model learns to ignore, rather than replicated edges that look like content).
Training and tracking use the same function, so the model sees the same geometry in both.
"""

from __future__ import annotations

from typing import NamedTuple

import cv2
import numpy as np


class CropTransform(NamedTuple):
    """Frame -> crop coordinates: ``crop = (frame - (x0, y0)) * scale``."""

    x0: float
    y0: float
    scale: float

    def box_to_crop(self, box: np.ndarray) -> np.ndarray:
        """xywh boxes ``[..., 4]`` from frame to crop pixels."""
        box = np.asarray(box, dtype=np.float64)
        return np.concatenate([(box[..., :2] - (self.x0, self.y0)) * self.scale, box[..., 2:] * self.scale], axis=-1)

    def box_to_frame(self, box: np.ndarray) -> np.ndarray:
        """xywh boxes ``[..., 4]`` from crop to frame pixels."""
        box = np.asarray(box, dtype=np.float64)
        return np.concatenate([box[..., :2] / self.scale + (self.x0, self.y0), box[..., 2:] / self.scale], axis=-1)


def crop_around(image: np.ndarray, box: np.ndarray, factor: float, out_size: int,
                centre_shift: tuple[float, float] = (0.0, 0.0), scale_change: float = 1.0
                ) -> tuple[np.ndarray, CropTransform]:
    """``(crop [out_size, out_size, C] of image's dtype, its CropTransform)``.

    Args:
        image: ``[H, W]`` or ``[H, W, C]`` frame.
        box: ``(x, y, w, h)`` with ``w, h > 0``.
        factor: crop side over ``sqrt(w * h)``.
        out_size: output side in pixels.
        centre_shift: offset of the crop's centre from the box's, in units of ``sqrt(w * h)``
            (training jitter).
        scale_change: multiplies the crop side (training jitter).
    """
    x, y, w, h = (float(v) for v in box)
    if not (np.isfinite([x, y, w, h]).all() and w > 0 and h > 0):
        raise ValueError(f"box: expected a finite (x, y, w, h) with w, h > 0, got {tuple(box)}")
    base = np.sqrt(w * h)
    side = max(base * factor * scale_change, 1.0)
    cx, cy = x + w / 2 + centre_shift[0] * base, y + h / 2 + centre_shift[1] * base
    t = CropTransform(cx - side / 2, cy - side / 2, out_size / side)
    m = np.array([[t.scale, 0, -t.x0 * t.scale], [0, t.scale, -t.y0 * t.scale]], dtype=np.float64)
    fill = image.reshape(-1, image.shape[-1]).mean(0) if image.ndim == 3 else float(image.mean())
    fill = tuple(float(v) for v in np.atleast_1d(fill))
    src = image.astype(np.float32) if image.dtype not in (np.uint8, np.float32) else image
    out = cv2.warpAffine(src, m, (out_size, out_size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                         borderValue=fill + (0.0,) * (4 - len(fill)))
    if image.ndim == 3 and out.ndim == 2:  # cv2 drops a single channel axis
        out = out[:, :, None]
    return out.astype(image.dtype, copy=False), t
