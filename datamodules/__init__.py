"""Lightning datamodules, one per task."""

from mmoe.datamodules.pde import PDEDataModule

__all__ = ["PDEDataModule"]
