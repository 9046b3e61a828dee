"""Sampling shared by the datamodules: reproducible training samples whatever the worker count."""

from __future__ import annotations

from collections.abc import Iterator

from torch.utils.data import Sampler


class EpochSampler(Sampler):
    """Yields ``(epoch, index)`` for ``index`` in ``range(num_samples)``, so that a dataset can
    draw sample ``index`` of ``epoch`` from a generator seeded by ``(seed, epoch, index)``.
    Lightning sets the epoch (``set_epoch``, also when resuming); without it every new
    iteration counts one epoch.

    Args:
        num_samples: samples per epoch.
    """

    def __init__(self, num_samples: int) -> None:
        self.num_samples = num_samples
        self._next_epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self._next_epoch = epoch

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch, self._next_epoch = self._next_epoch, self._next_epoch + 1  # read now, not when first drawn
        return iter([(epoch, i) for i in range(self.num_samples)])
