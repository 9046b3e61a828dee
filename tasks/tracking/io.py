"""What tracking predict needs: frame and box checks, lazy sequences, outputs (the preprocessing
config is the data's: :mod:`mmoe.datamodules.tracking.preprocess`)."""

from __future__ import annotations

import numbers
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch

from mmoe.datamodules.tracking.preprocess import TrackingPreprocess
from mmoe.inputs.video import FrameReader


def _layout(frame: np.ndarray, arg: str, channels: tuple[int, ...]) -> np.ndarray:
    """One frame as ``[H, W, 3]`` (``channels=(3,)``, RGB) or ``[H, W]`` (``(1,)``, X), else ValueError."""
    if frame.ndim == 3 and frame.shape[2] in (3, 4) and 3 in channels:
        frame = frame[..., :3]
    elif frame.ndim == 3 and frame.shape[2] == 1:
        frame = frame[..., 0]
    if frame.ndim == 3 and 1 in channels and 3 not in channels:
        frame = frame.mean(2) if frame.dtype.kind == "f" else frame.mean(2).astype(frame.dtype)
    want = "[H, W, 3]" if channels == (3,) else "[H, W] or [H, W, 1|3]"
    if (channels == (3,) and (frame.ndim != 3 or frame.shape[2] != 3)) or (channels == (1,) and frame.ndim != 2):
        raise ValueError(f"{arg}: expected frames {want}, got shape {frame.shape}")
    return frame


def as_float_frame(frame: np.ndarray, arg: str, pre: TrackingPreprocess, channels: tuple[int, ...]) -> np.ndarray:
    """One frame as float32 in [0, 1], ``[H, W, 3]`` (RGB) or ``[H, W]`` (X)."""
    frame = _layout(frame, arg, channels)
    if frame.dtype == np.uint8:
        return frame.astype(np.float32) / 255.0
    if frame.dtype == np.uint16:
        if channels == (3,):
            raise ValueError(f"{arg}: expected uint8 or float RGB frames, got uint16")
        return np.clip(frame.astype(np.float32) / pre.depth_range_mm, 0, 1)  # 16-bit depth in mm
    if frame.dtype.kind == "f":
        if not np.isfinite(frame).all():
            raise ValueError(f"{arg}: a frame contains NaN or inf")
        if frame.min() < 0 or frame.max() > 1:
            raise ValueError(f"{arg}: expected float values in [0, 1], got [{frame.min():.4g}, {frame.max():.4g}]")
        return frame.astype(np.float32)
    raise ValueError(f"{arg}: expected dtype uint8, uint16 (depth) or float in [0, 1], got {frame.dtype}")


def rgb_frame(frame: np.ndarray, arg: str, pre: TrackingPreprocess) -> np.ndarray:
    """A checked RGB frame: uint8 ``[H, W, 3]`` kept as uint8 (the tracker converts it), else float32 in [0, 1]."""
    return _layout(frame, arg, (3,)) if frame.dtype == np.uint8 else as_float_frame(frame, arg, pre, (3,))


class LazyFrames:
    """Checked frames of one input, read in order when asked for; only the current frame is held.

    Iterating yields the frames from the first. It also has the few tensor methods that
    ``TrackingTask.track`` uses on a sequence (``len``, ``shape``, ``[t]`` for the current or the
    next frame, ``.cpu()``; ``.float()`` and ``.numpy()`` for X), so the tracker reads it lazily.

    Args:
        reader: the input's frames.
        arg: the argument named in errors.
        check: ``(frame, name) -> checked frame``.
        size: ``(H, W)`` every frame must have, or None to take the first frame's.
        as_tensor: ``[t]`` gives a torch tensor (RGB) rather than a numpy array (X).
    """

    def __init__(self, reader: FrameReader, arg: str, check: Callable[[np.ndarray, str], np.ndarray],
                 size: tuple[int, int] | None, as_tensor: bool) -> None:
        self.reader, self.arg, self.check, self.size, self.as_tensor = reader, arg, check, size, as_tensor
        self._frames: Iterator[np.ndarray] | None = None
        self._index, self._frame = -1, None

    def frame(self, t: int) -> np.ndarray:
        """Frame ``t`` checked: the current one again, or the next one read."""
        if t != self._index:
            if t == 0:  # start over (a new pass)
                self._frames, self._index = iter(self.reader), -1
            if t != self._index + 1:
                raise IndexError(f"{self.arg}: frames are read in order; asked for frame {t} after frame {self._index}")
            try:
                raw = next(self._frames)
            except StopIteration:
                raise ValueError(f"{self.arg}: the input ended after {t} frames") from None
            name = f"{self.arg}[{t}]" if t else self.arg
            frame = self.check(raw, name)
            if self.size is None:
                self.size = frame.shape[:2]
                if min(self.size) < 2:
                    raise ValueError(f"{self.arg}: expected frames of at least 2x2 pixels, got {self.size}")
            elif frame.shape[:2] != self.size:
                what = "the first frame's" if self.arg == "frames" else "the RGB frames'"
                raise ValueError(f"{name}: expected {what} size {self.size}, got {frame.shape[:2]}")
            self._index, self._frame = t, frame
        return self._frame

    def __len__(self) -> int:
        return len(self.reader)

    def __iter__(self) -> Iterator[np.ndarray]:
        for t in range(len(self)):
            yield self.frame(t)

    def __getitem__(self, t: int) -> Any:
        f = self.frame(int(t))
        return torch.from_numpy(np.ascontiguousarray(f)) if self.as_tensor else f

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self), *self.frame(0).shape) if self._index < 0 else (len(self), *self._frame.shape)

    def cpu(self) -> LazyFrames:
        return self

    def float(self) -> LazyFrames:  # X frames are float32 already
        return self

    def numpy(self) -> LazyFrames:  # [t] gives numpy frames already (X)
        return self


def check_box(init_box: Any) -> np.ndarray:
    """``init_box`` as float64 ``(x, y, w, h)``: four finite real numbers, w and h positive."""
    if isinstance(init_box, torch.Tensor):
        init_box = init_box.detach().cpu().numpy()
    if isinstance(init_box, np.ndarray):
        if init_box.dtype.kind not in "iuf":
            raise TypeError(f"init_box: expected 4 numbers (x, y, w, h), got an array of dtype {init_box.dtype}")
        values = init_box.tolist()
    elif isinstance(init_box, (list, tuple)):
        values = list(init_box)
    else:
        raise TypeError(f"init_box: expected 4 numbers (x, y, w, h) as a list, tuple, array or tensor, "
                        f"got {type(init_box).__name__}")
    if len(values) != 4:
        raise ValueError(f"init_box: expected 4 finite numbers (x, y, w, h), got {len(values)} values")
    for v in values:
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Real):  # True is not a coordinate
            raise TypeError(f"init_box: expected 4 numbers (x, y, w, h), got {init_box!r}")
    box = np.array([float(v) for v in values], dtype=np.float64)
    if not np.isfinite(box).all():
        raise ValueError(f"init_box: expected 4 finite numbers (x, y, w, h), got {tuple(box)}")
    if box[2] <= 0 or box[3] <= 0:
        raise ValueError(f"init_box: expected a positive width and height, got w={box[2]}, h={box[3]}")
    return box


def open_sequence(pre: TrackingPreprocess, frames: Any, init_box: Any, x_frames: Any = None
                  ) -> tuple[LazyFrames, LazyFrames | None, np.ndarray]:
    """Check predict's inputs without reading more than the first frame:
    ``(rgb frames, X frames or None, init_box float64)``, the frames read lazily (:class:`LazyFrames`)."""
    box = check_box(init_box)
    rgb = LazyFrames(FrameReader(frames, "frames"), "frames", lambda f, name: rgb_frame(f, name, pre), None, True)
    n = len(rgb)
    if n == 0:
        raise ValueError("frames: expected at least one frame, got none")
    H, W = rgb.frame(0).shape[:2]
    x0, y0, w, h = box
    if x0 >= W or y0 >= H or x0 + w <= 0 or y0 + h <= 0:
        raise ValueError(f"init_box: expected a box that overlaps the {W}x{H} frame, got {tuple(box)}")
    if isinstance(frames, (list, tuple)):  # sizes in memory are known without reading: fail before tracking
        for i, f in enumerate(frames[1:], start=1):
            if hasattr(f, "shape") and tuple(f.shape[:2]) != (H, W):
                raise ValueError(f"frames[{i}]: expected the first frame's size {(H, W)}, got {tuple(f.shape[:2])}")
    x = None
    if x_frames is not None:
        x = LazyFrames(FrameReader(x_frames, "x_frames"), "x_frames",
                       lambda f, name: as_float_frame(f, name, pre, (1,)), (H, W), False)
        if len(x) != n:
            raise ValueError(f"x_frames: expected as many frames as frames ({n}), got {len(x)}")
        x.frame(0)
    return rgb, x, box


def prepare_sequence(pre: TrackingPreprocess, frames: Any, init_box: Any, x_frames: Any = None
                     ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Check predict's inputs: ``({"frames": LazyFrames, "x": LazyFrames or absent, "init_box": [4]}, context)``.

    Frames are read one at a time while the tracker runs (memory does not grow with their number)."""
    rgb, x, box = open_sequence(pre, frames, init_box, x_frames)
    batch: dict[str, Any] = {"frames": rgb, "init_box": torch.from_numpy(box)}
    if x is not None:
        batch["x"] = x
    return batch, {"init_box": box, "size": rgb.size}


def clip_boxes(boxes: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """xywh boxes ``[..., 4]`` cut to their part inside an ``(H, W)`` frame."""
    H, W = size
    x0, y0 = np.clip(boxes[..., 0], 0, W), np.clip(boxes[..., 1], 0, H)
    x1, y1 = np.clip(boxes[..., 0] + boxes[..., 2], 0, W), np.clip(boxes[..., 1] + boxes[..., 3], 0, H)
    return np.stack([x0, y0, x1 - x0, y1 - y0], axis=-1)


def finish_sequence(output: dict[str, torch.Tensor], context: dict[str, Any]) -> dict[str, np.ndarray]:
    """``{"boxes": [N, 4] float64 xywh pixels, "confidence": [N] float64}``: frame 0 is
    ``init_box`` exactly as given, confidence 1.0; the boxes after it are clipped to the frame."""
    boxes = output["boxes"].double().cpu().numpy().copy()
    boxes[0] = context["init_box"]
    boxes[1:] = clip_boxes(boxes[1:], context["size"])
    return {"boxes": boxes, "confidence": output["confidence"].double().cpu().numpy()}
