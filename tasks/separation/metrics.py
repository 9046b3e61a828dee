"""Separation metrics: SI-SNR improvement and SDR improvement over the mixture, best permutation."""

from __future__ import annotations

import torch
from torchmetrics import Metric
from torchmetrics.functional.audio import (
    permutation_invariant_training,
    scale_invariant_signal_noise_ratio,
    signal_distortion_ratio,
)


def pit_si_snr(preds: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mean SI-SNR over speakers [B], best permutation [B, S])`` of ``preds``/``target [B, S, L]``."""
    return permutation_invariant_training(preds, target, scale_invariant_signal_noise_ratio, mode="speaker-wise",
                                          eval_func="max")


def _check(preds: torch.Tensor, target: torch.Tensor, mixture: torch.Tensor) -> None:
    if preds.shape != target.shape or preds.ndim != 3:
        raise ValueError(f"preds/target: expected equal shapes [B, S, L], got {tuple(preds.shape)} and "
                         f"{tuple(target.shape)}")
    if mixture.shape != (target.shape[0], target.shape[-1]):
        raise ValueError(f"mixture: expected [B, L] = {(target.shape[0], target.shape[-1])}, got {tuple(mixture.shape)}")


class SISNRi(Metric):
    """Scale-invariant SNR improvement (dB): SI-SNR of the best-permuted estimates minus SI-SNR of the
    mixture, averaged over the speakers of each mixture and over mixtures.

    ``update(preds [B, S, L], target [B, S, L], mixture [B, L])``.
    """

    higher_is_better = True
    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("total", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: torch.Tensor, target: torch.Tensor, mixture: torch.Tensor) -> None:
        _check(preds, target, mixture)
        preds, target, mixture = preds.double(), target.double(), mixture.double()
        best, _ = pit_si_snr(preds, target)
        base = scale_invariant_signal_noise_ratio(mixture[:, None].expand_as(target), target).mean(-1)
        self.total += (best - base).sum()
        self.count += best.numel()

    def compute(self) -> torch.Tensor:
        return (self.total / self.count.clamp_min(1)).float()


class SDRi(Metric):
    """SDR improvement (dB, BSS-eval v4 style SDR with a 512-tap distortion filter, torchmetrics'
    ``signal_distortion_ratio``): SDR of the best-permuted estimates (permutation by SDR) minus SDR of
    the mixture, averaged over speakers and mixtures.

    ``update(preds [B, S, L], target [B, S, L], mixture [B, L])``.

    Args:
        filter_length: taps of the allowed distortion filter.
    """

    higher_is_better = True
    full_state_update = False

    def __init__(self, filter_length: int = 512) -> None:
        super().__init__()
        self.filter_length = filter_length
        self.add_state("total", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def _sdr(self, preds: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return signal_distortion_ratio(preds, target, filter_length=self.filter_length)

    def update(self, preds: torch.Tensor, target: torch.Tensor, mixture: torch.Tensor) -> None:
        _check(preds, target, mixture)
        preds, target, mixture = preds.double(), target.double(), mixture.double()
        best, _ = permutation_invariant_training(preds, target, self._sdr, mode="speaker-wise", eval_func="max")
        base = self._sdr(mixture[:, None].expand_as(target).contiguous(), target).mean(-1)
        self.total += (best - base).sum()
        self.count += best.numel()

    def compute(self) -> torch.Tensor:
        return (self.total / self.count.clamp_min(1)).float()
