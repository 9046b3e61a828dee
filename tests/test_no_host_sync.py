"""The torch hot path never pulls values to the host: shapes may depend on input shapes only."""

from __future__ import annotations

import contextlib

import pytest
import torch

from mmoe import MoELayer

SYNCING = ("item", "tolist", "cpu", "numpy", "__bool__", "__int__", "__float__", "__index__", "nonzero")


@contextlib.contextmanager
def forbid_host_sync():
    saved = {name: getattr(torch.Tensor, name) for name in SYNCING}

    def trap(name):
        def raiser(self, *args, **kwargs):
            raise AssertionError(f"host sync: Tensor.{name} called on the hot path")
        return raiser

    try:
        for name in SYNCING:
            setattr(torch.Tensor, name, trap(name))
        yield
    finally:
        for name, fn in saved.items():
            setattr(torch.Tensor, name, fn)


@pytest.mark.parametrize("router", ["softmax", "sigmoid", "expert_choice", "soft", "sample", "beam", "nested"])
@pytest.mark.parametrize("capacity_factor", [None, 0.8])
def test_forward_and_backward_do_not_sync(router: str, capacity_factor: float | None) -> None:
    options = {"groups": 2} if router == "nested" else {}
    layer = MoELayer(16, 16, 6, 2, router=router, router_options=options, capacity_factor=capacity_factor,
                     num_modalities=2, num_shared_experts=1, validate_inputs=False, backend="torch")
    x = torch.randn(2, 9, 16, requires_grad=True)
    modality = torch.randint(0, 2, (2, 9))
    with forbid_host_sync():
        y = layer(x, modality)
        (y.square().mean() + layer.aux_loss).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_trap_catches_a_sync() -> None:
    with forbid_host_sync(), pytest.raises(AssertionError, match="host sync"):
        torch.ones(2).sum().item()
