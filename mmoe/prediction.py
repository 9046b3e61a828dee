"""What ``mmoe predict`` shares across tasks.

A datamodule's predict loader yields *predict items*: ``{"name": str, "inputs": dict}``, where
``inputs`` are the keyword arguments of the task's Python ``predict`` (so the CLI and the Python
API check and treat inputs the same way). They come from the user's own files
(``--data.init_args.predict_path``, listed by :func:`list_inputs`) or from the datamodule's test
split. The task's :class:`PredictionWriter` writes each result into ``<run folder>/predictions/``
in a format a user opens (PNG, WAV, CSV, JSON lines, ``.npz``); every file is written to a
temporary name and renamed, so nothing is left half-written.
"""
from __future__ import annotations

import contextlib
import csv
import json
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter
from torch.utils.data import DataLoader, Dataset

from mmoe.inputs.image import inside_root
from mmoe.inputs.video import natural_key

#: most files one ``predict_path`` folder may list (a folder never decides how much is read)
MAX_INPUTS = 100_000


def _suffix_of(name: str, suffixes: Sequence[str]) -> str | None:
    low = name.lower()
    return next((s for s in sorted(suffixes, key=len, reverse=True) if low.endswith(s)), None)


def _stem(name: str, suffixes: Sequence[str]) -> str:
    suffix = _suffix_of(name, suffixes)
    return name[: -len(suffix)] if suffix else name


def list_inputs(path: str | os.PathLike, suffixes: Sequence[str], *, arg: str = "predict_path",
                folders: Callable[[Path], bool] | None = None) -> list[tuple[str, Path]]:
    """``(name, path)`` of each input under ``path``, in natural order.

    Args:
        path: one file, or a folder whose entries are inputs (not recursive).
        suffixes: the file endings a task reads (lower case, with the dot: ``".png"``, ``".nii.gz"``).
        arg: the argument named in errors.
        folders: if given, a sub-folder for which it returns True is one input too (a DICOM series,
            a frame folder); ``path`` itself is one input when it is such a folder.

    Names are the file names without their ending (the whole name where two would collide).
    A link that leads outside the folder is refused; other entries are skipped.
    """
    p = Path(path)
    if not p.exists():
        raise ValueError(f"{arg}: no such file or folder {str(path)!r}")
    if p.is_file():
        if _suffix_of(p.name, suffixes) is None:
            raise ValueError(f"{arg}: {str(path)!r} is not a file this task reads (expected one of "
                             f"{', '.join(suffixes)})")
        return [(_stem(p.name, suffixes), p)]
    if folders is not None and folders(p):
        return [(p.name, p)]
    found: list[Path] = []
    with os.scandir(p) as entries:
        for e in entries:
            if e.name.startswith("."):
                continue
            if e.is_symlink():
                inside_root(e.path, p, arg)
            if (e.is_file() and _suffix_of(e.name, suffixes)) or (e.is_dir() and folders and folders(Path(e.path))):
                found.append(Path(e.path))
                if len(found) > MAX_INPUTS:
                    raise ValueError(f"{arg}: more than {MAX_INPUTS} inputs in {str(path)!r}; split the folder")
    if not found:
        raise ValueError(f"{arg}: no input this task reads ({', '.join(suffixes)}) in folder {str(path)!r}")
    found.sort(key=lambda f: natural_key(f.name))
    stems = [_stem(f.name, suffixes) if f.is_file() else f.name for f in found]
    return [(s if stems.count(s) == 1 else f.name, f) for s, f in zip(stems, found)]


class PredictItems(Dataset):
    """Predict items ``{"name", "inputs"}``: ``make(i)`` builds the inputs of item ``i`` when read."""

    def __init__(self, names: Sequence[str], make: Callable[[int], dict[str, Any]]) -> None:
        self.names, self.make = list(names), make

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"name": self.names[i], "inputs": self.make(i)}


def _as_list(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return items


def predict_loader(items: PredictItems) -> DataLoader:
    """One item per step, uncollated (inputs differ in size and kind), read in the main process."""
    return DataLoader(items, batch_size=1, shuffle=False, collate_fn=_as_list, num_workers=0)


def split_items(dataset: Dataset, to_inputs: Callable[[Any], dict[str, Any]],
                names: Sequence[str] | None = None, prefix: str = "test") -> PredictItems:
    """The samples of a split as predict items.

    Args:
        dataset: the split.
        to_inputs: a sample -> the task's ``predict`` keyword arguments.
        names: the samples' names (``/`` becomes ``_``), prefixed by their index.
        prefix: the name of a sample without ``names``: ``<prefix>_<index>``.
    """
    n = len(dataset)  # type: ignore[arg-type]
    width = max(4, len(str(n - 1)))
    if names is None:
        names = [f"{prefix}_{i:0{width}d}" for i in range(n)]
    else:
        names = [f"{i:0{width}d}_" + str(s).replace("/", "_").replace("\\", "_") for i, s in enumerate(names)]
    return PredictItems(names, lambda i: to_inputs(dataset[i]))


class PredictionWriter(BasePredictionWriter):
    """Base of the tasks' writers: ``write(name, inputs, result)`` per predicted item, into
    :attr:`folder` (``<run folder>/predictions`` unless given).

    Args:
        folder: where to write; default the run folder's ``predictions/``.
    """

    def __init__(self, folder: str | os.PathLike | None = None) -> None:
        super().__init__(write_interval="batch")
        self._given = Path(folder) if folder is not None else None
        self.folder = self._given

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self._given is None:
            self.folder = Path(trainer.log_dir or trainer.default_root_dir) / "predictions"
        self.folder.mkdir(parents=True, exist_ok=True)

    def write_on_batch_end(self, trainer: Trainer, pl_module: LightningModule, prediction: Any,
                           batch_indices: Sequence[int] | None, batch: Any, batch_idx: int,
                           dataloader_idx: int = 0) -> None:
        for item in prediction:
            self.write(item["name"], item["inputs"], item["result"])

    def write(self, name: str, inputs: dict[str, Any], result: Any) -> None:
        """Write one item's result (each task's writer)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ helpers
    @contextlib.contextmanager
    def target(self, filename: str) -> Iterator[Path]:
        """A temporary path in :attr:`folder` that becomes ``filename`` when the block ends without error."""
        assert self.folder is not None
        fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=".partial-", suffix=Path(filename).suffix)
        os.close(fd)
        try:
            yield Path(tmp)
            os.replace(tmp, self.folder / filename)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)

    def append_csv(self, filename: str, row: dict[str, Any]) -> None:
        """Append ``row`` to a CSV file of :attr:`folder` (header written with the first row); one
        complete line per call."""
        assert self.folder is not None
        path = self.folder / filename
        new = not path.exists()
        with open(path, "a", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=list(row))
            if new:
                w.writeheader()
            w.writerow(row)

    def append_jsonl(self, filename: str, record: dict[str, Any]) -> None:
        """Append one JSON line to a file of :attr:`folder`."""
        assert self.folder is not None
        with open(self.folder / filename, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")


def save_image(path: str | os.PathLike, image: Any) -> None:
    """Write an image as PNG (or the format of ``path``'s ending): numpy channels-last or torch
    channels-first, 1/3/4 channels (gray, RGB, RGBA); uint8 and uint16 as they are, float in
    [0, 1] as 8-bit (clipped)."""
    import cv2

    a = image
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu()
        a = (a.permute(1, 2, 0) if a.ndim == 3 else a).numpy()
    a = np.asarray(a)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[-1] not in (3, 4)):
        raise ValueError(f"image: expected [H, W] or [H, W, 1|3|4], got shape {tuple(a.shape)}")
    if a.dtype not in (np.uint8, np.uint16):
        a = (np.clip(np.nan_to_num(a.astype(np.float32)), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    if a.ndim == 3:
        a = cv2.cvtColor(np.ascontiguousarray(a), cv2.COLOR_RGB2BGR if a.shape[-1] == 3 else cv2.COLOR_RGBA2BGRA)
    ok, data = cv2.imencode(Path(path).suffix or ".png", np.ascontiguousarray(a))
    if not ok:
        raise ValueError(f"image: cannot encode as {Path(path).suffix or '.png'}")
    Path(path).write_bytes(data.tobytes())
