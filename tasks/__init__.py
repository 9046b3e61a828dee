"""Lightning task modules: BaseMoETask and one subpackage per task, imported on first use.

``TASKS`` maps each public task class name to its module; ``mmoe.tasks.PDETask`` (and the
CLI's short class names) import only that task's module, so a PDE run does not import the
emotion task's audio and text libraries.
"""

from __future__ import annotations

import importlib
from typing import Any

#: public task class name -> module that defines it
TASKS: dict[str, str] = {
    "PDETask": "mmoe.tasks.pde.task",
    "EmotionTask": "mmoe.tasks.emotion.task",
    "RestorationTask": "mmoe.tasks.restoration.task",
    "SeparationTask": "mmoe.tasks.separation.task",
    "AnomalyTask": "mmoe.tasks.anomaly.task",
    "TrackingTask": "mmoe.tasks.tracking.task",
}

__all__ = ["TASKS", "BaseMoETask", "OptimConfig", *TASKS]


def __getattr__(name: str) -> Any:
    if name in TASKS:
        return getattr(importlib.import_module(TASKS[name]), name)
    if name in ("BaseMoETask", "OptimConfig"):
        return getattr(importlib.import_module("mmoe.tasks.base"), name)
    raise AttributeError(f"module 'mmoe.tasks' has no attribute {name!r}")
