"""Emotion recognition in conversations: the model (``model``), its LightningModule (``task``)
and what predict needs (``io``)."""

from mmoe.datamodules.emotion.preprocess import EmotionPreprocess
from mmoe.tasks.emotion.task import EmotionTask

__all__ = ["EmotionPreprocess", "EmotionTask"]
