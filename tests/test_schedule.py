"""The warm-up + cosine learning-rate schedule (torch's schedulers) against its closed form."""

from __future__ import annotations

import math

import pytest
import torch

from mmoe.tasks.base import warmup_cosine


@pytest.mark.parametrize(("warmup", "total"), [(5, 40), (0, 10), (1, 7), (3, 4), (10, 10), (50, 3), (0, 1)])
def test_warmup_cosine_matches_the_closed_form(warmup: int, total: int) -> None:
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=2.0)
    sched = warmup_cosine(opt, warmup, total)
    w = min(warmup, total - 1)
    for step in range(total):
        if step < w:
            expected = (step + 1) / w
        else:
            expected = 0.5 * (1 + math.cos(math.pi * (step - w) / max(1, total - w)))
        assert opt.param_groups[0]["lr"] == pytest.approx(2.0 * expected, abs=1e-12), step
        opt.step()
        sched.step()
