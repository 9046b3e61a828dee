"""Speech separation data: eSpeak NG synthesis (``espeak``), the embedded corpus (``speech``),
readers of the LibriMix and WSJ0-2mix layouts (``readers``) and the datamodule."""

from mmoe.datamodules.separation.datamodule import SeparationDataModule

__all__ = ["SeparationDataModule"]
