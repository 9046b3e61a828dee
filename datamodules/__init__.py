"""Lightning datamodules, one per task."""

from mmoe.datamodules.emotion import EmotionDataModule
from mmoe.datamodules.pde import PDEDataModule

__all__ = ["EmotionDataModule", "PDEDataModule"]
