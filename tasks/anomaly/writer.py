"""``mmoe predict`` output of the anomaly task."""
from __future__ import annotations

from typing import Any

import numpy as np

from mmoe.prediction import PredictionWriter, save_image

#: map value drawn white when the model has no pixel threshold (maps are in standard deviations
#: of normal validation maps)
DEFAULT_MAP_MAX = 8.0


class AnomalyWriter(PredictionWriter):
    """Per image ``<name>_map.png`` (8-bit: 0 at map <= 0, white at ``map_max``, which is twice the
    pixel threshold when there is one, so the threshold is mid-grey) and ``<name>_mask.png`` (white:
    anomalous pixels); per volume ``<name>_volume.npz`` (``map``, ``mask`` in the file's axes). One row
    per image or slice in ``scores.csv`` (score, threshold, decision, modality, files), and one row
    ``slice=volume`` per volume."""

    def write(self, name: str, inputs: dict[str, Any], result: dict[str, Any]) -> None:
        if "volume_score" in result:
            self._write_volume(name, result)
        elif isinstance(result["score"], list):  # a batch input
            for j in range(len(result["score"])):
                self._write_image(f"{name}_{j}", {k: v[j] for k, v in result.items()})
        else:
            self._write_image(name, result)

    def _write_image(self, name: str, r: dict[str, Any], slice_: str = "") -> None:
        pix = r["pixel_threshold"]
        top = 2.0 * pix if pix else DEFAULT_MAP_MAX
        with self.target(f"{name}_map.png") as tmp:
            save_image(tmp, np.clip(np.asarray(r["map"], dtype=np.float32) / top, 0.0, 1.0))
        mask_file = ""
        if r["mask"] is not None:
            mask_file = f"{name}_mask.png"
            with self.target(mask_file) as tmp:
                save_image(tmp, np.asarray(r["mask"], dtype=np.uint8) * np.uint8(255))
        self._row(name, slice_, r["score"], r["threshold"], r["is_anomalous"], r["modality"], pix,
                  f"{name}_map.png", mask_file, top)

    def _write_volume(self, name: str, r: dict[str, Any]) -> None:
        arrays = {"map": np.asarray(r["map"], dtype=np.float32)}
        if r["mask"] is not None:
            arrays["mask"] = np.asarray(r["mask"], dtype=bool)
        with self.target(f"{name}_volume.npz") as tmp, open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)
        for k, score in enumerate(np.asarray(r["score"]).tolist()):
            decision = None if r["is_anomalous"] is None else bool(r["is_anomalous"][k])
            self._row(name, str(k), score, r["threshold"][k], decision, r["modality"][k], r["pixel_threshold"][k],
                      f"{name}_volume.npz", f"{name}_volume.npz" if r["mask"] is not None else "", "")
        self._row(name, "volume", r["volume_score"], "", r["volume_is_anomalous"], "", "", f"{name}_volume.npz", "", "")

    def _row(self, name: str, slice_: str, score: float, threshold: Any, decision: Any, modality: str,
             pixel_threshold: Any, map_file: str, mask_file: str, map_max: Any) -> None:
        fmt = lambda v: "" if v is None or v == "" else f"{float(v):.6g}"
        self.append_csv("scores.csv", {
            "name": name, "slice": slice_, "score": fmt(score), "threshold": fmt(threshold),
            "is_anomalous": "" if decision is None else str(bool(decision)).lower(), "modality": modality,
            "pixel_threshold": fmt(pixel_threshold), "map": map_file, "mask": mask_file, "map_max": fmt(map_max)})
