"""Lightning task modules: BaseMoETask and one module per task."""

from mmoe.tasks.base import BaseMoETask
from mmoe.tasks.emotion import EmotionTask
from mmoe.tasks.pde import PDETask

__all__ = ["BaseMoETask", "EmotionTask", "PDETask"]
