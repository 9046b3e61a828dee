"""Speech separation: the time-frequency MoE separator (``model``), its LightningModule (``task``),
SI-SNRi/SDRi metrics (``metrics``) and what predict needs (``io``)."""

from mmoe.tasks.separation.io import SeparationPreprocess
from mmoe.tasks.separation.model import TFMoESeparator
from mmoe.tasks.separation.task import SeparationTask

__all__ = ["SeparationPreprocess", "SeparationTask", "TFMoESeparator"]
