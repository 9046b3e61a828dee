"""The torch backend's CPU fast path (mmoe.kernels.cpu_dispatch) against simple references.

Dispatch must give exactly the reference's metadata; the expert MLP (forward and its hand-written
backward) must match the dumb per-pair loop; the whole layer must match the layer run on the
reference ops, for every router and capacity mode, outputs and gradients.
"""

from __future__ import annotations

import pytest
import torch
from mmoe.kernels import backend_ops, reference

import mmoe.moe_layer as moe_layer_module
from mmoe import MoELayer
from mmoe.kernels import cpu_dispatch


def test_torch_backend_is_the_fast_path() -> None:
    assert backend_ops("torch", torch.device("cpu")) is cpu_dispatch
    assert backend_ops("auto", torch.device("cpu")) is cpu_dispatch


@pytest.mark.parametrize("P,E", [(0, 3), (1, 1), (37, 5), (400, 16)])
@pytest.mark.parametrize("capacity", [None, 1, 3, 10_000])
@pytest.mark.parametrize("ties", [False, True])
def test_dispatch_metadata_identical(P: int, E: int, capacity: int | None, ties: bool) -> None:
    g = torch.Generator().manual_seed(P * 7 + E + (capacity or 0) + ties)
    pair_expert = torch.randint(0, E + 1, (P,), generator=g)  # E = pruned pair
    if ties:  # few distinct values, negative ones and signed zeros: the tie rule and the sign map
        priority = torch.tensor([-2.5, -0.0, 0.0, 1e-30, 3.0])[torch.randint(0, 5, (P,), generator=g)]
    else:
        priority = torch.randn(P, generator=g) * 100
    want = reference.dispatch_metadata(pair_expert, priority, E, capacity)
    got = cpu_dispatch.dispatch_metadata(pair_expert, priority, E, capacity)
    for name, a, b in zip(want._fields, want, got):
        assert torch.equal(a, b), name


def _grads(fn, inputs):
    y = fn(*inputs)
    if not y.requires_grad:  # the loop over no pair returns plain zeros
        return y, [torch.zeros_like(t) for t in inputs]
    weight = torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)  # a fixed, non-uniform upstream grad
    grads = torch.autograd.grad((y * weight).sum(), inputs, allow_unused=True)
    return y, [torch.zeros_like(t) if g is None else g for t, g in zip(inputs, grads)]


@pytest.mark.parametrize("chunk", [1 << 20, 40])  # one chunk of experts, or many (a few rows each)
@pytest.mark.parametrize("activation", ["swiglu", "gelu"])
@pytest.mark.parametrize("T,D,H,E,k,capacity", [
    (0, 8, 4, 3, 2, None),  # no token
    (1, 5, 3, 4, 2, None),  # one token, odd (unaligned) widths, idle experts
    (37, 12, 7, 6, 2, 4),  # capacity drops, T not a multiple of anything
    (50, 16, 8, 9, 3, None),
])
def test_expert_mlp_matches_per_pair_loop(activation: str, T: int, D: int, H: int, E: int, k: int,
                                          capacity: int | None, chunk: int, monkeypatch) -> None:
    monkeypatch.setattr(cpu_dispatch, "_CHUNK_ELEMENTS", chunk)
    torch.manual_seed(T + D + E)
    dt = torch.float64
    width = 2 * H if activation == "swiglu" else H
    x = torch.randn(T, D, dtype=dt, requires_grad=True)
    w_in = torch.randn(E, D, width, dtype=dt, requires_grad=True)
    w_out = torch.randn(E, H, D, dtype=dt, requires_grad=True)
    gate = torch.rand(T * k, dtype=dt, requires_grad=True)
    pair_token = torch.arange(T * k) // k
    pair_expert = torch.randint(0, E + 1, (T * k,))  # some pruned (E); expert 0 and E-1 may get nothing
    d = cpu_dispatch.dispatch_metadata(pair_expert, gate.detach(), E, capacity)
    computed = torch.where(d.keep, pair_expert, E)

    def fast(x, w_in, w_out, gate):
        return cpu_dispatch.expert_mlp(x, w_in, w_out, pair_token[d.sorted_pair], gate[d.sorted_pair],
                                       d.expert_offsets, activation)

    def loop(x, w_in, w_out, gate):
        return reference.naive_expert_mlp(x, w_in, w_out, pair_token, computed, gate, activation)

    y, grads = _grads(fast, [x, w_in, w_out, gate])
    y_ref, ref_grads = _grads(loop, [x, w_in, w_out, gate])
    torch.testing.assert_close(y, y_ref)
    for name, a, b in zip(["x", "w_in", "w_out", "gate"], grads, ref_grads):
        torch.testing.assert_close(a, b, msg=lambda m, name=name: f"grad {name}: {m}")
    with torch.no_grad():  # the inference path (no saved tensors) gives the same output
        torch.testing.assert_close(fast(x, w_in, w_out, gate), y)


@pytest.mark.parametrize("chunk", [1 << 20, 100])
def test_expert_mlp_fp32_and_single_input_grad(chunk: int, monkeypatch) -> None:
    """fp32 runs the grouped GEMMs (not the fp64 fallback); a gradient for x alone works too."""
    monkeypatch.setattr(cpu_dispatch, "_CHUNK_ELEMENTS", chunk)
    torch.manual_seed(0)
    T, D, H, E, k = 70, 16, 8, 8, 2
    x = torch.randn(T, D, requires_grad=True)
    w_in, w_out = torch.randn(E, D, 2 * H) * 0.3, torch.randn(E, H, D) * 0.3
    gate = torch.rand(T * k)
    pair_token, pair_expert = torch.arange(T * k) // k, torch.randint(0, E, (T * k,))
    d = cpu_dispatch.dispatch_metadata(pair_expert, gate, E, None)
    y = cpu_dispatch.expert_mlp(x, w_in, w_out, pair_token[d.sorted_pair], gate[d.sorted_pair],
                                d.expert_offsets, "swiglu")
    (gx,) = torch.autograd.grad(y.square().sum(), [x])
    x64 = x.detach().double().requires_grad_()
    y64 = reference.naive_expert_mlp(x64, w_in.double(), w_out.double(), pair_token, pair_expert, gate.double(), "swiglu")
    (gx64,) = torch.autograd.grad(y64.square().sum(), [x64])
    torch.testing.assert_close(y.double(), y64, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(gx.double(), gx64, rtol=1e-4, atol=1e-4)


def test_expert_mlp_bad_activation() -> None:
    x = torch.randn(2, 4)
    with pytest.raises(ValueError, match="activation"):
        cpu_dispatch.expert_mlp(x, torch.randn(1, 4, 4), torch.randn(1, 4, 4), torch.zeros(2, dtype=torch.long),
                                torch.ones(2), torch.tensor([0, 2]), "relu")


def _layer(router: str, capacity_factor: float | None, capacity_mode: str) -> MoELayer:
    E, k, options = 6, 2, {}
    if router == "nested":
        E, options = 8, {"groups": 2}
    layer = MoELayer(12, 10, E, k, router=router, router_options=options, capacity_factor=capacity_factor,
                     capacity_mode=capacity_mode, num_modalities=2, backend="torch").double()
    if router == "beam":  # some masks shut, some open
        torch.nn.init.normal_(layer.router.mask_weight, std=1.0)
    return layer.eval()


def _run(layer: MoELayer, x: torch.Tensor, mod: torch.Tensor, ops, monkeypatch) -> list[torch.Tensor]:
    monkeypatch.setattr(moe_layer_module, "backend_ops", lambda backend, device: ops)
    x = x.clone().requires_grad_()
    params = [p for p in layer.parameters() if p.requires_grad]
    y = layer(x, mod)
    loss = (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)).sum() + layer.aux_loss
    grads = torch.autograd.grad(loss, [x, *params], allow_unused=True)
    return [y, *[torch.zeros_like(p) if g is None else g for p, g in zip([x, *params], grads)]]


@pytest.mark.parametrize("router", ["softmax", "sigmoid", "expert_choice", "sample", "beam", "nested"])
@pytest.mark.parametrize("capacity", [(None, "static"), (0.75, "static"), (0.75, "macs"), (1.0, "macs_output")])
@pytest.mark.parametrize("T", [0, 1, 29])
def test_layer_matches_reference_ops(router: str, capacity: tuple, T: int, monkeypatch) -> None:
    """Every router and capacity mode: output, input/expert/router gradients as with the reference ops."""
    monkeypatch.setattr(cpu_dispatch, "_CHUNK_ELEMENTS", 64)  # several expert chunks even at these sizes
    torch.manual_seed(T)
    layer = _layer(router, *capacity)
    x = torch.randn(1, T, 12, dtype=torch.float64)
    mod = torch.randint(0, 2, (1, T))
    fast = _run(layer, x, mod, cpu_dispatch, monkeypatch)
    ref = _run(layer, x, mod, reference, monkeypatch)
    names = ["y", "x", *[n for n, p in layer.named_parameters() if p.requires_grad]]
    for name, a, b in zip(names, fast, ref):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9, msg=lambda m, name=name: f"{name}: {m}")
