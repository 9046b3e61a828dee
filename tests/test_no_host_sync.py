"""The torch hot path never pulls values to the host: shapes may depend on input shapes only."""

from __future__ import annotations

import contextlib

import pytest
import torch

from mmoe import MoELayer
from mmoe.kernels import cpu_dispatch, reference

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
def test_forward_and_backward_do_not_sync(router: str, capacity_factor: float | None,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    # The torch backend's expert MLP reads the live-pair count on the host for CPU tensors only (free
    # there: kernels/cpu_dispatch.py); a GPU tensor takes the reference's MLP. Checked here is the path a
    # GPU tensor takes: the same routing, capacity and dispatch, with the reference MLP.
    monkeypatch.setattr(cpu_dispatch, "expert_mlp", reference.expert_mlp)
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


def test_the_cpu_fast_path_is_taken_by_cpu_tensors_only() -> None:
    """What the test above leaves out: cpu_dispatch's own MLP (host reads) serves CPU tensors only."""
    import inspect

    source = inspect.getsource(cpu_dispatch.expert_mlp)
    assert source.index('x.device.type != "cpu"') < source.index("int(expert_offsets")
