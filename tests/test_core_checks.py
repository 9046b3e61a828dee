"""Constructor and edge-case checks of the MoE core (routers, MoELayer, mixers, backbone)."""

from __future__ import annotations

import math

import pytest
import torch

from mmoe import MoELayer, MultimodalMoEBackbone
from mmoe.mixers import MIXERS
from mmoe.routers import ROUTERS

NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize("cf,error", [(INF, ValueError), (NAN, ValueError), (True, TypeError), ("1.0", TypeError)])
def test_capacity_factor_must_be_a_finite_positive_number(cf, error: type) -> None:
    with pytest.raises(error, match="capacity_factor"):
        MoELayer(8, 8, 4, 2, capacity_factor=cf)


@pytest.mark.parametrize("name", ["load_balance_weight", "z_loss_weight"])
@pytest.mark.parametrize("value", [NAN, -1e-3, INF])
def test_loss_weights_must_be_finite_and_non_negative(name: str, value: float) -> None:
    with pytest.raises(ValueError, match=name):
        MoELayer(8, 8, 4, 2, **{name: value})
    MoELayer(8, 8, 4, 2, **{name: 0.0})  # zero switches the loss off


@pytest.mark.parametrize("router,option", [("sigmoid", "bias_rate"), ("beam", "sparsity_weight")])
@pytest.mark.parametrize("value", [NAN, INF, -1.0])
def test_router_rates_and_loss_weights_must_be_finite_and_non_negative(router: str, option: str, value: float) -> None:
    with pytest.raises(ValueError, match=rf"router_options=.*for router '{router}': {option}: expected a finite"):
        MoELayer(8, 8, 4, 2, router=router, router_options={option: value})
    with pytest.raises(ValueError, match=option):
        ROUTERS[router](8, 4, 2, **{option: value})
    with pytest.raises(TypeError, match=option):
        ROUTERS[router](8, 4, 2, **{option: True})


@pytest.mark.parametrize("router", ["softmax", "sigmoid", "sample", "beam"])
@pytest.mark.parametrize("value", ["yes", 1, None])
def test_renormalize_must_be_a_bool(router: str, value) -> None:
    with pytest.raises(TypeError, match="renormalize: expected True or False"):
        MoELayer(8, 8, 4, 2, router=router, router_options={"renormalize": value})


@pytest.mark.parametrize("router,options,name", [("soft", {"slots": 0}, "slots"), ("nested", {"groups": "2"}, "groups"),
                                                 ("nested", {"groups": 0}, "groups")])
def test_router_counts_must_be_positive_integers(router: str, options: dict, name: str) -> None:
    with pytest.raises(ValueError, match=rf"{name}: expected an integer >= 1"):
        MoELayer(8, 8, 6, 2, router=router, router_options=options)


@pytest.mark.parametrize("dim,error", [(-3, ValueError), (0, ValueError), ("64", (TypeError, ValueError)),
                                       (64.0, (TypeError, ValueError))])
def test_dim_is_checked_by_layer_and_backbone(dim, error) -> None:
    with pytest.raises(error, match="dim"):
        MoELayer(dim, 8, 4, 2)
    with pytest.raises(error, match="^dim"):
        MultimodalMoEBackbone(["x"], dim=dim, depth=1)


def test_modalities_given_as_a_string_are_refused() -> None:
    with pytest.raises(TypeError, match="modalities: expected a list of modality names, got str 'audio'"):
        MultimodalMoEBackbone("audio", dim=8, depth=1)
    with pytest.raises(ValueError, match="modalities"):
        MultimodalMoEBackbone(["audio", ""], dim=8, depth=1)
    with pytest.raises(ValueError, match="modalities"):
        MultimodalMoEBackbone(["a", "a"], dim=8, depth=1)


@pytest.mark.parametrize("router", ["softmax", "sigmoid", "expert_choice", "soft", "sample", "beam", "nested"])
@pytest.mark.parametrize("shape", [(0, 5, 8), (0, 8), (2, 0, 8), (0, 0, 8)])
def test_empty_batch_gives_an_empty_output(router: str, shape: tuple) -> None:
    options = {"groups": 2} if router == "nested" else {}
    layer = MoELayer(8, 8, 6, 2, router=router, router_options=options, backend="torch")
    x = torch.randn(*shape, requires_grad=True)
    y = layer(x)
    assert y.shape == x.shape and float(layer.aux_loss) == 0.0
    (y.sum() + layer.aux_loss).backward()
    assert x.grad.shape == x.shape
    assert int(layer.stats.tokens_per_modality.sum()) == 0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_backbone_accepts_other_float_dtypes(dtype: torch.dtype) -> None:
    """Inputs are computed in the backbone's parameter dtype; each output keeps its input's dtype."""
    torch.manual_seed(0)
    bb = MultimodalMoEBackbone(["a", "b"], dim=8, depth=2).eval()
    a, b = torch.randn(2, 3, 8), torch.randn(2, 4, 8)
    ref = bb({"a": a.to(dtype).float(), "b": b})
    out = bb({"a": a.to(dtype), "b": b}, mask={"a": torch.ones(2, 3, dtype=torch.bool)})
    assert out["a"].dtype == dtype and out["b"].dtype == torch.float32
    torch.testing.assert_close(out["a"], ref["a"].to(dtype))
    torch.testing.assert_close(out["b"], ref["b"])


def test_backbone_in_another_dtype() -> None:
    torch.manual_seed(1)
    bb = MultimodalMoEBackbone(["x"], dim=8, depth=1)
    x = torch.randn(1, 5, 8)
    ref = bb({"x": x})["x"]
    out = bb.double()({"x": x})["x"]  # fp32 input, fp64 model: computed in fp64, returned in fp32
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


def test_mask_must_be_a_dict() -> None:
    bb = MultimodalMoEBackbone(["x"], dim=8, depth=1)
    with pytest.raises(TypeError, match="mask: expected a dict"):
        bb({"x": torch.randn(1, 2, 8)}, mask=torch.ones(1, 2, dtype=torch.bool))


@pytest.mark.parametrize("name,options,match", [
    ("attention", {"num_heads": 0}, "num_heads: expected an integer >= 1"),
    ("hybrid", {"num_heads": 3}, "num_heads: expected a divisor of dim=8"),
    ("spectral", {"modes": 0}, "modes: expected an integer >= 1"),
    ("spectral", {"spatial_dims": True}, "spatial_dims: expected 1 or 2"),
    ("spectral", {"spatial_dims": 3}, "spatial_dims: expected 1 or 2"),
])
def test_mixer_option_values_are_checked(name: str, options: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        MIXERS[name](dim=8, **options)


def test_capacity_still_accepts_ints_and_floats() -> None:
    layer = MoELayer(8, 8, 4, 2, capacity_factor=1, backend="torch")
    layer(torch.randn(10, 8))
    assert layer.stats.capacity == math.ceil(1 * 2 * 10 / 4)
