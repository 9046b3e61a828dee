"""The anomaly data's settings that travel with a model (``AnomalyPreprocess``): decided by the
datamodule, read by the task's predict."""

from __future__ import annotations

from dataclasses import dataclass, field

MODALITY_NAMES = ["brain_mri", "ct", "fundus", "histology"]


@dataclass
class AnomalyPreprocess:
    """Data settings of an anomaly model (provided by ``AnomalyDataModule.preprocess``).

    Args:
        image_size: side S the model sees; inputs are resized to S x S and maps resized back.
        modality_names: modalities in label order (calibration and the modality head follow it).
        low_percentile, high_percentile: greyscale inputs are mapped to [0, 1] by these
            percentiles (as the training data were); colour inputs are divided by their dtype's
            maximum (float colour must be in [0, 1]).
    """

    image_size: int = 64
    modality_names: list[str] = field(default_factory=lambda: list(MODALITY_NAMES))
    low_percentile: float = 0.5
    high_percentile: float = 99.5

    def __post_init__(self) -> None:
        if isinstance(self.image_size, bool) or not isinstance(self.image_size, int) or self.image_size < 16 \
                or self.image_size % 8:
            raise ValueError(f"preprocess.image_size: expected an int >= 16, a multiple of 8, got {self.image_size!r}")
        names = self.modality_names
        if (not isinstance(names, list) or not names or len(set(names)) != len(names)
                or not all(isinstance(n, str) and n for n in names)):
            raise ValueError(f"preprocess.modality_names: expected distinct names, got {names!r}")
        if not 0 <= self.low_percentile < self.high_percentile <= 100:
            raise ValueError(f"preprocess.low_percentile/high_percentile: expected 0 <= low < high <= 100, got "
                             f"{self.low_percentile!r}, {self.high_percentile!r}")
