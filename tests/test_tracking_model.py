"""OneStreamMoETracker: shapes with and without X, box decoding inverts the training targets,
the dense twin has the same active width, and a tiny model learns a fixed batch."""

from __future__ import annotations

import pytest
import torch

from mmoe.settings import MoESettings
from mmoe.moe_layer import MoELayer
from mmoe.tasks.tracking.model import OneStreamMoETracker, centre_targets, decode_boxes, tracking_loss

TINY = dict(template_size=32, search_size=64, patch_size=8, dim=32, depth=2, num_heads=2, hidden_dim=32,
            moe=MoESettings(num_experts=4, top_k=1), slots=2)


def batch(B=3):
    g = torch.Generator().manual_seed(0)
    return (torch.rand(B, 3, 32, 32, generator=g), torch.rand(B, 3, 64, 64, generator=g),
            torch.rand(B, 1, 32, 32, generator=g), torch.rand(B, 1, 64, 64, generator=g))


@pytest.mark.parametrize("moe", [True, False])
def test_shapes_with_and_without_x(moe):
    model = OneStreamMoETracker(**(TINY | {"moe": TINY["moe"].replace(dense=not moe)}))
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


def test_window_prefers_the_peak_near_the_centre():
    """Two equal peaks: the window picks the one nearer the search centre (the previous position)
    whichever comes first in memory, keeps the raw probability as confidence; window 0 is argmax."""
    from mmoe.tasks.tracking.model import hann_window

    g = 16
    w = hann_window(g)
    assert w.shape == (g, g) and (w > 0).all() and float(w.max()) == pytest.approx(1.0, abs=0.02)
    torch.testing.assert_close(w, w.T)
    torch.testing.assert_close(w, w.flip(0))
    for near, far in (((8, 9), (1, 2)), ((7, 7), (14, 13))):
        score = torch.full((1, g, g), -8.0)
        score[0, near[0], near[1]] = score[0, far[0], far[1]] = 2.0
        score[0, far[0], far[1]] += 0.05  # the far peak is slightly higher: plain argmax picks it
        maps = {"score": score, "size": torch.full((1, 2, g, g), 0.1), "offset": torch.full((1, 2, g, g), 0.5)}
        plain, _ = decode_boxes(maps)
        windowed, conf = decode_boxes(maps, 0.3)
        centre = lambda b: (float((b[0, 0] + b[0, 2] / 2) * g - 0.5), float((b[0, 1] + b[0, 3] / 2) * g - 0.5))
        assert centre(plain) == pytest.approx((far[1], far[0]))
        assert centre(windowed) == pytest.approx((near[1], near[0]))
        assert float(conf[0]) == pytest.approx(float(torch.sigmoid(torch.tensor(2.0))))
