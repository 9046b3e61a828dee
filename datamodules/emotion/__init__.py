"""Emotion data: generated conversations (``synthetic``), IEMOCAP/MELD readers (``readers``),
utterance batching shared with predict (``conversation``) and the datamodule."""

from mmoe.datamodules.emotion.datamodule import EmotionDataModule

__all__ = ["EmotionDataModule"]
