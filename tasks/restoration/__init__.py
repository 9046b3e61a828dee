"""All-in-one image restoration: the wavelet MoE restorer (``model``), its LightningModule
(``task``), metrics (``metrics``) and what predict needs (``io``)."""

from mmoe.tasks.restoration.io import RestorationPreprocess
from mmoe.tasks.restoration.model import WaveletMoERestorer
from mmoe.tasks.restoration.task import RestorationTask

__all__ = ["RestorationPreprocess", "RestorationTask", "WaveletMoERestorer"]
