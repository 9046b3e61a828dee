"""``mmoe predict`` output of the tracking task."""
from __future__ import annotations

import csv
from typing import Any

import numpy as np

from mmoe.prediction import PredictionWriter


class TrackingWriter(PredictionWriter):
    """``<name>.csv`` per sequence: ``frame, x, y, w, h, confidence`` (pixels; frame 0 is the given box)."""

    def write(self, name: str, inputs: dict[str, Any], result: dict[str, Any]) -> None:
        boxes = np.asarray(result["boxes"], dtype=np.float64)
        conf = np.asarray(result["confidence"], dtype=np.float64)
        with self.target(f"{name}.csv") as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["frame", "x", "y", "w", "h", "confidence"])
            for k, (box, c) in enumerate(zip(boxes, conf)):
                w.writerow([k, *(f"{v:.2f}" for v in box), f"{c:.4f}"])
