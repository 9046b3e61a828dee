"""Configuration-driven MoE core: router options as one mapping, a backbone built from block specs."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from mmoe import BlockSpec, DenseFFN, MoELayer, MultimodalMoEBackbone, collect_moe
from mmoe.mixers import SelfAttention, SpectralMixer
from mmoe.routers import ROUTERS, Routing, SoftmaxRouter, build_router, register_router


class TemperatureRouter(SoftmaxRouter):
    """A router defined in the test: softmax top-k over ``logits / temperature``."""

    def __init__(self, dim: int, num_experts: int, top_k: int, temperature: float = 1.0) -> None:
        super().__init__(dim, num_experts, top_k)
        if not temperature > 0:
            raise ValueError(f"temperature: expected > 0, got {temperature!r}")
        self.temperature = temperature
        self.calls = 0

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return super().logits(x) / self.temperature


class PooledRouter(SoftmaxRouter):
    """A router defined in the test whose decision depends on the whole sample (not token-level)."""

    token_level = False


@pytest.fixture
def my_router():
    register_router("my_router")(TemperatureRouter)
    register_router("my_pooled_router")(PooledRouter)
    yield "my_router"
    ROUTERS.pop("my_router")
    ROUTERS.pop("my_pooled_router")


def test_registered_router_with_its_own_option_through_moe_layer(my_router: str) -> None:
    torch.manual_seed(0)
    layer = MoELayer(12, 10, 4, 2, router=my_router, router_options={"temperature": 4.0}, backend="torch")
    assert isinstance(layer.router, TemperatureRouter) and layer.router.temperature == 4.0
    assert layer.router_kind == "my_router"
    x = torch.randn(2, 5, 12, requires_grad=True)
    y = layer(x)
    (y.square().mean() + layer.aux_loss).backward()
    assert y.shape == x.shape and layer.router.calls == 1 and x.grad.abs().sum() > 0
    # the option does what it says: same weights at temperature 1 give sharper routing
    sharp = MoELayer(12, 10, 4, 2, router=my_router, backend="torch")
    sharp.load_state_dict(layer.state_dict())
    sharp(x)
    assert float(sharp.stats.router_entropy) < float(layer.stats.router_entropy)
    with pytest.raises(ValueError, match=r"router_options: router 'my_router' does not accept \['temp'\]; "
                                         r"it accepts \['temperature'\]"):
        MoELayer(12, 10, 4, 2, router=my_router, router_options={"temp": 4.0})
    with pytest.raises(ValueError, match=r"router_options=\{'temperature': 0\.0\} for router 'my_router': temperature"):
        MoELayer(12, 10, 4, 2, router=my_router, router_options={"temperature": 0.0})


def test_registered_router_through_block_spec_and_backbone(my_router: str) -> None:
    torch.manual_seed(1)
    spec = BlockSpec(mixer_options={"num_heads": 2}, hidden_dim=8, num_experts=4, router=my_router,
                     router_options={"temperature": 2.0})
    bb = MultimodalMoEBackbone(["a", "b"], dim=8, blocks=[spec, {"router": my_router, "hidden_dim": 8,
                                                                   "num_experts": 4, "mixer": "identity"}])
    assert [b.ffn.router.temperature for b in bb.blocks] == [2.0, 1.0]
    tokens = {"a": torch.randn(2, 3, 8), "b": torch.randn(2, 4, 8)}
    mask = {"a": torch.tensor([[True, True, False], [True, True, True]])}
    out = bb(tokens, mask=mask)  # a token-level router (the Router default) accepts padding masks
    (sum(v.square().mean() for v in out.values()) + collect_moe(bb).aux_loss).backward()
    assert int(bb.blocks[0].ffn.stats.tokens_per_modality.sum()) == 13  # the padded token is never routed
    assert bb.blocks[0].ffn.router.weight.grad.abs().sum() > 0
    pooled = MultimodalMoEBackbone(["a", "b"], dim=8, blocks=[spec, dataclasses.replace(spec, router="my_pooled_router",
                                                                                          router_options={})])
    with pytest.raises(ValueError, match=r"mask: padding masks need token-level routers .*'my_pooled_router' in blocks\[1\]"):
        pooled(tokens, mask=mask)


def test_register_router_refuses_to_replace_unless_asked() -> None:
    with pytest.raises(ValueError, match="'softmax' is already registered"):
        register_router("softmax")(TemperatureRouter)
    assert ROUTERS["softmax"] is SoftmaxRouter
    try:
        register_router("softmax", replace=True)(TemperatureRouter)
        assert isinstance(build_router("softmax", 4, 2, 1, {"temperature": 2.0}), TemperatureRouter)
    finally:
        register_router("softmax", replace=True)(SoftmaxRouter)
    assert ROUTERS["softmax"] is SoftmaxRouter and SoftmaxRouter.kind == "softmax"
    with pytest.raises(TypeError, match="Router subclass"):
        register_router("not_a_router")(dict)
    assert "not_a_router" not in ROUTERS


def test_build_router_passes_options_without_special_cases() -> None:
    assert build_router("nested", 8, 9, 2, {"groups": 3}).groups == 3
    assert build_router("soft", 8, 4, 1, {"slots": 3}).weight.shape == (12, 8)
    assert build_router("sigmoid", 8, 4, 2, {"bias_rate": 0.5, "renormalize": False}).bias_rate == 0.5
    assert build_router("beam", 8, 4, 2, {"sparsity_weight": 0.5}).sparsity_weight == 0.5
    with pytest.raises(ValueError, match=r"router_options: router 'expert_choice' does not accept \['groups'\]; "
                                         r"it accepts no options"):
        build_router("expert_choice", 8, 4, 2, {"groups": 2})
    with pytest.raises(ValueError, match=r"router_options: router 'softmax' does not accept \['slots'\]"):
        build_router("softmax", 8, 4, 2, {"slots": 2})
    with pytest.raises(TypeError, match="router_options: expected a mapping"):
        build_router("softmax", 8, 4, 2, [("renormalize", True)])
    with pytest.raises(ValueError, match="router: expected one of"):
        build_router("nope", 8, 4, 2)


def alternating_blocks() -> list:
    time_block = BlockSpec(mixer="attention", mixer_options={"num_heads": 2}, hidden_dim=8, num_experts=4,
                           router="softmax", router_options={"renormalize": True})
    freq_block = BlockSpec(mixer="spectral", mixer_options={"modes": 2, "spatial_dims": 2}, hidden_dim=8,
                           num_experts=6, top_k=2, router="nested", router_options={"groups": 2})
    dense = {"mixer": "identity", "ffn": "dense", "hidden_dim": 8, "top_k": 2}  # a dict, as from YAML
    return [time_block, freq_block, time_block, freq_block, dense]


def test_alternating_block_specs_build_run_and_train() -> None:
    torch.manual_seed(2)
    bb = MultimodalMoEBackbone(["x"], dim=16, blocks=alternating_blocks())
    assert len(bb.blocks) == 5 and bb.specs[4] == BlockSpec(mixer="identity", ffn="dense", hidden_dim=8)
    kinds = [b.ffn.router_kind if isinstance(b.ffn, MoELayer) else "dense" for b in bb.blocks]
    assert kinds == ["softmax", "nested", "softmax", "nested", "dense"]
    assert [type(b.mixer).__name__ for b in bb.blocks] == ["SelfAttention", "SpectralMixer"] * 2 + ["NoMixer"]
    assert isinstance(bb.blocks[4].ffn, DenseFFN) and bb.blocks[4].ffn.mlp.hidden_dim == 16
    assert bb.blocks[0].ffn.router.renormalize and bb.blocks[1].ffn.router.groups == 2
    assert bb.blocks[1].ffn.num_experts == 6 and bb.blocks[1].mixer.modes == 2
    x = torch.randn(2, 12, 16, requires_grad=True)
    out = bb({"x": x}, grid=(3, 4))["x"]
    moe = collect_moe(bb)
    assert sorted(moe.stats) == ["blocks.0.ffn", "blocks.1.ffn", "blocks.2.ffn", "blocks.3.ffn"]
    (out.square().mean() + moe.aux_loss).backward()
    for i in range(4):
        assert bb.blocks[i].ffn.router.weight.grad.abs().sum() > 0, i
        assert bb.blocks[i].ffn.experts.w_in.grad.abs().sum() > 0, i
    assert bb.blocks[1].mixer.weight.grad.abs().sum() > 0
    assert bb.blocks[4].ffn.mlp.w_in.grad.abs().sum() > 0
    assert isinstance(bb.blocks[0].mixer, SelfAttention) and isinstance(bb.blocks[3].mixer, SpectralMixer)


def test_state_dict_keys_are_the_released_checkpoint_layout() -> None:
    """The keys (and shapes) that ``MultimodalMoEBackbone(["x"], dim=16, depth=2)`` had before block specs."""
    expected = [
        ("modality_embed", (1, 16)),
        ("blocks.0.norm1.weight", (16,)), ("blocks.0.norm1.bias", (16,)),
        ("blocks.0.norm2.weight", (16,)), ("blocks.0.norm2.bias", (16,)),
        ("blocks.0.mixer.qkv.weight", (48, 16)), ("blocks.0.mixer.qkv.bias", (48,)),
        ("blocks.0.mixer.proj.weight", (16, 16)), ("blocks.0.mixer.proj.bias", (16,)),
        ("blocks.0.ffn.router.weight", (8, 16)),
        ("blocks.0.ffn.experts.w_in", (8, 16, 1024)), ("blocks.0.ffn.experts.w_out", (8, 512, 16)),
        ("blocks.1.norm1.weight", (16,)), ("blocks.1.norm1.bias", (16,)),
        ("blocks.1.norm2.weight", (16,)), ("blocks.1.norm2.bias", (16,)),
        ("blocks.1.mixer.qkv.weight", (48, 16)), ("blocks.1.mixer.qkv.bias", (48,)),
        ("blocks.1.mixer.proj.weight", (16, 16)), ("blocks.1.mixer.proj.bias", (16,)),
        ("blocks.1.ffn.router.weight", (8, 16)),
        ("blocks.1.ffn.experts.w_in", (8, 16, 1024)), ("blocks.1.ffn.experts.w_out", (8, 512, 16)),
        ("norm.weight", (16,)), ("norm.bias", (16,)),
    ]
    for bb in (MultimodalMoEBackbone(["x"], dim=16, depth=2),
               MultimodalMoEBackbone(["x"], dim=16, blocks=[BlockSpec(), {}]),
               MultimodalMoEBackbone(["x"], dim=16, blocks=[BlockSpec()] * 2, depth=2)):
        assert [(k, tuple(v.shape)) for k, v in bb.state_dict().items()] == expected


def test_nested_and_dense_keys() -> None:
    bb = MultimodalMoEBackbone(["x"], dim=8, blocks=alternating_blocks()[1:3] + [BlockSpec(ffn="dense", hidden_dim=4)])
    keys = [k for k in bb.state_dict() if ".ffn." in k]
    assert keys == ["blocks.0.ffn.router.weight", "blocks.0.ffn.router.group_weight", "blocks.0.ffn.experts.w_in",
                    "blocks.0.ffn.experts.w_out", "blocks.1.ffn.router.weight", "blocks.1.ffn.experts.w_in",
                    "blocks.1.ffn.experts.w_out", "blocks.2.ffn.mlp.w_in", "blocks.2.ffn.mlp.w_out"]
    assert bb.state_dict()["blocks.2.ffn.mlp.w_in"].shape == (1, 8, 2 * 8)  # dense width top_k * hidden_dim


def test_dicts_and_specs_build_the_same_backbone() -> None:
    specs = alternating_blocks()[:2]
    torch.manual_seed(3)
    a = MultimodalMoEBackbone(["x"], dim=16, blocks=specs)
    torch.manual_seed(3)
    b = MultimodalMoEBackbone(["x"], dim=16, blocks=[dataclasses.asdict(s) for s in specs])
    assert a.specs == b.specs
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)


@pytest.mark.parametrize(
    "field,value,error,match",
    [
        ("mixer", "conv", ValueError, r"blocks\[1\]\.mixer: expected one of"),
        ("mixer_options", {"num_heads": 3}, ValueError, r"blocks\[1\]\.mixer_options=.*num_heads: expected a divisor"),
        ("mixer_options", {"modes": 2}, ValueError, r"blocks\[1\]\.mixer_options: mixer 'attention' does not accept"),
        ("ffn", "sparse", ValueError, r"blocks\[1\]\.ffn: expected one of \('moe', 'dense'\)"),
        ("hidden_dim", 0, ValueError, r"blocks\[1\]\.hidden_dim"),
        ("num_experts", 1.5, ValueError, r"blocks\[1\]\.num_experts"),
        ("top_k", 9, ValueError, r"blocks\[1\]\.top_k: expected at most num_experts=8"),
        ("router", "nope", ValueError, r"blocks\[1\]\.router: expected one of"),
        ("router_options", {"groups": 2}, ValueError, r"blocks\[1\]\.router_options: router 'softmax' does not accept"),
        ("router_options", {"renormalize": "yes"}, TypeError, r"blocks\[1\]\.router_options=.*renormalize"),
        ("capacity_factor", float("inf"), ValueError, r"blocks\[1\]\.capacity_factor"),
        ("capacity_mode", "dynamic", ValueError, r"blocks\[1\]\.capacity_mode"),
        ("num_shared_experts", -1, ValueError, r"blocks\[1\]\.num_shared_experts"),
        ("activation", "relu", ValueError, r"blocks\[1\]\.activation"),
        ("backend", "cuda", ValueError, r"blocks\[1\]\.backend"),
        ("load_balance_weight", float("nan"), ValueError, r"blocks\[1\]\.load_balance_weight"),
        ("z_loss_weight", -1.0, ValueError, r"blocks\[1\]\.z_loss_weight"),
        ("dense_hidden_dim", 0, ValueError, r"blocks\[1\]\.dense_hidden_dim"),
    ],
)
def test_bad_spec_values_name_the_block_and_field(field: str, value, error: type, match: str) -> None:
    good = BlockSpec(mixer_options={"num_heads": 2}, hidden_dim=8)
    bad = dataclasses.replace(good, **{field: value})
    with pytest.raises(error, match=match):
        MultimodalMoEBackbone(["x"], dim=8, blocks=[good, bad])


@pytest.mark.parametrize("field,value", [("hidden_dim", 0), ("top_k", 0), ("activation", "relu"),
                                         ("dense_hidden_dim", -2)])
def test_bad_dense_spec_values(field: str, value) -> None:
    bad = dataclasses.replace(BlockSpec(ffn="dense"), **{field: value})
    with pytest.raises(ValueError, match=rf"blocks\[0\]\.{field}"):
        MultimodalMoEBackbone(["x"], dim=8, blocks=[bad])


def test_bad_blocks_and_depth() -> None:
    with pytest.raises(ValueError, match=r"blocks\[1\]: unknown BlockSpec fields \['heads'\]"):
        MultimodalMoEBackbone(["x"], dim=8, blocks=[{}, {"heads": 2}])
    with pytest.raises(TypeError, match=r"blocks\[0\]: expected a BlockSpec or a dict"):
        MultimodalMoEBackbone(["x"], dim=8, blocks=["attention"])
    with pytest.raises(TypeError, match="blocks: expected a list"):
        MultimodalMoEBackbone(["x"], dim=8, blocks=BlockSpec())
    with pytest.raises(ValueError, match="blocks: expected at least one"):
        MultimodalMoEBackbone(["x"], dim=8, blocks=[])
    with pytest.raises(ValueError, match=r"depth: expected len\(blocks\)=2"):
        MultimodalMoEBackbone(["x"], dim=8, blocks=[BlockSpec(), BlockSpec()], depth=3)
    assert len(MultimodalMoEBackbone(["x"], dim=8, blocks=[BlockSpec(mixer="identity")] * 3).blocks) == 3
    assert len(MultimodalMoEBackbone(["x"], dim=8, depth=1).blocks) == 1


def test_block_specs_from_a_cli_config() -> None:
    """BlockSpec is CLI-fillable: jsonargparse (LightningCLI's parser) fills a list of specs from YAML."""
    jsonargparse = pytest.importorskip("jsonargparse")
    parser = jsonargparse.ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(MultimodalMoEBackbone, "backbone")
    cfg = parser.parse_string("""
backbone:
  modalities: [x]
  dim: 16
  blocks:
    - {mixer: spectral, mixer_options: {modes: 2, spatial_dims: 1}, router: nested,
       router_options: {groups: 2}, num_experts: 6, hidden_dim: 8}
    - {ffn: dense, hidden_dim: 8, activation: gelu}
""")
    instantiate = getattr(parser, "instantiate", None) or parser.instantiate_classes
    bb = instantiate(cfg).backbone
    assert [b.ffn.router_kind if isinstance(b.ffn, MoELayer) else "dense" for b in bb.blocks] == ["nested", "dense"]
    assert bb({"x": torch.randn(1, 5, 16)}, grid=(5,))["x"].shape == (1, 5, 16)
    with pytest.raises(jsonargparse.ArgumentError, match="ffn"):
        parser.parse_string("backbone: {modalities: [x], blocks: [{ffn: sparse}]}")


def test_routing_dataclass_is_unchanged_for_custom_routers() -> None:
    """A custom router returns the same :class:`Routing` as the built-in ones (the extension contract)."""
    assert [f.name for f in dataclasses.fields(Routing)][:8] == [
        "pair_token", "pair_expert", "pair_weight", "priority", "logits", "probs", "load_fraction", "token_probs"]
