"""Readers of real single-object tracking datasets on disk. They list frames and parse the
annotation files; images are decoded later, when a sample is loaded.

Layouts (``root`` is the folder that holds the sequences, or the listed files)::

    LasHeR (RGB + thermal)      <seq>/visible/*.jpg   <seq>/infrared/*.jpg
                                <seq>/visible.txt     <seq>/infrared.txt   x,y,w,h per frame
    DepthTrack (RGB + depth)    <seq>/color/%08d.jpg  <seq>/depth/%08d.png (16-bit)
                                <seq>/groundtruth.txt (nan,nan,nan,nan where the target is absent)
    VisEvent (RGB + events)     trainlist.txt / testlist.txt (sequence names)
                                <seq>/vis_imgs/*.bmp  <seq>/event_imgs/*.bmp
                                <seq>/groundtruth.txt <seq>/absent_label.txt (1 = present per frame)
    LaSOT (RGB only)            <class>/<class>-<n>/img/%08d.jpg, groundtruth.txt,
                                full_occlusion.txt and out_of_view.txt (one comma-separated line of 0/1)
    GOT-10k (RGB only)          list.txt (sequence names), <seq>/%08d.jpg, groundtruth.txt,
                                absence.label (1 = absent per frame), cover.label (0..8 visible tenths)

Frame files are listed in natural order (``2.jpg`` before ``10.jpg``; LasHeR's names differ
between sequences and between its two modalities, so what is there is listed, not a pattern).
Box files hold ``x, y, w, h`` per line separated by commas (every field filled), tabs or spaces;
a box that is not finite or has ``w <= 0`` or ``h <= 0`` marks the target absent in that frame.
Label files hold integers from 0 to 255. A GOT-10k test sequence has only the first box: the
other rows are NaN and ``annotated`` is 1. Annotation files are UTF-8 text of at most 64 MiB.
Nothing outside ``root`` is read: a sequence folder, frame or annotation file that is a link
leading out of it is refused. Every problem (a missing folder or file, counts that differ, an
unreadable line) raises ValueError naming ``root`` and the path; errors never quote a file's
content.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal, NamedTuple

import numpy as np

from mmoe.inputs.image import inside_root
from mmoe.inputs.video import list_images, natural_key

Modality = Literal["thermal", "depth", "event"]
#: the largest annotation file read (LaSOT's longest box file is well under 1 MiB)
MAX_TEXT_BYTES = 64 * 2**20
#: label values (GOT-10k's cover.label goes to 8; the others are 0/1)
MAX_LABEL = 255


class Sequence(NamedTuple):
    """One annotated sequence.

    Args:
        name: sequence name (unique within a dataset).
        frames: RGB frame paths in order.
        x_frames: the X modality's frame paths (same length), or None for RGB-only data.
        modality: ``"thermal"``, ``"depth"`` or ``"event"``, or None for RGB-only data.
        boxes: ground-truth boxes ``[N, 4]`` float64 xywh in pixels (NaN rows: not annotated).
        present: ``[N]`` bool, False where the target is absent (occluded, out of view, no box).
        annotated: how many leading frames carry a box (N except for GOT-10k's test split).
    """

    name: str
    frames: list[str]
    x_frames: list[str] | None
    modality: Modality | None
    boxes: np.ndarray
    present: np.ndarray
    annotated: int


def _inside(path: Path, root: Path | None) -> Path:
    """``path``, refused when it leads (links followed) outside ``root``."""
    if root is not None:
        inside_root(path, root, "root")
    return path


def _dir(path: Path, what: str, root: Path | None = None) -> Path:
    if not path.is_dir():
        raise ValueError(f"root: expected folder {str(path)!r} ({what}), but it does not exist")
    return _inside(path, root)


def _file(path: Path, what: str, root: Path | None = None) -> Path:
    if not path.is_file():
        raise ValueError(f"root: expected file {str(path)!r} ({what}), but it does not exist")
    return _inside(path, root)


def _read_text(path: Path, what: str, root: Path | None = None) -> str:
    """A UTF-8 annotation file inside ``root``, at most ``MAX_TEXT_BYTES``."""
    size = _file(path, what, root).stat().st_size
    if size > MAX_TEXT_BYTES:
        raise ValueError(f"root: {str(path)!r} ({what}) has {size} bytes, more than the {MAX_TEXT_BYTES} read")
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"root: {str(path)!r} ({what}) is not UTF-8 text (byte {e.start})") from None


def list_frames(folder: Path, root: Path | None = None) -> list[str]:
    """Image files in ``folder`` (by extension, case-insensitive, hidden files skipped) in natural
    order; with ``root``, the folder and every linked frame must lie inside it."""
    _dir(folder, "a frame folder", root)
    return [str(p) for p in list_images(folder, "root", within=root)]


def read_boxes(path: Path, root: Path | None = None) -> np.ndarray:
    """``[N, 4]`` float64 boxes of a box file: one ``x, y, w, h`` per line, separated by commas
    (every field filled) or by tabs or spaces."""
    rows = []
    for i, line in enumerate(_read_text(path, "a box file", root).splitlines(), start=1):
        if not line.strip():
            continue
        fields = [f.strip() for f in line.split(",")] if "," in line else line.split()
        problem = None
        if len(fields) != 4:
            problem = f"{len(fields)} fields"
        elif not all(fields):
            problem = f"field {fields.index('') + 1} empty"
        else:
            try:
                rows.append([float(v) for v in fields])
            except ValueError:
                problem = "a field that is not a number"
        if problem:  # the line itself is not quoted: the file may not be what its name says
            raise ValueError(f"root: {str(path)!r} line {i}: expected 4 numbers x, y, w, h separated by commas, "
                             f"tabs or spaces, got {problem}")
    if not rows:
        raise ValueError(f"root: {str(path)!r} holds no boxes")
    return np.asarray(rows, dtype=np.float64)


def read_flags(path: Path, root: Path | None = None) -> np.ndarray:
    """Integer flags (0 to ``MAX_LABEL``) of a label file: one per line, or one comma-separated line (LaSOT)."""
    out = []
    for k, v in enumerate(_read_text(path, "a label file", root).replace(",", " ").split(), start=1):
        try:
            f = float(v)  # "1.0" is 1; "0.7", "inf" and "1e30" are refused below
        except ValueError:
            f = math.nan
        if not (f.is_integer() and 0 <= f <= MAX_LABEL):
            raise ValueError(f"root: {str(path)!r} value {k}: expected integer labels from 0 to {MAX_LABEL}")
        out.append(int(f))
    return np.asarray(out, dtype=np.int64)


def box_present(boxes: np.ndarray) -> np.ndarray:
    """``[N]`` bool: the box is finite with positive width and height."""
    return np.isfinite(boxes).all(1) & (np.nan_to_num(boxes[:, 2]) > 0) & (np.nan_to_num(boxes[:, 3]) > 0)


def _same_length(path: Path, n: int, unit: str = "frames", **counts: int) -> None:
    for what, count in counts.items():
        if count != n:
            raise ValueError(f"root: sequence {str(path)!r}: {n} {unit} but {count} {what}")


def _sequences(root: Path, names: list[str] | None, marker: str) -> list[Path]:
    """The sequence folders: the ``names`` given, or every subfolder of ``root`` holding ``marker``
    (natural order); each must lie inside ``root``."""
    _dir(root, "the dataset root")
    if names is not None:
        return [_dir(root / n, f"sequence {n!r} from the list", root) for n in names]
    found = sorted((p for p in root.iterdir() if p.is_dir() and (p / marker).exists()),
                   key=lambda p: natural_key(p.name))
    if not found:
        raise ValueError(f"root: no sequences (folders with {marker!r}) in {str(root)!r}")
    return [_inside(p, root) for p in found]


def _read_list(path: Path, root: Path) -> list[str]:
    names = [line.strip() for line in _read_text(path, "a sequence list", root).splitlines() if line.strip()]
    if not names:
        raise ValueError(f"root: {str(path)!r} lists no sequences")
    for i, n in enumerate(names, start=1):  # a list file must not lead the reader out of the dataset
        if "/" in n or "\\" in n or n in (".", ".."):
            raise ValueError(f"root: {str(path)!r} entry {i} is a path, expected a plain sequence folder name")
    return names


def read_lasher(root: str | Path) -> list[Sequence]:
    """LasHeR (RGB + thermal): every ``<seq>/`` with ``visible/`` and ``infrared/``; boxes from
    ``visible.txt`` (``infrared.txt`` must have as many rows; the two are aligned in LasHeR)."""
    root, out = Path(root), []
    for seq in _sequences(root, None, "visible"):
        rgb, tir = list_frames(seq / "visible", root), list_frames(seq / "infrared", root)
        boxes = read_boxes(seq / "visible.txt", root)
        ir_boxes = read_boxes(seq / "infrared.txt", root)
        _same_length(seq, len(rgb), **{"infrared frames": len(tir), "visible.txt boxes": len(boxes),
                                                 "infrared.txt boxes": len(ir_boxes)})
        out.append(Sequence(seq.name, rgb, tir, "thermal", boxes, box_present(boxes), len(boxes)))
    return out


def read_depthtrack(root: str | Path) -> list[Sequence]:
    """DepthTrack (RGB + 16-bit depth): every ``<seq>/`` with ``color/``, ``depth/`` and ``groundtruth.txt``."""
    root, out = Path(root), []
    for seq in _sequences(root, None, "color"):
        rgb, depth = list_frames(seq / "color", root), list_frames(seq / "depth", root)
        boxes = read_boxes(seq / "groundtruth.txt", root)
        _same_length(seq, len(rgb), **{"depth frames": len(depth), "boxes": len(boxes)})
        out.append(Sequence(seq.name, rgb, depth, "depth", boxes, box_present(boxes), len(boxes)))
    return out


def read_visevent(root: str | Path, split: Literal["train", "test"] = "test") -> list[Sequence]:
    """VisEvent (RGB + event frames): the sequences of ``<split>list.txt``; ``absent_label.txt``
    holds 1 where the target is present and 0 where it is absent."""
    if split not in ("train", "test"):
        raise ValueError(f"split: expected 'train' or 'test', got {split!r}")
    root = Path(root)
    out = []
    for seq in _sequences(root, _read_list(root / f"{split}list.txt", root), "vis_imgs"):
        rgb, events = list_frames(seq / "vis_imgs", root), list_frames(seq / "event_imgs", root)
        boxes = read_boxes(seq / "groundtruth.txt", root)
        label = read_flags(seq / "absent_label.txt", root)
        _same_length(seq, len(rgb), **{"event frames": len(events), "boxes": len(boxes),
                                                   "absent labels": len(label)})
        out.append(Sequence(seq.name, rgb, events, "event", boxes, box_present(boxes) & (label == 1), len(boxes)))
    return out


def read_lasot(root: str | Path, classes: list[str] | None = None) -> list[Sequence]:
    """LaSOT (RGB only): ``<class>/<class>-<n>/`` sequences (all classes, or those given); the
    target is absent where ``full_occlusion.txt`` or ``out_of_view.txt`` says 1."""
    root = Path(root)
    _dir(root, "the dataset root")
    class_dirs = [_dir(root / c, f"class {c!r}", root) for c in classes] if classes is not None else \
        [_inside(p, root) for p in sorted(root.iterdir(), key=lambda p: natural_key(p.name))
         if p.is_dir() and not p.name.startswith(".")]
    out = []
    for class_dir in class_dirs:
        for seq in sorted((p for p in class_dir.iterdir() if p.is_dir() and (p / "img").is_dir()),
                          key=lambda p: natural_key(p.name)):
            rgb = list_frames(_inside(seq, root) / "img", root)
            boxes = read_boxes(seq / "groundtruth.txt", root)
            occluded = read_flags(seq / "full_occlusion.txt", root)
            out_of_view = read_flags(seq / "out_of_view.txt", root)
            _same_length(seq, len(rgb), **{"boxes": len(boxes), "full_occlusion flags": len(occluded),
                                                    "out_of_view flags": len(out_of_view)})
            present = box_present(boxes) & (occluded == 0) & (out_of_view == 0)
            out.append(Sequence(seq.name, rgb, None, None, boxes, present, len(boxes)))
    if not out:
        raise ValueError(f"root: no LaSOT sequences (<class>/<class>-<n>/img/) in {str(root)!r}")
    return out


def read_got10k(root: str | Path) -> list[Sequence]:
    """GOT-10k (RGB only): the sequences of ``list.txt`` (one split's folder). Where they exist,
    ``absence.label`` (1 = absent) and ``cover.label`` (0 = no visible part) mark absent frames;
    the test split has only the first box."""
    root = Path(root)
    out = []
    for seq in _sequences(root, _read_list(root / "list.txt", root), "groundtruth.txt"):
        rgb = list_frames(seq, root)
        boxes = read_boxes(seq / "groundtruth.txt", root)
        annotated = len(boxes)
        if annotated == 1 and len(rgb) > 1:  # test split: the initial box only
            boxes = np.vstack([boxes, np.full((len(rgb) - 1, 4), np.nan)])
        _same_length(seq, len(rgb), boxes=len(boxes))
        present = box_present(boxes)
        for label, absent_when in (("absence.label", lambda v: v == 1), ("cover.label", lambda v: v == 0)):
            if (seq / label).exists():  # cover 0: no visible part (fully occluded)
                flags = read_flags(seq / label, root)
                _same_length(seq, annotated, "annotated frames", **{f"{label} flags": len(flags)})
                present[:annotated] &= ~absent_when(flags)
        out.append(Sequence(seq.name, rgb, None, None, boxes, present, annotated))
    return out
