"""What tracking predict needs: the preprocessing config and the input/output functions."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm")


@dataclass
class TrackingPreprocess:
    """Data settings of a tracker (provided by ``TrackingDataModule.preprocess``).

    Args:
        template_size: template crop side in pixels.
        search_size: search crop side in pixels.
        template_factor: template crop side over sqrt(w h) of the box.
        search_factor: search crop side over sqrt(w h) of the previous box.
        modality: the X modality the model was trained with (``"depth"``, ``"thermal"``,
            ``"event"``), or None for an RGB-only model.
        depth_range_mm: 16-bit depth (millimetres) that maps to 1.
    """

    template_size: int = 64
    search_size: int = 128
    template_factor: float = 2.0
    search_factor: float = 4.0
    modality: str | None = "depth"
    depth_range_mm: float = 10000.0

    def __post_init__(self) -> None:
        for name in ("template_size", "search_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 16:
                raise ValueError(f"preprocess.{name}: expected an int >= 16, got {v!r}")
        for name in ("template_factor", "search_factor", "depth_range_mm"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v) or v <= 0:
                raise ValueError(f"preprocess.{name}: expected a positive number, got {v!r}")
        if self.modality not in (None, "depth", "thermal", "event"):
            raise ValueError(f"preprocess.modality: expected 'depth', 'thermal', 'event' or None, got {self.modality!r}")


def _list_folder(folder: Path, arg: str) -> list[Path]:
    files = sorted(p for p in folder.iterdir()
                   if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith("."))
    if not files:
        raise ValueError(f"{arg}: no images ({'/'.join(IMAGE_EXTENSIONS)}) in folder {str(folder)!r}")
    return files


def _read_image(path: Path, arg: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            if im.mode.startswith("I;16") or im.mode == "I":
                return np.asarray(im).astype(np.uint16)
            return np.asarray(im.convert("RGB") if im.mode not in ("L", "RGB") else im).copy()
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"{arg}: cannot read {str(path)!r} as an image ({e})") from e


def _read_video(path: Path, arg: str, max_frames: int) -> list[np.ndarray]:
    import cv2

    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise ValueError(f"{arg}: cannot open {str(path)!r} as a video")
    frames = []
    try:
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            if len(frames) >= max_frames:
                raise ValueError(f"{arg}: {str(path)!r} has more than {max_frames} frames (max_frames)")
            frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    finally:
        cap.release()
    if not frames:
        raise ValueError(f"{arg}: no frames could be decoded from {str(path)!r}")
    return frames


def load_frames(frames: Any, arg: str, max_frames: int = 100_000) -> list[np.ndarray]:
    """A list of frames from a list/array of images, a folder of images or a video file."""
    if isinstance(frames, (str, os.PathLike)):
        path = Path(frames)
        if path.is_dir():
            files = _list_folder(path, arg)
            if len(files) > max_frames:
                raise ValueError(f"{arg}: {len(files)} frames in {str(path)!r}, more than max_frames={max_frames}")
            return [_read_image(p, arg) for p in files]
        if path.is_file() and path.suffix.lower() in VIDEO_EXTENSIONS:
            return _read_video(path, arg, max_frames)
        raise ValueError(f"{arg}: expected a folder of images or a video file ({'/'.join(VIDEO_EXTENSIONS)}), "
                         f"got {str(path)!r}")
    if isinstance(frames, torch.Tensor):
        frames = frames.detach().cpu().numpy()
    if isinstance(frames, np.ndarray):
        if frames.ndim not in (3, 4):
            raise ValueError(f"{arg}: expected an array [N, H, W] or [N, H, W, C], got shape {frames.shape}")
        return list(frames)
    if isinstance(frames, (list, tuple)):
        out = []
        for i, f in enumerate(frames):
            if isinstance(f, torch.Tensor):
                f = f.detach().cpu().numpy()
            if not isinstance(f, np.ndarray):
                raise ValueError(f"{arg}[{i}]: expected a numpy array or tensor, got {type(f).__name__}")
            out.append(f)
        return out
    raise ValueError(f"{arg}: expected a list of arrays, an array [N, H, W, C], a folder or a video file, "
                     f"got {type(frames).__name__}")


def _as_float(frame: np.ndarray, arg: str, pre: TrackingPreprocess, channels: tuple[int, ...]) -> np.ndarray:
    """One frame as float32 in [0, 1], ``[H, W, 3]`` (RGB) or ``[H, W]`` (X)."""
    if frame.ndim == 3 and frame.shape[2] in (3, 4) and 3 in channels:
        frame = frame[..., :3]
    elif frame.ndim == 3 and frame.shape[2] == 1:
        frame = frame[..., 0]
    if frame.ndim == 3 and 1 in channels and 3 not in channels:
        frame = frame.mean(2) if frame.dtype.kind == "f" else frame.mean(2).astype(frame.dtype)
    want = "[H, W, 3]" if channels == (3,) else "[H, W] or [H, W, 1|3]"
    if (channels == (3,) and (frame.ndim != 3 or frame.shape[2] != 3)) or (channels == (1,) and frame.ndim != 2):
        raise ValueError(f"{arg}: expected frames {want}, got shape {frame.shape}")
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


def prepare_sequence(pre: TrackingPreprocess, frames: Any, init_box: Any, x_frames: Any = None
                     ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Check predict's inputs: ``({"frames": [N, H, W, 3], "x": [N, H, W] or absent, "init_box": [4]}, context)``."""
    rgb = load_frames(frames, "frames")
    if not rgb:
        raise ValueError("frames: expected at least one frame, got none")
    # each frame is checked as float, but uint8 frames are kept as uint8 (a quarter of the memory);
    # the tracker converts one frame at a time
    kept, size = [], None
    for i, f in enumerate(rgb):
        checked = _as_float(f, f"frames[{i}]" if i else "frames", pre, (3,))
        if size is None:
            size = checked.shape[:2]
            if min(size) < 2:
                raise ValueError(f"frames: expected frames of at least 2x2 pixels, got {size}")
        elif checked.shape[:2] != size:
            raise ValueError(f"frames[{i}]: expected the first frame's size {size}, got {checked.shape[:2]}")
        kept.append(f[..., :3] if f.dtype == np.uint8 else checked)
    if len({k.dtype for k in kept}) > 1:  # a mix of uint8 and float frames: one float sequence
        kept = [k.astype(np.float32) / 255 if k.dtype == np.uint8 else k for k in kept]
    stacked = np.stack(kept)
    batch: dict[str, Any] = {"frames": torch.from_numpy(stacked)}
    if x_frames is not None:
        x = load_frames(x_frames, "x_frames")
        if len(x) != len(rgb):
            raise ValueError(f"x_frames: expected as many frames as frames ({len(rgb)}), got {len(x)}")
        x = [_as_float(f, f"x_frames[{i}]" if i else "x_frames", pre, (1,)) for i, f in enumerate(x)]
        for i, f in enumerate(x):
            if f.shape != size:
                raise ValueError(f"x_frames[{i}]: expected the RGB frames' size {size}, got {f.shape}")
        batch["x"] = torch.from_numpy(np.stack(x))
    box = np.asarray(init_box, dtype=np.float64) if not isinstance(init_box, torch.Tensor) else \
        init_box.detach().cpu().double().numpy()
    if box.shape != (4,) or not np.isfinite(box).all():
        raise ValueError(f"init_box: expected 4 finite numbers (x, y, w, h), got {init_box!r}")
    x0, y0, w, h = box
    H, W = size
    if w <= 0 or h <= 0:
        raise ValueError(f"init_box: expected a positive width and height, got w={w}, h={h}")
    if x0 >= W or y0 >= H or x0 + w <= 0 or y0 + h <= 0:
        raise ValueError(f"init_box: expected a box that overlaps the {W}x{H} frame, got {tuple(box)}")
    batch["init_box"] = torch.from_numpy(box)
    return batch, {"n": len(rgb)}


def finish_sequence(output: dict[str, torch.Tensor], context: dict[str, Any]) -> dict[str, np.ndarray]:
    """``{"boxes": [N, 4] float64 xywh pixels, "confidence": [N] float64}`` (frame 0: the initial box, 1.0)."""
    return {"boxes": output["boxes"].double().cpu().numpy(), "confidence": output["confidence"].double().cpu().numpy()}
