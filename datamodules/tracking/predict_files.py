"""The tracking task's inputs for ``mmoe predict`` (``predict_path``).

One sequence is either

* a video file (``.mp4``, ``.avi``, ``.mov``, ``.mkv``, ``.webm``) with the target's first box in a
  text file of the same name ending ``.txt`` beside it (``clip.mp4`` -> ``clip.txt``), or
* a folder holding the first box in ``init_box.txt`` (or as the first line of a ``groundtruth.txt``)
  and its frames as images, either directly inside it or in ``rgb/``; with ``rgb/``, X frames in a
  sibling folder named after their modality (``depth/``, ``thermal/`` or ``event/``) are read too.

A box is ``x, y, w, h`` in pixels (commas, tabs or spaces). ``predict_path`` is one sequence or a
folder of them.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from mmoe.datamodules.tracking.synthetic import MODALITIES
from mmoe.inputs.video import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS

BOX_FILES = ("init_box.txt", "groundtruth.txt")
MAX_BOX_FILE_BYTES = 2**16  # only the first line is read


def is_sequence_folder(folder: Path) -> bool:
    """A folder with a first box file is one sequence."""
    return any((folder / name).is_file() for name in BOX_FILES)


def _first_box(path: Path) -> list[float]:
    with open(path, encoding="utf-8", errors="replace") as f:
        line = f.readline(MAX_BOX_FILE_BYTES).strip()
    parts = [p for p in re.split(r"[,\s]+", line) if p]
    try:
        box = [float(p) for p in parts]
    except ValueError:
        box = []
    if len(box) != 4:
        raise ValueError(f"predict_path: {str(path)!r}: expected the first box as 'x, y, w, h' on its first line, "
                         f"got {line[:80]!r}")
    return box


def _has_images(folder: Path) -> bool:
    with os.scandir(folder) as entries:
        return any(os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS for e in entries)


def read_sequence(path: str | os.PathLike) -> dict[str, Any]:
    """``predict``'s keyword arguments (``frames``, ``init_box``, ``x_frames``, ``modality``) for one
    sequence (see the module docstring); frames stay paths, read one at a time by ``predict``."""
    path = Path(path)
    if path.is_file():
        if path.suffix.lower() not in VIDEO_EXTENSIONS:
            raise ValueError(f"predict_path: {str(path)!r} is not a video ({', '.join(VIDEO_EXTENSIONS)})")
        box_file = path.with_suffix(".txt")
        if not box_file.is_file():
            raise ValueError(f"predict_path: the video {str(path)!r} needs its first box in {str(box_file)!r}")
        return {"frames": str(path), "init_box": _first_box(box_file)}
    box_file = next((path / n for n in BOX_FILES if (path / n).is_file()), None)
    if box_file is None:
        raise ValueError(f"predict_path: {str(path)!r} has no {' or '.join(BOX_FILES)} with the first box")
    inputs: dict[str, Any] = {"init_box": _first_box(box_file)}
    rgb = path / "rgb"
    if rgb.is_dir():
        inputs["frames"] = str(rgb)
        found = [m for m in MODALITIES if (path / m).is_dir()]
        if len(found) > 1:
            raise ValueError(f"predict_path: {str(path)!r} has X frames of several modalities {found}; keep one")
        if found:
            inputs["x_frames"], inputs["modality"] = str(path / found[0]), found[0]
    elif _has_images(path):
        inputs["frames"] = str(path)
    else:
        raise ValueError(f"predict_path: {str(path)!r} has no frames ({'/'.join(IMAGE_EXTENSIONS)} images in it "
                         "or in rgb/)")
    return inputs
