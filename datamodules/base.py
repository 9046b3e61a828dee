"""MMoEDataModule: what every mmoe datamodule repeats, in one place.

* ``loader(dataset, ...)``: a DataLoader with the datamodule's ``batch_size`` and ``num_workers``
  (workers kept alive between epochs when there are any);
* ``predict_dataloader()`` for ``mmoe predict``: every input under ``predict_path`` (a file, or a
  folder of files with the endings in :attr:`predict_suffixes`, or of folders that
  :meth:`is_predict_folder` accepts), read by :meth:`predict_file_inputs`; without
  ``predict_path``, the test split through :meth:`predict_split`. One item per step, read in the
  main process (:func:`mmoe.prediction.predict_loader`);
* ``preprocess``: the data-decided settings the model keeps (a subclass returns its
  ``datamodules/<task>/preprocess.py`` dataclass).

A subclass keeps its typed ``__init__`` (the CLI reads the signature) with at least
``batch_size``, ``num_workers`` and ``predict_path`` among its hyper-parameters
(``save_hyperparameters()``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset, Sampler

from mmoe.prediction import PredictItems, list_inputs, predict_loader, split_items


class MMoEDataModule(LightningDataModule):
    """Base of the task datamodules (see the module docstring)."""

    #: file endings an input under ``predict_path`` may have (lower case, with the dot)
    predict_suffixes: tuple[str, ...] = ()

    @property
    def preprocess(self) -> Any:
        """The task's preprocess dataclass, filled from the data."""
        raise NotImplementedError(f"{type(self).__name__}.preprocess")

    def loader(self, dataset: Dataset, batch_size: int | None = None, *, shuffle: bool = False,
               sampler: Sampler | None = None, collate_fn: Callable | None = None, drop_last: bool = False,
               **kwargs: Any) -> DataLoader:
        """A DataLoader over ``dataset`` with ``batch_size`` (default the datamodule's) and the
        datamodule's ``num_workers``; ``kwargs`` go to the DataLoader (e.g. a seeded ``generator``)."""
        workers = int(self.hparams.num_workers)
        return DataLoader(dataset, batch_size=self.hparams.batch_size if batch_size is None else batch_size,
                          shuffle=shuffle, sampler=sampler, collate_fn=collate_fn, drop_last=drop_last,
                          num_workers=workers, persistent_workers=workers > 0, **kwargs)

    # ------------------------------------------------------------------ predict
    def is_predict_folder(self, path: Path) -> bool:
        """Whether a folder under ``predict_path`` is one input (a DICOM series, an image sequence)."""
        return False

    def predict_file_inputs(self, path: Path) -> dict[str, Any]:
        """The task's ``predict`` keyword arguments for one input file (or input folder)."""
        raise NotImplementedError(f"{type(self).__name__}.predict_file_inputs")

    def predict_split(self) -> tuple[Dataset, Callable[[Any], dict[str, Any]], Sequence[str] | None]:
        """``(test dataset, sample -> predict keyword arguments, names or None)`` for ``mmoe predict``
        without ``predict_path``."""
        raise NotImplementedError(f"{type(self).__name__}.predict_split")

    def predict_dataloader(self) -> DataLoader:
        path = self.hparams.get("predict_path")
        if path is not None:
            folders = self.is_predict_folder if type(self).is_predict_folder is not MMoEDataModule.is_predict_folder \
                else None
            files = list_inputs(path, self.predict_suffixes, folders=folders)
            return predict_loader(PredictItems([n for n, _ in files], lambda i: self.predict_file_inputs(files[i][1])))
        dataset, to_inputs, names = self.predict_split()
        return predict_loader(split_items(dataset, to_inputs, names))
