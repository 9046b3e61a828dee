"""Anomaly detection data: the embedded medical images (``sources``), the test-set lesion simulator
(``lesions``), the training pseudo-anomaly synthesis (``pseudo``, a different generator), the BMAD
reader (``bmad``) and the datamodule."""

from mmoe.datamodules.anomaly.datamodule import AnomalyDataModule

__all__ = ["AnomalyDataModule"]
