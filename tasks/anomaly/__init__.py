"""Medical image anomaly detection after MTL-MAD: the proxy-task MoE transformer (``model``), its
LightningModule (``task``), metrics (``metrics``) and what predict needs (``io``)."""

from mmoe.datamodules.anomaly.preprocess import AnomalyPreprocess
from mmoe.tasks.anomaly.model import ProxyTaskMoE
from mmoe.tasks.anomaly.task import AnomalyTask

__all__ = ["AnomalyPreprocess", "AnomalyTask", "ProxyTaskMoE"]
