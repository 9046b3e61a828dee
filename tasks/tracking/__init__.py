"""Single-object RGB+X tracking: the one-stream dual-MoE tracker (``model``), its LightningModule
(``task``), metrics (``metrics``) and what predict needs (``io``)."""

from mmoe.datamodules.tracking.preprocess import TrackingPreprocess
from mmoe.tasks.tracking.model import OneStreamMoETracker
from mmoe.tasks.tracking.task import TrackingTask

__all__ = ["OneStreamMoETracker", "TrackingPreprocess", "TrackingTask"]
