"""OneStreamMoETracker: shapes with and without X, box decoding inverts the training targets,
the dense twin has the same active width, and a tiny model learns a fixed batch."""

from __future__ import annotations

import pytest
import torch

from mmoe.moe_layer import MoELayer
from mmoe.tasks.tracking.model import OneStreamMoETracker, centre_targets, decode_boxes, tracking_loss

TINY = dict(template_size=32, search_size=64, patch_size=8, dim=32, depth=2, num_heads=2, hidden_dim=32,
            num_experts=4, top_k=1, slots=2)


def batch(B=3):
    g = torch.Generator().manual_seed(0)
    return (torch.rand(B, 3, 32, 32, generator=g), torch.rand(B, 3, 64, 64, generator=g),
            torch.rand(B, 1, 32, 32, generator=g), torch.rand(B, 1, 64, 64, generator=g))


@pytest.mark.parametrize("moe", [True, False])
def test_shapes_with_and_without_x(moe):
    model = OneStreamMoETracker(**TINY, moe=moe)
    z, s, zx, sx = batch()
    for out in (model(z, s, zx, sx), model(z, s)):
        assert out["score"].shape == (3, 8, 8) and out["size"].shape == (3, 2, 8, 8)
        assert out["offset"].shape == (3, 2, 8, 8)
        assert (out["size"] > 0).all() and (out["size"] < 1).all()
    assert not torch.allclose(model(z, s, zx, sx)["score"], model(z, s)["score"]), "X changes the answer"
    kinds = [m.router.__class__.__name__ for m in model.modules() if isinstance(m, MoELayer)]
    assert kinds == (["SoftmaxRouter", "SoftRouter"] if moe else [])


def test_decode_inverts_the_targets():
    box = torch.tensor([[0.30, 0.41, 0.2, 0.1], [0.05, 0.6, 0.33, 0.25], [0.5, 0.5, 0.49, 0.49]])
    t = centre_targets(box, 16)
    maps = {"score": torch.logit(t["heatmap"].clamp(1e-4, 1 - 1e-4)),
            "size": box[:, 2:, None, None].expand(-1, -1, 16, 16).clone(),
            "offset": t["offset"][:, :, None, None].expand(-1, -1, 16, 16).clone()}
    decoded, conf = decode_boxes(maps)
    torch.testing.assert_close(decoded, box, atol=1e-5, rtol=0)
    assert (conf > 0.99).all()


def test_bad_inputs():
    model = OneStreamMoETracker(**TINY)
    z, s, zx, sx = batch()
    with pytest.raises(ValueError, match="template"):
        model(z[:, :1], s)
    with pytest.raises(ValueError, match="search"):
        model(z, s[:2])
    with pytest.raises(ValueError, match="template_x"):
        model(z, s, zx, None)
    with pytest.raises(ValueError, match="patch_size"):
        OneStreamMoETracker(**{**TINY, "patch_size": 5})


def test_a_tiny_model_learns_a_fixed_batch():
    torch.manual_seed(0)
    model = OneStreamMoETracker(**TINY)
    z, s, zx, sx = batch(4)
    box = torch.tensor([[0.1, 0.1, 0.2, 0.3], [0.5, 0.4, 0.3, 0.3], [0.3, 0.6, 0.2, 0.2], [0.6, 0.1, 0.25, 0.2]])
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(60):
        out = tracking_loss(model(z, s, zx, sx), box)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(out["loss"].item())
    assert losses[-1] < 0.3 * losses[0], (losses[0], losses[-1])
    pred, _ = decode_boxes(model(z, s, zx, sx))
    assert (pred - box).abs().max() < 0.1
