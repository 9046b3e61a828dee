"""The tracking data's settings that travel with a model (``TrackingPreprocess``): decided by
the datamodule, read by the task's predict and streaming tracker."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class TrackingPreprocess:
    """Data settings of a tracker (provided by ``TrackingDataModule.preprocess``).

    Args:
        template_size: template crop side in pixels.
        search_size: search crop side in pixels.
        template_factor: template crop side over sqrt(w h) of the box.
        search_factor: search crop side over sqrt(w h) of the previous box.
        modality: the X modality the model was trained with (``"depth"``, ``"thermal"``,
            ``"event"``), or None for an RGB-only model.
        depth_range_mm: 16-bit depth (millimetres) that maps to 1.
    """

    template_size: int = 64
    search_size: int = 128
    template_factor: float = 2.0
    search_factor: float = 4.0
    modality: str | None = "depth"
    depth_range_mm: float = 10000.0

    def __post_init__(self) -> None:
        for name in ("template_size", "search_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 16:
                raise ValueError(f"preprocess.{name}: expected an int >= 16, got {v!r}")
        for name in ("template_factor", "search_factor", "depth_range_mm"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v) or v <= 0:
                raise ValueError(f"preprocess.{name}: expected a positive number, got {v!r}")
        if self.modality not in (None, "depth", "thermal", "event"):
            raise ValueError(f"preprocess.modality: expected 'depth', 'thermal', 'event' or None, got {self.modality!r}")
