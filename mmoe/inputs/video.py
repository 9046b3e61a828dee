"""Frame sequences read one frame at a time: from arrays, a folder of images or a video file.

The rules every task that reads frame sequences follows:

- a folder's frames are its image files (by extension, case-insensitive; hidden files skipped)
  in natural order: ``1.png, 2.png, 10.png`` (digit runs compare as numbers);
- a video file is decoded frame by frame with OpenCV's FFmpeg backend; nothing here keeps more
  than the frame being handed out, so memory does not grow with the number of frames;
- the pixel count of a frame is checked against ``max_pixels`` before it is decoded (an image
  file's header, read by :func:`mmoe.inputs.image.read_image`; a video's frame size from its
  container); a link in a folder may be refused when it leads outside a given root;
- arrays and tensors are not copied: ``[N, H, W]`` or ``[N, H, W, C]`` is read along its first axis;
- an input that cannot be read raises ``ValueError`` naming the argument (and the path).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmoe.inputs.image import MAX_PIXELS, check_pixels, inside_root, read_image

IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp")
VIDEO_EXTENSIONS: tuple[str, ...] = (".mp4", ".avi", ".mov", ".mkv", ".webm")


def natural_key(name: str) -> tuple[tuple[str | int, ...], str]:
    """Sort key ordering digit runs as numbers: ``"2.png"`` before ``"10.png"``."""
    # split keeps the digit runs at odd positions, so two keys always compare str with str, int with int
    parts = tuple(int(p) if i % 2 else p for i, p in enumerate(re.split(r"(\d+)", name)))
    return parts, name


def list_images(folder: str | os.PathLike, arg: str, within: str | os.PathLike | None = None) -> list[Path]:
    """The image files of ``folder`` in natural order.

    Args:
        folder: the folder.
        arg: the argument named in errors.
        within: if given, a symbolic link that leads outside this folder is refused.
    """
    folder = Path(folder)
    files = []
    with os.scandir(folder) as entries:
        for e in entries:
            if e.name.startswith(".") or os.path.splitext(e.name)[1].lower() not in IMAGE_EXTENSIONS:
                continue
            if within is not None and e.is_symlink():
                inside_root(e.path, within, arg)
            if e.is_file():
                files.append(Path(e.path))
    if not files:
        raise ValueError(f"{arg}: no images ({'/'.join(IMAGE_EXTENSIONS)}) in folder {str(folder)!r}")
    return sorted(files, key=lambda p: natural_key(p.name))


def image_size(path: str | os.PathLike, arg: str) -> tuple[int, int]:
    """``(H, W)`` of an image file from its header (nothing is decoded)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return im.height, im.width
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError) as e:
        raise ValueError(f"{arg}: cannot read {str(path)!r} as an image ({e})") from e


class FrameReader:
    """The frames of one input, read one at a time when iterated (each iteration starts over).

    Args:
        source: an array or tensor ``[N, H, W]`` / ``[N, H, W, C]``, a list or tuple of
            ``[H, W]`` / ``[H, W, C]`` arrays or tensors, a folder of images or a video file.
        arg: the argument named in errors.
        max_pixels: the largest frame (``H * W``) decoded from a file.

    Frames come out as numpy arrays in their own dtype (videos: uint8 RGB); file frames are checked
    against ``max_pixels`` before decoding. ``len()`` of a video counts its frames by a decoding
    pass that keeps none of them (container frame counts are estimates for some formats).
    """

    def __init__(self, source: Any, arg: str, max_pixels: int = MAX_PIXELS) -> None:
        self.arg, self.max_pixels = arg, max_pixels
        self._files: list[Path] | None = None
        self._video: Path | None = None
        self._items: Any = None
        self._length: int | None = None
        if isinstance(source, (str, os.PathLike)):
            path = Path(source)
            if path.is_dir():
                self._files = list_images(path, arg)
            elif path.is_file() and path.suffix.lower() in VIDEO_EXTENSIONS:
                self._video = path.resolve()  # absolute: FFmpeg never reads it as a protocol URL
                self._open().release()  # refuse an unreadable or oversized video now
            else:
                raise ValueError(f"{arg}: expected a folder of images or a video file "
                                 f"({'/'.join(VIDEO_EXTENSIONS)}), got {str(path)!r}")
        elif isinstance(source, (np.ndarray, torch.Tensor)):
            if source.ndim not in (3, 4):
                raise ValueError(f"{arg}: expected an array [N, H, W] or [N, H, W, C], got shape {tuple(source.shape)}")
            self._items = source
        elif isinstance(source, (list, tuple)):
            self._items = source
        else:
            raise ValueError(f"{arg}: expected a list of arrays, an array [N, H, W, C], a folder or a video file, "
                             f"got {type(source).__name__}")

    def _open(self) -> Any:
        import cv2

        cap = cv2.VideoCapture(str(self._video), cv2.CAP_FFMPEG)
        if not cap.isOpened():
            raise ValueError(f"{self.arg}: cannot open {str(self._video)!r} as a video")
        w, h = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        try:
            check_pixels(w * h, self.arg, self._video, self.max_pixels, f" per frame ({w}x{h})")
        except ValueError:
            cap.release()
            raise
        return cap

    def __len__(self) -> int:
        if self._length is None:
            if self._files is not None:
                self._length = len(self._files)
            elif self._items is not None:
                self._length = len(self._items)
            else:
                cap = self._open()
                try:
                    n = 0
                    while cap.grab():  # demuxes and decodes, keeps nothing
                        n += 1
                finally:
                    cap.release()
                self._length = n
        return self._length

    def __iter__(self) -> Iterator[np.ndarray]:
        if self._files is not None:
            for p in self._files:
                yield read_image(p, self.arg, max_pixels=self.max_pixels)
        elif self._video is not None:
            import cv2

            cap = self._open()
            try:
                while True:
                    ok, frame = cap.read()
                    if not ok:
                        break
                    yield cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
            finally:
                cap.release()
        else:
            for i in range(len(self._items)):
                f = self._items[i]
                if isinstance(f, torch.Tensor):
                    f = f.detach().cpu().numpy()
                if not isinstance(f, np.ndarray):
                    raise ValueError(f"{self.arg}[{i}]: expected a numpy array or tensor, got {type(f).__name__}")
                yield f
