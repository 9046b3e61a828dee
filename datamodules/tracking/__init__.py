"""Tracking data: the embedded sequence renderer (``synthetic``), template/search crops (``crops``),
readers of the real layouts (``readers``) and the datamodule (not yet registered: the tracking task is unfinished)."""

from mmoe.datamodules.tracking.datamodule import TrackingDataModule

__all__ = ["TrackingDataModule"]
