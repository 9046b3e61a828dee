"""``mmoe predict`` output of the separation task."""
from __future__ import annotations

from typing import Any

import numpy as np
import soundfile

from mmoe.prediction import PredictionWriter


class SeparationWriter(PredictionWriter):
    """``<name>_s1.wav``, ``<name>_s2.wav``...: the separated sources at the input's rate, 32-bit
    float WAV (values are not clipped: a source may exceed full scale)."""

    def write(self, name: str, inputs: dict[str, Any], result: Any) -> None:
        audio = inputs["audio"]
        rate = int(inputs["sample_rate"]) if inputs.get("sample_rate") is not None \
            else soundfile.info(str(audio)).samplerate
        sources = np.asarray(result.detach().cpu() if hasattr(result, "detach") else result, dtype=np.float32)
        if sources.ndim == 3:  # a batch input: [N, S, samples]
            for j, batch_item in enumerate(sources):
                self._write_sources(f"{name}_{j}", batch_item, rate)
        else:
            self._write_sources(name, sources, rate)

    def _write_sources(self, name: str, sources: np.ndarray, rate: int) -> None:
        for k, source in enumerate(sources, start=1):
            with self.target(f"{name}_s{k}.wav") as tmp:
                soundfile.write(str(tmp), source, rate, subtype="FLOAT", format="WAV")
