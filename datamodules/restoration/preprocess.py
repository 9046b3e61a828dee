"""The restoration data's settings that travel with a model (``RestorationPreprocess``): decided
by the datamodule, read by the task's predict."""

from __future__ import annotations

from dataclasses import dataclass, field

#: degradation types of the 3-task (first three) and 5-task all-in-one settings, in label order
DEGRADATIONS_3 = ["denoise", "derain", "dehaze"]
DEGRADATIONS_5 = ["denoise", "derain", "dehaze", "deblur", "lowlight"]


@dataclass
class RestorationPreprocess:
    """Data settings of a restoration model (provided by ``RestorationDataModule.preprocess``).

    Args:
        degradation_names: degradation types in label order (the per-image router's classes).
        multiple: image sides are padded (reflect) to a multiple of this before the model runs.
        tile: images larger than ``tile`` pixels on a side are restored in overlapping tiles of
            this size (bounded memory for any image size).
        overlap: overlap of neighbouring tiles in pixels (blended linearly).
    """

    degradation_names: list[str] = field(default_factory=lambda: list(DEGRADATIONS_3))
    multiple: int = 16
    tile: int = 256
    overlap: int = 32

    def __post_init__(self) -> None:
        names = self.degradation_names
        if (not isinstance(names, list) or not names or len(set(names)) != len(names)
                or not all(isinstance(n, str) for n in names)):
            raise ValueError(f"preprocess.degradation_names: expected distinct names, got {names!r}")
        for name in ("multiple", "tile", "overlap"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < (0 if name == "overlap" else 1):
                raise ValueError(f"preprocess.{name}: expected a positive int, got {v!r}")
        if self.tile % self.multiple or not 0 <= self.overlap < self.tile // 2:
            raise ValueError(f"preprocess.tile/overlap: expected tile a multiple of {self.multiple} and "
                             f"0 <= overlap < tile / 2, got tile={self.tile}, overlap={self.overlap}")
