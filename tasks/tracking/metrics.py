"""Single-object tracking metrics, one sequence per ``update``, as torchmetrics Metrics.

Conventions shared by every metric here (state them when comparing with a published number):

* Boxes are ``(x, y, w, h)`` in pixels, **continuous**: a box covers ``[x, x + w) x [y, y + h)``,
  its centre is ``(x + w / 2, y + h / 2)`` and its area ``w * h`` (no ``+ 1`` inclusive-pixel
  convention as in the old OTB MATLAB toolkit).
* The **first frame** is the initialisation: the tracker is given its box, so it is left out of
  every score (the LaSOT/pytracking evaluation keeps it; with long sequences the difference is
  small, with short ones it is not).
* A ground-truth box is **absent** (target fully occluded or out of view) when the ``present``
  mask says so or when it is not finite or has ``w <= 0`` or ``h <= 0``. One-pass evaluation
  (success, precision, normalised precision) scores only frames where the target is present, as
  LaSOT's toolkit does; VOT-RGBD scores absent frames too (a confident prediction there costs
  precision).
* A predicted box that is not finite or has ``w <= 0`` or ``h <= 0`` counts as a miss: IoU 0 and
  an infinite centre error.
* Scores are computed per sequence and then averaged over sequences (each sequence weighs the
  same, whatever its length), as OTB, LaSOT and VOT do.
"""

from __future__ import annotations

import torch
from torchmetrics import Metric

#: success-plot IoU thresholds: 21 values 0, 0.05, ..., 1 (a frame succeeds when IoU > threshold)
IOU_THRESHOLDS = torch.linspace(0, 1, 21, dtype=torch.float64)
#: precision-plot centre-error thresholds in pixels, 0..50 (the reported value is at 20 px)
PIXEL_THRESHOLDS = torch.arange(0, 51, dtype=torch.float64)
#: normalised-precision thresholds 0..0.5 in 51 steps (LaSOT); the reported value is the curve's mean
NORM_THRESHOLDS = torch.linspace(0, 0.5, 51, dtype=torch.float64)


def _valid(boxes: torch.Tensor) -> torch.Tensor:
    return torch.isfinite(boxes).all(-1) & (boxes[:, 2] > 0) & (boxes[:, 3] > 0)


def box_iou(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """IoU of matching rows of two ``[N, 4]`` xywh box sets: ``[N]``; 0 where either box is invalid.

    Not ``torchvision.ops.box_iou``: that one is pairwise (``[N, M]``), so a track of N frames would
    take N^2 memory for the diagonal this computes directly (tests check it against torchvision's
    diagonal)."""
    x1 = torch.maximum(pred[:, 0], gt[:, 0])
    y1 = torch.maximum(pred[:, 1], gt[:, 1])
    x2 = torch.minimum(pred[:, 0] + pred[:, 2], gt[:, 0] + gt[:, 2])
    y2 = torch.minimum(pred[:, 1] + pred[:, 3], gt[:, 1] + gt[:, 3])
    inter = (x2 - x1).clamp_min(0) * (y2 - y1).clamp_min(0)
    union = pred[:, 2] * pred[:, 3] + gt[:, 2] * gt[:, 3] - inter
    iou = inter / union
    ok = _valid(pred) & _valid(gt)
    return torch.where(ok, iou, torch.zeros_like(iou)).nan_to_num(0.0)


def centre_error(pred: torch.Tensor, gt: torch.Tensor, normalised: bool = False) -> torch.Tensor:
    """Euclidean distance of box centres ``[N]`` (inf where the prediction is invalid); with
    ``normalised`` each axis is divided by the ground truth's width / height first (LaSOT)."""
    dx = pred[:, 0] + pred[:, 2] / 2 - gt[:, 0] - gt[:, 2] / 2
    dy = pred[:, 1] + pred[:, 3] / 2 - gt[:, 1] - gt[:, 3] / 2
    if normalised:
        dx, dy = dx / gt[:, 2], dy / gt[:, 3]
    err = torch.sqrt(dx * dx + dy * dy)
    return torch.where(_valid(pred), err, torch.full_like(err, float("inf"))).nan_to_num(float("inf"))


def _check_sequence(pred: torch.Tensor, gt: torch.Tensor, present: torch.Tensor | None,
                    confidence: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    for name, value in (("pred", pred), ("target", gt)):
        if not isinstance(value, torch.Tensor) or value.ndim != 2 or value.shape[1] != 4:
            got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise ValueError(f"{name}: expected a [N, 4] xywh box tensor, got {got}")
    if pred.shape != gt.shape:
        raise ValueError(f"pred: expected the shape of target {tuple(gt.shape)}, got {tuple(pred.shape)}")
    if pred.shape[0] < 2:
        raise ValueError(f"pred: expected a sequence of at least 2 frames (the first is the "
                         f"initialisation and is not scored), got {pred.shape[0]}")
    pred, gt = pred.detach().double().cpu(), gt.detach().double().cpu()
    valid = _valid(gt)
    if present is not None:
        if not isinstance(present, torch.Tensor) or present.shape != (gt.shape[0],):
            raise ValueError(f"present: expected a bool tensor [{gt.shape[0]}], got "
                             f"{tuple(present.shape) if isinstance(present, torch.Tensor) else type(present).__name__}")
        valid = valid & present.detach().bool().cpu()
    if confidence is not None:
        if not isinstance(confidence, torch.Tensor) or confidence.shape != (gt.shape[0],):
            raise ValueError(f"confidence: expected a tensor [{gt.shape[0]}], got "
                             f"{tuple(confidence.shape) if isinstance(confidence, torch.Tensor) else type(confidence).__name__}")
        if not torch.isfinite(confidence).all():
            raise ValueError("confidence: expected finite values, got NaN or inf")
    return pred[1:], gt[1:], valid[1:]


class _SequenceCurves(Metric):
    """Per-sequence curves (one row per ``update``), averaged over sequences in ``compute``."""

    full_state_update = False
    thresholds: torch.Tensor

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("curves", default=[], dist_reduce_fx="cat")

    def _curve(self, pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def update(self, pred: torch.Tensor, target: torch.Tensor, present: torch.Tensor | None = None) -> None:
        """Add one sequence.

        Args:
            pred: predicted boxes ``[N, 4]`` xywh (row 0 is the initial box, not scored).
            target: ground-truth boxes ``[N, 4]`` xywh.
            present: optional ``[N]`` bool, False where the target is absent.
        """
        pred, gt, valid = _check_sequence(pred, target, present)
        if not valid.any():  # nothing to score: the sequence has no visible target after frame 0
            return
        self.curves.append(self._curve(pred[valid], gt[valid])[None])

    def curve(self) -> torch.Tensor:
        """The curve over :attr:`thresholds`, averaged over sequences (empty: NaN)."""
        curves = self.curves if isinstance(self.curves, torch.Tensor) else (
            torch.cat(self.curves) if self.curves else torch.empty(0, len(self.thresholds), dtype=torch.float64))
        return curves.mean(0) if len(curves) else torch.full((len(self.thresholds),), float("nan"), dtype=torch.float64)


class SuccessAUC(_SequenceCurves):
    """Success AUC (OTB/LaSOT): the mean over 21 IoU thresholds 0..1 of the fraction of scored
    frames whose IoU exceeds the threshold; see the module docstring for the conventions."""

    thresholds = IOU_THRESHOLDS

    def _curve(self, pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
        return (box_iou(pred, gt)[None] > self.thresholds[:, None]).double().mean(1)

    def compute(self) -> torch.Tensor:
        return self.curve().mean()


class PrecisionAt(_SequenceCurves):
    """Precision (OTB/LaSOT): the fraction of scored frames whose centre error is at most
    ``pixels`` (default 20); :meth:`curve` gives the whole plot over 0..50 px.

    Args:
        pixels: the reported threshold in pixels (an integer in 0..50).
    """

    thresholds = PIXEL_THRESHOLDS

    def __init__(self, pixels: int = 20, **kwargs) -> None:
        super().__init__(**kwargs)
        if isinstance(pixels, bool) or not isinstance(pixels, int) or not 0 <= pixels <= 50:
            raise ValueError(f"pixels: expected an integer in 0..50, got {pixels!r}")
        self.pixels = pixels

    def _curve(self, pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
        return (centre_error(pred, gt)[None] <= self.thresholds[:, None]).double().mean(1)

    def compute(self) -> torch.Tensor:
        return self.curve()[self.pixels]


class NormalizedPrecision(_SequenceCurves):
    """Normalised precision (LaSOT, Fan et al. 2019): the centre error with each axis divided
    by the ground truth's size, the fraction of scored frames at most each of 51 thresholds
    0..0.5, and the mean of that curve (its area over [0, 0.5], normalised)."""

    thresholds = NORM_THRESHOLDS

    def _curve(self, pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
        return (centre_error(pred, gt, normalised=True)[None] <= self.thresholds[:, None]).double().mean(1)

    def compute(self) -> torch.Tensor:
        return self.curve().mean()


class RGBDFScore(Metric):
    """VOT-RGBD long-term precision, recall and F-score from the tracker's per-frame confidence.

    For a confidence threshold t, per sequence: precision Pr(t) is the mean IoU over the scored
    frames whose confidence is >= t (IoU 0 where the target is absent: a confident report there
    is wrong); recall Re(t) is the IoU summed over frames with the target present and confidence
    >= t, divided by the number of frames with the target present. Pr and Re are averaged over
    sequences for each t; F(t) = 2 Pr Re / (Pr + Re) and the reported F-score is the largest
    F(t) over the thresholds (every confidence value seen), with the Pr and Re at that t.
    A sequence where no frame reaches t gives Pr(t) = 1 (it reported nothing, so nothing wrong)
    and Re(t) = 0, as the VOT toolkit does; sequences where the target is never present after
    the first frame are left out of the recall mean (their recall is undefined). ``compute`` returns ``{"f_score", "precision",
    "recall", "threshold"}``.
    """

    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("ious", default=[], dist_reduce_fx="cat")
        self.add_state("confidences", default=[], dist_reduce_fx="cat")
        self.add_state("present", default=[], dist_reduce_fx="cat")
        self.add_state("sequence", default=[], dist_reduce_fx="cat")
        self._next_id = 0

    def update(self, pred: torch.Tensor, target: torch.Tensor, confidence: torch.Tensor,
               present: torch.Tensor | None = None) -> None:
        """Add one sequence.

        Args:
            pred: predicted boxes ``[N, 4]`` xywh (row 0 is the initial box, not scored).
            target: ground-truth boxes ``[N, 4]`` xywh.
            confidence: the tracker's confidence per frame ``[N]`` (finite).
            present: optional ``[N]`` bool, False where the target is absent.
        """
        conf = confidence
        pred, gt, valid = _check_sequence(pred, target, present, conf)
        self.ious.append(torch.where(valid, box_iou(pred, gt), torch.zeros(len(gt), dtype=torch.float64)))
        self.confidences.append(conf.detach().double().cpu()[1:])
        self.present.append(valid)
        # ids unique across processes too: the states of all ranks are concatenated before compute
        rank = torch.distributed.get_rank() if torch.distributed.is_available() and torch.distributed.is_initialized() else 0
        self.sequence.append(torch.full((len(gt),), rank * 2**40 + self._next_id, dtype=torch.long))
        self._next_id += 1

    def reset(self) -> None:
        super().reset()
        self._next_id = 0

    def compute(self) -> dict[str, torch.Tensor]:
        def cat(x):
            return x if isinstance(x, torch.Tensor) else torch.cat(x) if x else torch.empty(0)

        iou, conf, present, seq = cat(self.ious), cat(self.confidences), cat(self.present).bool(), cat(self.sequence)
        if len(iou) == 0:
            nan = torch.tensor(float("nan"), dtype=torch.float64)
            return {"f_score": nan, "precision": nan, "recall": nan, "threshold": nan}
        thresholds = torch.unique(conf)  # [T], sorted
        _, seq = torch.unique(seq, return_inverse=True)
        S = int(seq.max()) + 1
        above = (conf[None] >= thresholds[:, None]).double()  # [T, F]

        def per_sequence(values: torch.Tensor) -> torch.Tensor:  # [T, F] -> [T, S]
            return torch.zeros(len(thresholds), S, dtype=torch.float64).index_add_(1, seq, values)

        reported = per_sequence(above)
        iou_sum = per_sequence(above * iou[None])
        visible = torch.zeros(S, dtype=torch.float64).index_add_(0, seq, present.double())
        pr = torch.where(reported > 0, iou_sum / reported.clamp_min(1), torch.ones_like(reported)).mean(1)
        present_sum = per_sequence(above * (iou * present)[None])
        re = torch.where(visible > 0, present_sum / visible.clamp_min(1), torch.zeros_like(present_sum))
        re = re[:, visible > 0].mean(1) if (visible > 0).any() else torch.zeros(len(thresholds), dtype=torch.float64)
        f = torch.where(pr + re > 0, 2 * pr * re / (pr + re).clamp_min(1e-300), torch.zeros_like(pr))
        best = int(torch.argmax(f))
        return {"f_score": f[best], "precision": pr[best], "recall": re[best], "threshold": thresholds[best]}
