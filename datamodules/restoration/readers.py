"""Readers of real restoration datasets on disk: the PromptIR/AirNet all-in-one layout and a
generic paired folder. They list files and pair them; images are read later by :func:`read_image`.

PromptIR/AirNet layout (``root`` is the folder holding ``Train/`` and ``test/``)::

    Train/Denoise/**/<name>.<ext>                    clean images (noise is added at load time)
    Train/Derain/rainy/rain-<N>.png                  rainy input
    Train/Derain/gt/norain-<N>.png                   its clean target
    Train/Dehaze/synthetic/part<K>/<id>_<A>_<beta>.jpg   hazy input (RESIDE OTS)
    Train/Dehaze/original/<id>.<ext>                 its clean target, found by <id>
    test/denoise/<set>/<name>.<ext>                  clean images, one folder per set (bsd68, ...)
    test/derain/Rain100L/{input,target}/             pairs with the same file names
    test/dehaze/{input,target}/                      input <id>_<A>_<beta>.jpg, target <id>.png

Generic paired folder: ``input/`` and ``target/`` holding images with the same file names.

Every reader returns a sorted list of :class:`Record`; problems (a missing folder, an image
without a partner, an empty folder) raise ValueError naming the argument and the path.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from mmoe.inputs.image import IMAGE_SUFFIXES, inside_root, to_unit_float
from mmoe.inputs.image import read_image as read_image_file

IMAGE_EXTENSIONS: tuple[str, ...] = IMAGE_SUFFIXES
PROMPTIR_DEGRADATIONS: tuple[str, ...] = ("denoise", "derain", "dehaze")


class Record(NamedTuple):
    """One image pair.

    Args:
        input: the degraded image, or the clean image when ``extra["add_noise"]`` is true (the
            noise is synthesised when the sample is loaded).
        target: the clean image.
        degradation: its degradation name (``denoise``, ``derain``, ...).
        extra: what else the layout says: ``add_noise``, ``set`` (test set name), ``airlight``
            and ``beta`` (parsed from RESIDE file names where present).
    """

    input: str
    target: str
    degradation: str
    extra: dict[str, Any]


def read_image(path: str | Path, arg: str = "root") -> np.ndarray:
    """float32 ``[H, W, 3]`` in [0, 1] through :func:`mmoe.inputs.image.read_image` (8/16-bit kept,
    greyscale repeated to RGB, alpha dropped; the pixel cap read from the header). An unreadable,
    oversized or multi-frame file, or a dtype other than uint8/uint16/float in [0, 1], raises
    ValueError naming ``arg`` and the path."""
    a = read_image_file(path, arg)
    if a.ndim == 3 and a.shape[-1] in (1, 3, 4):
        a = a[..., 0] if a.shape[-1] == 1 else a[..., :3]
    elif a.ndim != 2:
        raise ValueError(f"{arg}: {str(path)!r} holds an array of shape {a.shape}; expected one image")
    try:
        unit = to_unit_float(a, f"{arg}: {str(path)!r}")
    except TypeError as e:  # e.g. a 32-bit integer TIFF: not an image a restoration pair can hold
        raise ValueError(str(e)) from None
    return np.repeat(unit[..., None], 3, axis=-1) if unit.ndim == 2 else unit


def _folder(root: Path, relative: str, arg: str) -> Path:
    path = root / relative
    if not path.is_dir():
        raise ValueError(f"{arg}: expected folder {str(path)!r} ({relative} of the layout), but it does not exist")
    return path


def list_images(folder: Path, arg: str, recursive: bool = False, root: Path | None = None) -> list[Path]:
    """Image files (by extension, case-insensitive; hidden files skipped) in ``folder``, sorted; a
    file whose links lead outside ``root`` (default ``folder``) is refused."""
    files = folder.rglob("*") if recursive else folder.iterdir()
    images = sorted(p for p in files if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                    and not p.name.startswith("."))
    if not images:
        raise ValueError(f"{arg}: no images ({'/'.join(IMAGE_EXTENSIONS)}) in {str(folder)!r}")
    for p in images:
        inside_root(p, folder if root is None else root, arg)
    return images


def _match(inputs: list[Path], target_dir: Path, candidates: Callable[[Path], list[str]],
           arg: str, root: Path) -> list[tuple[Path, Path]]:
    """Pair every input with the first target whose stem is in ``candidates(input)``, preferring
    the input's own extension; raise naming the first input without a partner."""
    by_stem: dict[str, list[Path]] = {}
    for p in list_images(target_dir, arg, root=root):
        by_stem.setdefault(p.stem, []).append(p)
    pairs, missing = [], []
    for src in inputs:
        stems = candidates(src)
        found = [p for s in stems for p in by_stem.get(s, [])]
        if not found:
            missing.append((src, stems))
            continue
        same_ext = [p for p in found if p.suffix.lower() == src.suffix.lower()]
        pairs.append((src, (same_ext or found)[0]))
    if missing:
        src, stems = missing[0]
        raise ValueError(
            f"{arg}: {len(missing)} image(s) without a clean target, e.g. {str(src)!r}: expected "
            f"{' or '.join(repr(s + '.*') for s in stems)} in {str(target_dir)!r}"
        )
    return pairs


def _rain_targets(src: Path) -> list[str]:
    # rain-12.png -> norain-12.png (Rain100L train); the same name also counts (Rain100L test)
    m = re.fullmatch(r"rain-(.+)", src.stem)
    return [src.stem] + ([f"norain-{m.group(1)}"] if m else [])


def _haze_targets(src: Path) -> list[str]:
    # 0001_0.8_0.2.jpg -> 0001.* (RESIDE); the same name also counts
    return [src.stem.split("_")[0], src.stem]


def _haze_extra(src: Path) -> dict[str, Any]:
    parts = src.stem.split("_")
    try:
        return {"airlight": float(parts[1]), "beta": float(parts[2])} if len(parts) == 3 else {}
    except ValueError:
        return {}


def read_promptir_train(root: str | Path, degradations: list[str], arg: str = "root") -> list[Record]:
    """Training records of the PromptIR/AirNet layout for ``degradations`` (a subset of
    denoise, derain, dehaze); only the folders of the requested degradations must exist.

    Args:
        root: the folder holding ``Train/``.
        degradations: which tasks to read.
        arg: argument name used in error messages.
    """
    root = Path(root)
    records: list[Record] = []
    if "denoise" in degradations:
        for p in list_images(_folder(root, "Train/Denoise", arg), arg, recursive=True, root=root):
            records.append(Record(str(p), str(p), "denoise", {"add_noise": True}))
    if "derain" in degradations:
        rainy = list_images(_folder(root, "Train/Derain/rainy", arg), arg, root=root)
        for src, tgt in _match(rainy, _folder(root, "Train/Derain/gt", arg), _rain_targets, arg, root):
            records.append(Record(str(src), str(tgt), "derain", {}))
    if "dehaze" in degradations:
        hazy = list_images(_folder(root, "Train/Dehaze/synthetic", arg), arg, recursive=True, root=root)
        for src, tgt in _match(hazy, _folder(root, "Train/Dehaze/original", arg), _haze_targets, arg, root):
            records.append(Record(str(src), str(tgt), "dehaze", _haze_extra(src)))
    return records


def read_promptir_test(root: str | Path, degradations: list[str], arg: str = "root") -> list[Record]:
    """Test records of the PromptIR/AirNet layout: every set under ``test/denoise/`` (noise added
    at load time, ``extra["set"]`` names the set), ``test/derain/Rain100L`` and ``test/dehaze``.

    Args:
        root: the folder holding ``test/``.
        degradations: which tasks to read (a subset of denoise, derain, dehaze).
        arg: argument name used in error messages.
    """
    root = Path(root)
    records: list[Record] = []
    if "denoise" in degradations:
        sets = sorted(p for p in _folder(root, "test/denoise", arg).iterdir() if p.is_dir())
        if not sets:
            raise ValueError(f"{arg}: expected one folder per test set (e.g. bsd68) in {str(root / 'test/denoise')!r}")
        for folder in sets:
            for p in list_images(folder, arg, root=root):
                records.append(Record(str(p), str(p), "denoise", {"add_noise": True, "set": folder.name}))
    for name, relative, targets in (("derain", "test/derain/Rain100L", _rain_targets),
                                    ("dehaze", "test/dehaze", _haze_targets)):
        if name in degradations:
            folder = _folder(root, relative, arg)
            inputs = list_images(_folder(folder, "input", arg), arg, root=root)
            for src, tgt in _match(inputs, _folder(folder, "target", arg), targets, arg, root):
                extra = {"set": Path(relative).name} | (_haze_extra(src) if name == "dehaze" else {})
                records.append(Record(str(src), str(tgt), name, extra))
    return records


def read_paired(folder: str | Path, degradation: str, arg: str = "root") -> list[Record]:
    """Records of a generic paired folder: ``input/<name>`` degraded, ``target/<name>`` clean
    (the same file name; a different image extension is accepted), all of one degradation.

    Args:
        folder: the folder holding ``input/`` and ``target/``.
        degradation: the degradation name given to every record.
        arg: argument name used in error messages.
    """
    folder = Path(folder)
    inputs = list_images(_folder(folder, "input", arg), arg, root=folder)
    pairs = _match(inputs, _folder(folder, "target", arg), lambda p: [p.stem], arg, folder)
    return [Record(str(src), str(tgt), degradation, {}) for src, tgt in pairs]
