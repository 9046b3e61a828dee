"""Restoration data: degradations (``degradations``), the embedded image set (``synthetic``),
readers of the real layouts (``readers``) and the datamodule."""

from mmoe.datamodules.restoration.datamodule import RestorationDataModule

__all__ = ["RestorationDataModule"]
