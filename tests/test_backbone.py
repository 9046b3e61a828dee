"""MultimodalMoEBackbone: shapes per modality, modality ids reach the MoE layers, bad input."""

from __future__ import annotations

import pytest
import torch

from mmoe import BlockSpec, MoELayer, MultimodalMoEBackbone, collect_moe


def make(depth: int = 3, dense: tuple[int, ...] = (), mixer: str = "attention", **kw) -> MultimodalMoEBackbone:
    """Two modalities, dim 32, ``depth`` blocks (those in ``dense`` with a dense FFN); ``kw`` are BlockSpec fields."""
    options = {"num_heads": 4} if mixer == "attention" else {}
    spec = dict(mixer=mixer, mixer_options=options, hidden_dim=24, num_experts=5, top_k=2) | kw
    blocks = [BlockSpec(**spec, ffn="dense" if i in dense else "moe") for i in range(depth)]
    return MultimodalMoEBackbone(["audio", "text"], dim=32, blocks=blocks)


def test_returns_tokens_per_modality_and_trains() -> None:
    torch.manual_seed(0)
    bb = make(dense=(1,), num_shared_experts=1, capacity_factor=1.0)
    tokens = {"audio": torch.randn(2, 7, 32), "text": torch.randn(2, 3, 32)}
    out = bb(tokens)
    assert {k: tuple(v.shape) for k, v in out.items()} == {"audio": (2, 7, 32), "text": (2, 3, 32)}
    moe = collect_moe(bb)
    assert sorted(moe.stats) == ["blocks.0.ffn", "blocks.2.ffn"]
    assert not isinstance(bb.blocks[1].ffn, MoELayer)
    (sum(v.pow(2).mean() for v in out.values()) + moe.aux_loss).backward()
    assert bb.blocks[0].ffn.router.weight.grad.abs().sum() > 0
    # modality ids reach the layers: 2*7 audio and 2*3 text tokens, k pairs each
    s = moe.stats["blocks.0.ffn"]
    assert s.tokens_per_modality.tolist() == [14, 6]


def test_subset_of_modalities_and_mixers() -> None:
    bb = make(mixer="identity", router="soft")
    out = bb({"text": torch.randn(1, 4, 32)})
    assert list(out) == ["text"] and out["text"].shape == (1, 4, 32)


def test_attention_mixes_across_modalities() -> None:
    torch.manual_seed(1)
    bb = make().eval()
    a, t = torch.randn(1, 5, 32), torch.randn(1, 3, 32)
    base = bb({"audio": a, "text": t})["text"]
    moved = bb({"audio": a + torch.randn_like(a), "text": t})["text"]
    assert (base - moved).abs().max() > 1e-3  # text tokens see the audio tokens
    alone = make(mixer="identity").eval()
    alone.load_state_dict({k: v for k, v in bb.state_dict().items() if ".mixer." not in k}, strict=False)
    b0 = alone({"audio": a, "text": t})["text"]
    b1 = alone({"audio": a + torch.randn_like(a), "text": t})["text"]
    torch.testing.assert_close(b0, b1)  # without a mixer, tokens are independent (dropless routing)


def test_bad_input() -> None:
    bb = make()
    with pytest.raises(ValueError, match="unknown modalities"):
        bb({"video": torch.randn(1, 2, 32)})
    with pytest.raises(ValueError, match=r"tokens\['audio'\]: expected last dim 32"):
        bb({"audio": torch.randn(1, 2, 31)})
    with pytest.raises(ValueError, match=r"tokens\['text'\]: expected \[B, N, 32\] with B=1"):
        bb({"audio": torch.randn(1, 2, 32), "text": torch.randn(2, 2, 32)})
    with pytest.raises(ValueError, match="NaN"):
        bb({"audio": torch.full((1, 2, 32), float("nan"))})
    with pytest.raises(TypeError, match="tokens"):
        bb(torch.randn(1, 2, 32))
    with pytest.raises(ValueError, match=r"positions\['audio'\]"):
        bb({"audio": torch.randn(1, 2, 32)}, positions={"audio": torch.randn(1, 3, 32)})
    with pytest.raises(ValueError, match=r"blocks\[0\]\.mixer: expected one of"):
        make(mixer="conv")


def test_padding_is_invisible_and_needs_token_level_routers() -> None:
    torch.manual_seed(2)
    bb = make(depth=2).eval()
    a, t = torch.randn(2, 5, 32), torch.randn(2, 3, 32)
    mask = {"audio": torch.tensor([[True] * 3 + [False] * 2, [True] * 5])}
    out = bb({"audio": a, "text": t}, mask=mask)
    assert bb.blocks[0].ffn.stats.tokens_per_modality.tolist() == [8, 6]  # padded tokens are never routed
    alone = bb({"audio": a[:1, :3], "text": t[:1]})
    torch.testing.assert_close(out["audio"][0, :3], alone["audio"][0], rtol=1e-5, atol=1e-5)
    for router, options in (("sample", {}), ("nested", {"groups": 2}), ("soft", {})):
        pooled = make(depth=2, num_experts=6, router=router, router_options=options)
        with pytest.raises(ValueError, match=rf"mask: padding masks need token-level routers.*'{router}' in blocks\[0\]"):
            pooled({"audio": a, "text": t}, mask=mask)
