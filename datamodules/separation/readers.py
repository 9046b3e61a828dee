"""Readers of the real two-speaker separation layouts (audio read with soundfile).

LibriMix (Libri2Mix)::

    <root>/wav{8k,16k}/{min,max}/{train-360,train-100,dev,test}/{mix_clean,mix_both,s1,s2,noise}/<id>.wav
    <root>/wav{8k,16k}/{min,max}/metadata/mixture_<split>_<type>.csv
        mixture_ID, mixture_path, source_1_path, source_2_path[, noise_path], length

The CSV paths are absolute on the machine that generated them; they are re-rooted into the CSV's own
split folder by their last two components (``<folder>/<id>.wav``): a row must name that split as its
third-last component, so a test CSV cannot lead into a training split. A path that resolves (through
symlinks) outside its split folder is refused.

WSJ0-2mix::

    <root>/2speakers/wav{8k,16k}/{min,max}/{tr,cv,tt}/{mix,s1,s2}/<name>.wav  (``root`` may be ``2speakers``)

Audio is read by :func:`mmoe.inputs.audio.read_audio` (soundfile; a corrupt file is a ValueError naming it).
"""

from __future__ import annotations

import csv
import io
import math
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from mmoe.inputs.audio import read_audio

LIBRIMIX_SPLITS = ("train-360", "train-100", "dev", "test")
LIBRIMIX_TYPES = ("mix_clean", "mix_both")
LIBRIMIX_FOLDERS = ("mix_clean", "mix_both", "mix_single", "s1", "s2", "noise")
WSJ0_SPLITS = ("tr", "cv", "tt")
MODES = ("min", "max")


@dataclass(frozen=True)
class MixtureRecord:
    """One mixture on disk: ``mixture`` path, ``sources`` paths (speaker order), ``name``, ``length``
    in samples (None when unknown)."""

    name: str
    mixture: str
    sources: tuple[str, ...]
    length: int | None = None


def _rate_dir(sample_rate: int) -> str:
    if sample_rate not in (8000, 16000):
        raise ValueError(f"sample_rate: expected 8000 or 16000 (the wav8k/wav16k folders), got {sample_rate!r}")
    return f"wav{sample_rate // 1000}k"


def _inside(path: Path, folder: Path, real_folder: Path, what: str) -> str:
    """``path`` as a string, refused when it resolves (symlinks followed) outside ``folder``
    (``real_folder``: ``folder.resolve()``, computed once per listing)."""
    real = path.resolve()
    if not real.is_relative_to(real_folder):
        raise ValueError(f"root: {what} {str(path)!r} resolves to {str(real)!r}, outside {str(folder)!r}")
    return str(path)


def _reroot(split_dir: Path, real_split: Path, path: str | None, where: str) -> str:
    """The CSV's ``path`` as ``split_dir/<folder>/<id>.wav`` (``real_split``: ``split_dir.resolve()``);
    ``where`` names the row and column in errors."""
    if not path:
        raise ValueError(f"root: {where} is empty or missing")
    parts = PurePosixPath(path.replace("\\", "/")).parts
    # a CSV must not lead the reader out of its split: the kept parts are plain names under this split
    if (len(parts) < 3 or parts[-3] != split_dir.name or parts[-2] not in LIBRIMIX_FOLDERS
            or parts[-1] in (".", "..")):
        raise ValueError(f"root: LibriMix CSV path {path!r} ({where}) does not end in "
                         f"{split_dir.name}/<{'|'.join(LIBRIMIX_FOLDERS)}>/<id>.wav")
    return _inside(split_dir / parts[-2] / parts[-1], split_dir, real_split, f"{where}: the file")


def read_librimix(root: str | os.PathLike, split: str, sample_rate: int = 8000, mode: str = "min",
                  mixture_type: str = "mix_clean") -> list[MixtureRecord]:
    """The mixtures of a Libri2Mix split from its metadata CSV, paths re-rooted into
    ``root/wav<rate>k/<mode>/<split>`` (see the module docstring); errors name the CSV, row and column."""
    if split not in LIBRIMIX_SPLITS:
        raise ValueError(f"split: expected one of {LIBRIMIX_SPLITS}, got {split!r}")
    if mode not in MODES:
        raise ValueError(f"mode: expected one of {MODES}, got {mode!r}")
    if mixture_type not in LIBRIMIX_TYPES:
        raise ValueError(f"mixture_type: expected one of {LIBRIMIX_TYPES}, got {mixture_type!r}")
    base = Path(root).expanduser()
    rate_mode = base / _rate_dir(sample_rate) / mode
    name = f"mixture_{split}_{mixture_type}.csv"
    candidates = [rate_mode / "metadata" / name, base / "metadata" / name]
    csv_path = next((p for p in candidates if p.is_file()), None)
    if csv_path is None:
        raise ValueError(f"root: no LibriMix metadata {name} under {str(base)!r} (looked in "
                         f"{[str(p) for p in candidates]})")
    try:
        text = csv_path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ValueError(f"root: {str(csv_path)!r} is not UTF-8 text ({e})") from e
    reader = csv.DictReader(io.StringIO(text, newline=""))
    needed = ("mixture_ID", "mixture_path", "source_1_path", "source_2_path")
    missing = set(needed) - set(reader.fieldnames or [])
    if missing:
        raise ValueError(f"root: {str(csv_path)!r} lacks the columns {sorted(missing)}")
    split_dir = rate_mode / split
    real_split = split_dir.resolve()
    records = []
    for row_no, row in enumerate(reader, start=1):
        where = {c: f"{str(csv_path)!r} row {row_no} column {c!r}" for c in needed + ("length",)}
        if not row["mixture_ID"]:
            raise ValueError(f"root: {where['mixture_ID']} is empty or missing")
        records.append(MixtureRecord(
            name=row["mixture_ID"], mixture=_reroot(split_dir, real_split, row["mixture_path"], where["mixture_path"]),
            sources=tuple(_reroot(split_dir, real_split, row[c], where[c]) for c in ("source_1_path", "source_2_path")),
            length=_length(row.get("length"), where["length"])))
    if not records:
        raise ValueError(f"root: {str(csv_path)!r} lists no mixtures")
    return records


def _length(value: str | None, where: str) -> int | None:
    """The CSV's ``length`` column (samples) as an int, None when absent."""
    if value in (None, ""):
        return None
    try:
        n = float(value)
    except ValueError:
        n = math.nan
    if not (math.isfinite(n) and n >= 0 and n == int(n)):
        raise ValueError(f"root: {where}: expected a whole number of samples >= 0, got {value!r}")
    return int(n)


def read_wsj0_2mix(root: str | os.PathLike, split: str, sample_rate: int = 8000, mode: str = "min") -> list[MixtureRecord]:
    """The mixtures of a WSJ0-2mix split: every ``mix/<name>.wav`` with ``s1``/``s2`` of the same name."""
    if split not in WSJ0_SPLITS:
        raise ValueError(f"split: expected one of {WSJ0_SPLITS}, got {split!r}")
    if mode not in MODES:
        raise ValueError(f"mode: expected one of {MODES}, got {mode!r}")
    base = Path(root).expanduser()
    if (base / "2speakers").is_dir():
        base = base / "2speakers"
    folder = base / _rate_dir(sample_rate) / mode / split
    if not (folder / "mix").is_dir():
        raise ValueError(f"root: no WSJ0-2mix folder {str(folder / 'mix')!r}")
    records, real_folder = [], folder.resolve()
    for mix in sorted((folder / "mix").glob("*.wav")):
        sources = tuple(folder / s / mix.name for s in ("s1", "s2"))
        for s in sources:
            if not s.is_file():
                raise ValueError(f"root: mixture {str(mix)!r} has no source file {str(s)!r}")
        records.append(MixtureRecord(name=mix.stem, mixture=_inside(mix, folder, real_folder, "mixture"),
                                     sources=tuple(_inside(s, folder, real_folder, "source") for s in sources)))
    if not records:
        raise ValueError(f"root: no .wav mixtures in {str(folder / 'mix')!r}")
    return records


def load_record(record: MixtureRecord, sample_rate: int) -> tuple[np.ndarray, np.ndarray]:
    """``(mixture [L], sources [S, L])`` of a record; lengths are cut to the shortest file."""
    mix, _ = read_audio(record.mixture, arg="record.mixture", sample_rate=sample_rate)
    sources = [read_audio(p, arg=f"record.sources[{i}]", sample_rate=sample_rate)[0]
               for i, p in enumerate(record.sources)]
    n = min([len(mix)] + [len(s) for s in sources])
    return mix[:n], np.stack([s[:n] for s in sources])
