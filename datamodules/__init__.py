"""Lightning datamodules, one subpackage per task, imported on first use (see ``DATAMODULES``)."""

from __future__ import annotations

import importlib
from typing import Any

#: public datamodule class name -> module that defines it
DATAMODULES: dict[str, str] = {
    "PDEDataModule": "mmoe.datamodules.pde.datamodule",
    "EmotionDataModule": "mmoe.datamodules.emotion.datamodule",
    "RestorationDataModule": "mmoe.datamodules.restoration.datamodule",
    "SeparationDataModule": "mmoe.datamodules.separation.datamodule",
    "AnomalyDataModule": "mmoe.datamodules.anomaly.datamodule",
    "TrackingDataModule": "mmoe.datamodules.tracking.datamodule",
}

__all__ = ["DATAMODULES", *DATAMODULES]


def __getattr__(name: str) -> Any:
    if name in DATAMODULES:
        return getattr(importlib.import_module(DATAMODULES[name]), name)
    raise AttributeError(f"module 'mmoe.datamodules' has no attribute {name!r}")
