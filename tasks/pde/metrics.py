"""Task metrics shared across tasks (torchmetrics Metrics)."""

from __future__ import annotations

import torch
from torchmetrics import Metric


class RelativeL2(Metric):
    """Mean over samples of ``||pred - true|| / ||true||``, overall and per class (family).

    ``update(pred, target, classes=None)`` with ``pred``/``target`` ``[B, ...]`` and
    ``classes [B]`` (ids in ``[0, num_classes)``, or -1 for unknown). ``compute()`` returns
    ``{"rel_l2": mean over all samples, "rel_l2_<name>": mean over each class's samples}``
    (classes with no sample are left out).
    """

    full_state_update = False

    def __init__(self, class_names: list[str] | None = None, eps: float = 1e-12) -> None:
        super().__init__()
        self.class_names = list(class_names or [])
        self.eps = eps
        n = len(self.class_names) + 1  # last slot: unknown class
        self.add_state("sums", default=torch.zeros(n, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("counts", default=torch.zeros(n, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, pred: torch.Tensor, target: torch.Tensor, classes: torch.Tensor | None = None) -> None:
        if pred.shape != target.shape:
            raise ValueError(f"pred: expected the shape of target {tuple(target.shape)}, got {tuple(pred.shape)}")
        B = pred.shape[0]
        diff = (pred.detach().double() - target.double()).reshape(B, -1).norm(dim=1)
        rel = diff / target.double().reshape(B, -1).norm(dim=1).clamp_min(self.eps)
        slot = torch.full((B,), len(self.class_names), dtype=torch.long, device=pred.device)
        if classes is not None:
            slot = torch.where(classes >= 0, classes.long(), slot)
        self.sums.index_add_(0, slot, rel)
        self.counts.index_add_(0, slot, torch.ones_like(rel))

    def compute(self) -> dict[str, torch.Tensor]:
        out = {"rel_l2": self.sums.sum() / self.counts.sum().clamp_min(1)}
        for i, name in enumerate(self.class_names):
            if self.counts[i] > 0:
                out[f"rel_l2_{name}"] = self.sums[i] / self.counts[i]
        return out
