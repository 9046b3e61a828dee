"""The emotion data's settings that travel with a model (``EmotionPreprocess``): decided by the
datamodule, read by the task's predict."""

from __future__ import annotations

from dataclasses import dataclass, field

from mmoe.datamodules.emotion.conversation import SAMPLE_RATE
from mmoe.datamodules.emotion.synthetic import CLASSES


@dataclass
class EmotionPreprocess:
    """Data settings of an emotion model (provided by ``EmotionDataModule.preprocess``).

    Args:
        class_names: emotion classes in label order.
        sample_rate: the rate audio is resampled to (Hz).
        context_length: text tokens per utterance (open_clip BPE, start/end included).
        max_seconds: audio per utterance is cropped to this length (None: kept whole).
    """

    class_names: list[str] = field(default_factory=lambda: list(CLASSES))
    sample_rate: int = SAMPLE_RATE
    context_length: int = 16
    max_seconds: float | None = 10.0

    def __post_init__(self) -> None:
        names = self.class_names
        if (not isinstance(names, list) or len(names) < 2 or len(set(names)) != len(names)
                or not all(isinstance(n, str) for n in names)):
            raise ValueError(f"preprocess.class_names: expected >= 2 distinct names, got {names!r}")
        if self.sample_rate != SAMPLE_RATE:
            raise ValueError(f"preprocess.sample_rate: the log-mel front end runs at {SAMPLE_RATE} Hz, "
                             f"got {self.sample_rate!r}")
        if isinstance(self.context_length, bool) or not isinstance(self.context_length, int) or self.context_length < 2:
            raise ValueError(f"preprocess.context_length: expected an int >= 2, got {self.context_length!r}")
        if self.max_seconds is not None and not (isinstance(self.max_seconds, (int, float)) and self.max_seconds > 0):
            raise ValueError(f"preprocess.max_seconds: expected None or a number > 0, got {self.max_seconds!r}")
