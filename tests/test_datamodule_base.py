"""MMoEDataModule (issue 25 item 6): every task datamodule builds on it; its loaders take the
datamodule's batch size and workers; ``mmoe predict`` reads ``predict_path`` (files by ending,
folders only where the datamodule says a folder is one input) or the test split."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils.data import TensorDataset

from mmoe import datamodules
from mmoe.datamodules.base import MMoEDataModule


class Toy(MMoEDataModule):
    predict_suffixes = (".txt",)

    def __init__(self, batch_size: int = 3, num_workers: int = 0, predict_path: str | None = None) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.test_set = TensorDataset(torch.arange(5.0))

    def predict_file_inputs(self, path: Path) -> dict[str, Any]:
        return {"text": path.read_text()}

    def predict_split(self):
        return self.test_set, lambda s: {"value": float(s[0])}, [f"row{i}" for i in range(5)]


class ToyWithFolders(Toy):
    def is_predict_folder(self, path: Path) -> bool:
        return (path / "MARK").is_file()

    def predict_file_inputs(self, path: Path) -> dict[str, Any]:
        return {"folder": path.name} if path.is_dir() else super().predict_file_inputs(path)


@pytest.mark.parametrize("name", sorted(datamodules.DATAMODULES))
def test_every_task_datamodule_is_an_mmoe_datamodule(name: str) -> None:
    cls = getattr(importlib.import_module(datamodules.DATAMODULES[name]), name)
    assert issubclass(cls, MMoEDataModule)
    assert cls.predict_suffixes and all(s.startswith(".") and s == s.lower() for s in cls.predict_suffixes)
    for method in ("predict_file_inputs", "predict_split"):  # the predict hooks are the task's own
        assert getattr(cls, method) is not getattr(MMoEDataModule, method), (name, method)
    assert cls.preprocess is not MMoEDataModule.preprocess


def test_loader_takes_the_datamodules_settings() -> None:
    dm = Toy(batch_size=2, num_workers=0)
    batches = list(dm.loader(TensorDataset(torch.arange(5.0))))
    assert [len(b[0]) for b in batches] == [2, 2, 1]
    assert [len(b[0]) for b in dm.loader(TensorDataset(torch.arange(5.0)), 4, drop_last=True)] == [4]
    g = torch.Generator().manual_seed(0)
    order = torch.cat([b[0] for b in dm.loader(TensorDataset(torch.arange(8.0)), shuffle=True, generator=g)])
    assert sorted(order.tolist()) == list(range(8)) and order.tolist() != list(range(8))
    workers = Toy(num_workers=2).loader(TensorDataset(torch.arange(5.0)))
    assert workers.num_workers == 2 and workers.persistent_workers


def test_predict_reads_the_path_or_the_test_split(tmp_path: Path) -> None:
    for name, text in (("b10.txt", "ten"), ("b2.txt", "two"), ("skip.png", "x")):
        (tmp_path / name).write_text(text)
    folder = tmp_path / "seq"
    folder.mkdir()
    (folder / "MARK").write_text("")
    items = [item for batch in Toy(predict_path=str(tmp_path)).predict_dataloader() for item in batch]
    assert [(i["name"], i["inputs"]) for i in items] == [("b2", {"text": "two"}), ("b10", {"text": "ten"})]
    # a folder is an input only where the datamodule says so
    items = [item for batch in ToyWithFolders(predict_path=str(tmp_path)).predict_dataloader() for item in batch]
    assert [i["name"] for i in items] == ["b2", "b10", "seq"] and items[-1]["inputs"] == {"folder": "seq"}
    items = [item for batch in Toy().predict_dataloader() for item in batch]
    assert [i["name"].split("_")[-1] for i in items] == [f"row{k}" for k in range(5)]  # split_items numbers them
    assert [i["inputs"]["value"] for i in items] == [0.0, 1.0, 2.0, 3.0, 4.0]
    with pytest.raises(ValueError, match="predict_path"):
        Toy(predict_path=str(tmp_path / "skip.png")).predict_dataloader()


def test_the_base_hooks_name_the_class() -> None:
    class Bare(MMoEDataModule):
        pass

    with pytest.raises(NotImplementedError, match="Bare.predict_split"):
        Bare().predict_dataloader()
    with pytest.raises(NotImplementedError, match="Bare.preprocess"):
        Bare().preprocess
