"""``mmoe predict`` output of the restoration task."""
from __future__ import annotations

from typing import Any

from mmoe.prediction import PredictionWriter, save_image


class RestorationWriter(PredictionWriter):
    """``<name>.png`` (the restored image: 8-bit, or 16-bit for 16-bit inputs) and one row per
    image in ``degradations.csv`` (name, recognised degradation, its probability)."""

    def write(self, name: str, inputs: dict[str, Any], result: dict[str, Any]) -> None:
        with self.target(f"{name}.png") as tmp:
            save_image(tmp, result["image"])
        prob = result.get("probability")
        self.append_csv("degradations.csv", {"name": name, "file": f"{name}.png",
                                             "degradation": result.get("degradation") or "",
                                             "probability": "" if prob is None else f"{float(prob):.4f}"})
