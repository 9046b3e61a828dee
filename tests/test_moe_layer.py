"""MoELayer against the naive per-token reference, capacity semantics and bad input."""

from __future__ import annotations

import math

import pytest
import torch

from mmoe import MoELayer
from naive_moe import naive_forward

ROUTERS = ["softmax", "sigmoid", "expert_choice", "soft", "sample", "beam", "nested"]


def make_layer(router: str, E: int = 5, k: int = 2, dim: int = 12, hidden: int = 10,
               router_options: dict | None = None, **kw) -> MoELayer:
    options = dict(router_options or {})
    if router == "nested":  # two groups of (k routed + 1 shared) experts at least
        E, options = max(E, 2 * (k + 1)) + max(E, 2 * (k + 1)) % 2, options | {"groups": 2}
    layer = MoELayer(dim, hidden, E, k, router=router, router_options=options, backend="torch", **kw)
    if router == "sigmoid":  # a non-zero bias, so selection differs from plain top-k of the scores
        layer.router.bias.copy_(torch.randn(E) * 0.1)
    if router == "beam":  # some masks shut, some open
        torch.nn.init.normal_(layer.router.mask_weight, std=1.0)
        layer.router.mask_bias.data.zero_()
    return layer


def compare(layer: MoELayer, x: torch.Tensor, rtol: float = 1e-4) -> None:
    layer.eval()  # the sigmoid router's bias moves in training forwards; freeze it for the comparison
    params = [p for p in layer.parameters() if p.requires_grad]
    x1 = x.clone().requires_grad_()
    y = layer(x1)
    g = torch.randn_like(y)
    grads = torch.autograd.grad((y * g).sum(), [x1, *params], allow_unused=True)
    x2 = x.clone().requires_grad_()
    y_ref, _ = naive_forward(layer, x2)
    ref_grads = torch.autograd.grad((y_ref * g).sum(), [x2, *params], allow_unused=True)
    scale = float(y_ref.abs().max().clamp_min(1.0)) if y_ref.numel() else 1.0
    torch.testing.assert_close(y, y_ref, rtol=rtol, atol=rtol * scale)
    for (name, _), a, b in zip([("x", None), *layer.named_parameters()], grads, ref_grads):
        a = torch.zeros_like(b) if a is None and b is not None else a
        b = torch.zeros_like(a) if b is None and a is not None else b
        if a is None:
            continue
        s = float(b.abs().max().clamp_min(1.0)) if b.numel() else 1.0
        torch.testing.assert_close(a, b, rtol=rtol, atol=rtol * s, msg=lambda m: f"grad {name}: {m}")


@pytest.mark.parametrize("router", ROUTERS)
@pytest.mark.parametrize("T", [0, 1, 23])
def test_router_matches_naive(router: str, T: int) -> None:
    torch.manual_seed(hash((router, T)) % 1000)
    layer = make_layer(router, E=5, k=2, num_shared_experts=1 if T == 23 else 0)
    compare(layer, torch.randn(2, T, 12))


@pytest.mark.parametrize("router", ["softmax", "sigmoid", "beam", "sample", "nested"])
@pytest.mark.parametrize("cf", [0.5, 1.25])
def test_capacity_matches_naive_and_counts_drops(router: str, cf: float) -> None:
    torch.manual_seed(1)
    options = {} if router == "nested" else {"renormalize": True}  # nested has no renormalize option
    layer = make_layer(router, E=6, k=3, capacity_factor=cf, activation="gelu", router_options=options)
    x = torch.randn(3, 17, 12)
    compare(layer, x)
    _, dropped = naive_forward(layer, x)
    assert int(layer.stats.dropped) == dropped
    assert layer.stats.capacity == math.ceil(cf * 3 * 51 / layer.num_experts)
    assert int(layer.stats.tokens_per_expert.max()) <= layer.stats.capacity


def test_exact_drop_count_on_one_expert() -> None:
    """All 40 identical tokens pick the same expert: exactly 40 - C are dropped, other experts get none."""
    torch.manual_seed(2)
    layer = make_layer("softmax", E=7, k=1, capacity_factor=1.0)
    x = torch.randn(1, 12).expand(40, 12).contiguous()
    y = layer(x)
    C = math.ceil(1.0 * 1 * 40 / 7)
    assert int(layer.stats.dropped) == 40 - C
    assert sorted(layer.stats.tokens_per_expert.tolist()) == [0] * 6 + [C]
    zero_rows = (y.abs().sum(-1) == 0).sum().item()
    assert zero_rows == 40 - C  # a dropped token gets exactly zero from the MoE
    compare(layer, x)


def test_large_capacity_equals_dropless() -> None:
    torch.manual_seed(3)
    x = torch.randn(50, 12)
    dropless = make_layer("softmax", E=6, k=2)
    big = make_layer("softmax", E=6, k=2, capacity_factor=6.0)
    big.load_state_dict(dropless.state_dict())
    torch.testing.assert_close(big(x), dropless(x))
    assert int(big.stats.dropped) == 0


@pytest.mark.parametrize("E,k", [(1, 1), (3, 3), (6, 1), (60, 6)])
def test_odd_expert_counts_and_idle_experts(E: int, k: int) -> None:
    torch.manual_seed(4)
    layer = make_layer("softmax", E=E, k=k, activation="swiglu")
    compare(layer, torch.randn(9, 12))
    same = torch.randn(1, 12).expand(11, 12).contiguous()  # every token on the same k experts
    compare(layer, same)
    assert int((layer.stats.tokens_per_expert > 0).sum()) == k


def test_output_dtype_and_shape_preserved() -> None:
    layer = make_layer("softmax")
    x = torch.randn(2, 3, 4, 12).to(torch.bfloat16)
    y = layer(x)
    assert y.shape == x.shape and y.dtype == torch.bfloat16
    ref = layer(x.float())
    assert (y.float() - ref).abs().max() < 0.1


def test_aux_losses_values() -> None:
    torch.manual_seed(5)
    layer = make_layer("softmax", E=4, k=1, load_balance_weight=1.0, z_loss_weight=0.0)
    x = torch.randn(64, 12)
    layer(x)
    p = torch.softmax(x @ layer.router.weight.t(), -1)
    f = torch.bincount(p.argmax(-1), minlength=4).float() / 64
    torch.testing.assert_close(layer.aux_loss, 4 * (f * p.mean(0)).sum())
    layer.load_balance_weight, layer.z_loss_weight = 0.0, 1.0
    layer(x)
    torch.testing.assert_close(layer.aux_loss, torch.logsumexp(x @ layer.router.weight.t(), -1).pow(2).mean())


def test_stats_per_modality_and_dead_experts() -> None:
    torch.manual_seed(6)
    layer = make_layer("softmax", E=4, k=1, num_modalities=3, dead_window=3)
    x = torch.randn(1, 12).expand(30, 12).contiguous()
    mod = torch.tensor([0] * 10 + [1] * 15 + [2] * 5)
    layer.train()
    for _ in range(3):
        layer(x, mod)
    s = layer.stats
    assert s.tokens_per_modality.tolist() == [10, 15, 5]
    assert s.tokens_per_expert_per_modality.sum(1).tolist() == [10, 15, 5]
    assert int(s.dead_experts) == 3  # only one expert was ever used
    assert float(s.router_entropy) > 0


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "kwargs,name",
    [
        (dict(top_k=5, num_experts=4), "top_k"),
        (dict(capacity_factor=0.0), "capacity_factor"),
        (dict(capacity_factor=-1.0), "capacity_factor"),
        (dict(router="nope"), "router"),
        (dict(activation="relu"), "activation"),
        (dict(backend="cuda"), "backend"),
        (dict(capacity_mode="dynamic"), "capacity_mode"),
        (dict(num_experts=0, top_k=1), "num_experts"),
        (dict(router="nested", num_experts=8, top_k=2, router_options={"groups": 3}), "groups"),
        (dict(router="nested", num_experts=8, top_k=4, router_options={"groups": 2}), "groups"),
    ],
)
def test_bad_constructor_arguments(kwargs: dict, name: str) -> None:
    args = dict(dim=8, hidden_dim=8, num_experts=4, top_k=2) | kwargs
    with pytest.raises(ValueError, match=name):
        MoELayer(**args)


def test_bad_forward_input() -> None:
    layer = MoELayer(8, 8, 4, 2, num_modalities=2)
    with pytest.raises(ValueError, match=r"x: expected last dim 8"):
        layer(torch.randn(3, 7))
    for bad in (float("nan"), float("inf")):
        x = torch.randn(3, 8)
        x[1, 2] = bad
        with pytest.raises(ValueError, match="x: contains NaN or inf"):
            layer(x)
    with pytest.raises(ValueError, match=r"modality: expected ids in \[0, 2\)"):
        layer(torch.randn(3, 8), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match=r"modality: expected ids"):
        layer(torch.randn(3, 8), torch.tensor([0, -1, 1]))
    with pytest.raises(ValueError, match=r"modality: expected shape \(3,\)"):
        layer(torch.randn(3, 8), torch.tensor([0, 1]))
    with pytest.raises(TypeError, match="modality"):
        layer(torch.randn(3, 8), torch.tensor([0.0, 1.0, 1.0]))
    with pytest.raises(TypeError, match="x"):
        layer([[0.0] * 8])
