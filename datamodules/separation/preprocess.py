"""The separation data's settings that travel with a model (``SeparationPreprocess``): decided
by the datamodule, read by the task's predict."""

from __future__ import annotations

import math
from dataclasses import dataclass

@dataclass
class SeparationPreprocess:
    """Data settings of a separation model (provided by ``SeparationDataModule.preprocess``).

    Args:
        sample_rate: the rate the model was trained at; predict resamples other rates to it and back.
        num_speakers: sources per mixture.
        chunk_seconds: inputs longer than this are separated in overlapping chunks of this length.
        overlap_seconds: overlap of neighbouring chunks (used to align speaker order and to cross-fade).
    """

    sample_rate: int = 8000
    num_speakers: int = 2
    chunk_seconds: float = 4.0
    overlap_seconds: float = 1.0

    def __post_init__(self) -> None:
        for name in ("sample_rate", "num_speakers"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"preprocess.{name}: expected a positive int, got {v!r}")
        for name in ("chunk_seconds", "overlap_seconds"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ValueError(f"preprocess.{name}: expected a finite number >= 0, got {v!r}")
        if not 0 < self.overlap_seconds < self.chunk_seconds / 2:
            raise ValueError(f"preprocess.overlap_seconds: expected 0 < overlap < chunk_seconds / 2 = "
                             f"{self.chunk_seconds / 2}, got {self.overlap_seconds}")
