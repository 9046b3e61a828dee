"""Readers of the real two-speaker separation layouts (audio read with soundfile).

LibriMix (Libri2Mix)::

    <root>/wav{8k,16k}/{min,max}/{train-360,train-100,dev,test}/{mix_clean,mix_both,s1,s2,noise}/<id>.wav
    <root>/wav{8k,16k}/{min,max}/metadata/mixture_<split>_<type>.csv
        mixture_ID, mixture_path, source_1_path, source_2_path[, noise_path], length

The CSV paths are absolute on the machine that generated them; they are re-rooted under
``root`` by their last five components (``wav8k/min/<split>/<folder>/<id>.wav``).

WSJ0-2mix::

    <root>/2speakers/wav{8k,16k}/{min,max}/{tr,cv,tt}/{mix,s1,s2}/<name>.wav  (``root`` may be ``2speakers``)
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

LIBRIMIX_SPLITS = ("train-360", "train-100", "dev", "test")
LIBRIMIX_TYPES = ("mix_clean", "mix_both")
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


def read_audio(path: str | os.PathLike, sample_rate: int | None = None, arg: str = "path") -> tuple[np.ndarray, int]:
    """Mono float32 audio and its rate; ``sample_rate`` (when given) must match the file's. Errors name ``arg``."""
    import soundfile as sf

    audio, rate = sf.read(str(path), dtype="float32", always_2d=True)
    if audio.shape[1] != 1:
        raise ValueError(f"{arg}: expected a mono file, got {audio.shape[1]} channels in {str(path)!r}")
    if sample_rate is not None and rate != sample_rate:
        raise ValueError(f"{arg}: expected {sample_rate} Hz audio, got {rate} Hz in {str(path)!r}")
    return audio[:, 0], int(rate)


def _reroot(root: Path, path: str) -> str:
    parts = Path(path.replace("\\", "/")).parts
    tail = parts[-5:]
    # a CSV must not lead the reader out of root: the five kept parts are plain names
    if len(parts) < 5 or any(p in ("", ".", "..") or "/" in p for p in tail):
        raise ValueError(f"root: LibriMix CSV path {path!r} does not end in wav*/<mode>/<split>/<folder>/<id>.wav")
    return str(root.joinpath(*tail))


def read_librimix(root: str | os.PathLike, split: str, sample_rate: int = 8000, mode: str = "min",
                  mixture_type: str = "mix_clean") -> list[MixtureRecord]:
    """The mixtures of a Libri2Mix split from its metadata CSV, paths re-rooted under ``root``."""
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
    records = []
    with open(csv_path, newline="") as f:
        reader = csv.DictReader(f)
        needed = {"mixture_ID", "mixture_path", "source_1_path", "source_2_path"}
        missing = needed - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"root: {str(csv_path)!r} lacks the columns {sorted(missing)}")
        for row in reader:
            length = row.get("length")
            records.append(MixtureRecord(
                name=row["mixture_ID"], mixture=_reroot(rate_mode.parents[1], row["mixture_path"]),
                sources=(_reroot(rate_mode.parents[1], row["source_1_path"]),
                         _reroot(rate_mode.parents[1], row["source_2_path"])),
                length=int(float(length)) if length not in (None, "") else None))
    if not records:
        raise ValueError(f"root: {str(csv_path)!r} lists no mixtures")
    return records


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
    records = []
    for mix in sorted((folder / "mix").glob("*.wav")):
        sources = tuple(str(folder / s / mix.name) for s in ("s1", "s2"))
        for s in sources:
            if not os.path.isfile(s):
                raise ValueError(f"root: mixture {str(mix)!r} has no source file {s!r}")
        records.append(MixtureRecord(name=mix.stem, mixture=str(mix), sources=sources))
    if not records:
        raise ValueError(f"root: no .wav mixtures in {str(folder / 'mix')!r}")
    return records


def load_record(record: MixtureRecord, sample_rate: int) -> tuple[np.ndarray, np.ndarray]:
    """``(mixture [L], sources [S, L])`` of a record; lengths are cut to the shortest file."""
    mix, _ = read_audio(record.mixture, sample_rate)
    sources = [read_audio(p, sample_rate)[0] for p in record.sources]
    n = min([len(mix)] + [len(s) for s in sources])
    return mix[:n], np.stack([s[:n] for s in sources])
