"""``mmoe predict`` output of the PDE task."""
from __future__ import annotations

from typing import Any

import numpy as np

from mmoe.prediction import PredictionWriter


class PDEWriter(PredictionWriter):
    """``<name>.npz`` with ``solution`` (the predicted field, in the input's layout and physical
    units) and ``family`` when one was given."""

    def write(self, name: str, inputs: dict[str, Any], result: Any) -> None:
        solution = np.asarray(result.detach().cpu() if hasattr(result, "detach") else result)
        extra = {"family": np.array(inputs["family"])} if inputs.get("family") else {}
        with self.target(f"{name}.npz") as tmp, open(tmp, "wb") as f:
            np.savez(f, solution=solution, **extra)
